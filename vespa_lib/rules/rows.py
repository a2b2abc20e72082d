"""The rows one academic year's import writes, built from a snapshot (docs/ARCHITECTURE.md, “Runbooks”).

``build_rows(snapshot, "2024/2025", reference)`` decides, per object_10 record, its academic year
and establishment by the rule chains of docs/ARCHITECTURE.md, and returns the ``students``,
``vespa_scores`` and ``question_responses`` rows of that year, the quarantine (every record set
aside, with a reason code and its file line) and ``rule_counts`` (how many rows each rule decided,
how many values each drop reason removed).

Read-only: nothing is written to the target. The work happens set-based in DuckDB on the
snapshot's own connection (TEMP tables ``_rows_*``, dropped at the end; SQL in
:mod:`vespa_lib.rules.rows_sql`); Python only
decodes the *distinct* raw values (a few thousand) with the ``knack`` decoders, so the SQL applies
exactly the decoding contract, reason codes included. Never reads the clock (F1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

import duckdb
import pyarrow as pa

from vespa_lib.errors import ParameterError, SchemaError
from vespa_lib.ops import progress
from vespa_lib.rules import knack, rows_sql, years

__all__ = ["ImportRows", "build_rows", "QUARANTINE_REASONS", "DROP_REASONS"]

# docs/ARCHITECTURE.md "Quarantine reason codes (import)".
QUARANTINE_REASONS = (
    "no_email", "invalid_email", "bad_date", "stale_date", "outside_import_year", "no_establishment",
    "unknown_establishment", "no_scores", "bad_score", "duplicate_record", "unlinked_answers",
    "student_set_aside", "answers_without_scores", "late_cycle_of_archived_year",
)
# Values dropped and counted, never rows (ARCHITECTURE; knack.REASONS for the answer codes).
DROP_REASONS = ("f10_cycle_copy", "unanswered", "answer_out_of_range", "answer_not_numeric",
                "answer_not_integer")
YEAR_RULES = ("completion_date", "snapshot_year", "cohort_continued", "cohort_started")
ESTABLISHMENT_RULES = ("connection", "object_6", "email_domain")

STUDENT_COLUMNS = ("email", "academic_year", "knack_id", "name", "establishment_knack_id",
                   "establishment_id", "year_group", "course", "faculty", "group", "gender",
                   "_source_line", "_year_rule", "_establishment_rule", "is_test_account")
SCORE_COLUMNS = ("email", "academic_year", "cycle", *rows_sql.ELEMENTS, "completion_date")
RESPONSE_COLUMNS = ("email", "academic_year", "cycle", "question_id", "response_value")
QUARANTINE_COLUMNS = ("object", "record_id", "source_file", "line_number", "reason", "detail", "email")


@dataclass
class ImportRows:
    """The rows of one academic year (pyarrow Tables) and how they were decided."""

    academic_year: str
    students: pa.Table
    vespa_scores: pa.Table
    question_responses: pa.Table
    quarantine: pa.Table
    rule_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Row counts per output table."""
        return {"students": self.students.num_rows, "vespa_scores": self.vespa_scores.num_rows,
                "question_responses": self.question_responses.num_rows,
                "quarantine": self.quarantine.num_rows}


_STAGES = 5  # the steps of build_rows its progress bar counts


def build_rows(snapshot: Any, academic_year: str, reference: Any, *, convert_q29_percentage: bool = False,
               establishment_scope: list[str] | None = None,
               year_fallback: str | None = "snapshot_year", calendar_year: str | None = None,
               archived_years: list[str] | tuple = (), cohort_years: list[str] | tuple = (),
               late_cycles_only: bool = False) -> ImportRows:
    """Build the import rows of ``academic_year`` (a UK label such as ``2024/2025``) from ``snapshot``.

    ``reference`` is a read-only connection (DuckDB, or anything with ``.sql(q)`` returning a
    relation or DataFrame) to the target, read for ``establishments`` and existing ``students``.
    ``establishment_scope`` (establishment knack ids) limits the rows to those schools; records of
    other schools are counted as ``out_of_scope``. ``year_fallback``: ``"snapshot_year"`` (the
    import's rule 2) gives a blank-date record the snapshot's year; ``None`` (the sync of a fresh
    export, F1) sets it aside as ``no_date`` instead (after the email and establishment reasons,
    before the score reasons). ``calendar_year``: the year a calendar-year school's dated records must
    carry to be kept (default: ``Y/Y``, the calendar year counted in ``academic_year = Y/Y+1``, the
    import's rule; the sync passes the school's running year, the calendar year of its ``as_of``).
    Read-only on the target and on the snapshot tables.

    The cohort rule (docs/DOMAIN.md, "Cohort rule across 1 August"): a record whose cycle 1 equals the
    student's cycle-1 row of the year before its date's year continues that cohort. When that year is
    earlier than ``academic_year``, the record is set aside as ``late_cycle_of_archived_year`` if the
    year is in ``archived_years``, built into that year if it is in ``cohort_years`` (an open year the
    caller writes too), else ``stale_date``. ``late_cycles_only`` builds only the records continuing a
    cohort of ``academic_year`` (the guarded import that adds a set-aside late cycle); the others are
    counted as ``not_late_cycle``, not quarantined.
    """
    if year_fallback not in ("snapshot_year", None):
        raise ParameterError(f"year_fallback must be 'snapshot_year' or None, got {year_fallback!r}.")
    year = _import_year(academic_year)
    calendar_first = _calendar_first(year, calendar_year)
    scope = _scope(establishment_scope)
    con = snapshot.con
    # DuckDB 2.0 allows one open result per connection: finish any the caller left pending (a
    # fetchone) before registering Arrow tables. The snapshot tables are TEMP views of this
    # connection, so a cursor (another connection) could not see them.
    con.complete()
    steps = progress.Stages("Building the rows", _STAGES)
    try:
        for obj in rows_sql.SOURCE_TABLES:
            con.execute(rows_sql.copy_source(obj, snapshot.table(obj)))
        steps.done("snapshot copied")
        _register_reference(con, reference)
        _decode_distinct(con)
        steps.done("reference and values decoded")
        params = {"year": year, "first": int(year[:4]), "calendar_year": _calendar_year(year),
                  "calendar_first": calendar_first, "scoped": scope is not None, "scope": scope or [],
                  "late_only": bool(late_cycles_only), "archived": _labels(archived_years),
                  "cohort_years": _labels(cohort_years)}
        _run_records(con, params, no_fallback=year_fallback is None)
        steps.done("records")
        _run_answers(con, convert_q29_percentage)
        steps.done("answers")
        con.execute(rows_sql.QUARANTINE, {"file10": str(snapshot.files["object_10"]),
                                          "file29": str(snapshot.files["object_29"])})
        con.execute(_NO_DATE_DETAIL)
        steps.done("quarantine")
        return ImportRows(
            academic_year=year,
            students=_fetch(con, "_rows_students", STUDENT_COLUMNS),
            vespa_scores=_fetch(con, "_rows_scores", SCORE_COLUMNS),
            question_responses=_fetch(con, "_rows_responses", RESPONSE_COLUMNS, dictionary=_REPEATED),
            quarantine=_fetch(con, "_rows_quarantine", QUARANTINE_COLUMNS),
            rule_counts=_rule_counts(con),
        )
    finally:
        steps.close()
        _drop_work_tables(con)


# ------------------------------------------------------------------------------ parameters

def _import_year(label: str) -> str:
    try:
        year = years.canonical(label)
    except years.YearError as exc:
        raise ParameterError(f"academic_year: {exc}") from None
    if years.is_calendar_label(year):
        raise ParameterError(
            f"academic_year {year!r} is a calendar year; import a UK year such as "
            f"'{year[:4]}/{int(year[:4]) + 1}' (calendar-year schools' rows are counted in it, docs/DOMAIN.md, “Academic years”).")
    return year


def _calendar_year(year: str) -> str:
    """ARCHITECTURE year rule 2: a calendar-year school's snapshot year is the calendar year
    containing the import year's last day (31/07/2025 -> 2025/2025)."""
    last = years.year_end(year).year
    return f"{last}/{last}"


def _calendar_first(year: str, calendar_year: str | None) -> int:
    """The calendar year kept for calendar-year schools: ``calendar_year``, else N's first year."""
    if calendar_year is None:
        return int(year[:4])
    try:
        label = years.canonical(calendar_year)
    except years.YearError as exc:
        raise ParameterError(f"calendar_year: {exc}") from None
    if not years.is_calendar_label(label):
        raise ParameterError(f"calendar_year {calendar_year!r} is not a calendar year Y/Y: pass e.g. "
                             f"'{year[5:]}/{year[5:]}', or None for the calendar year counted in {year}.")
    return int(label[:4])


def _labels(labels: list[str] | tuple) -> list[str]:
    """Canonical labels (a misspelt archived label still names its year, F11); [''] for none (a typed list)."""
    try:
        return sorted({years.canonical(y) for y in labels}) or [""]
    except years.YearError as exc:
        raise ParameterError(f"archived_years/cohort_years: {exc}") from None


def _scope(scope: list[str] | None) -> list[str] | None:
    if scope is None:
        return None
    if isinstance(scope, str) or not all(isinstance(s, str) and s.strip() for s in scope) or not scope:
        raise ParameterError(
            f"establishment_scope must be a non-empty list of establishment knack ids, got {scope!r}. "
            "Pass None to import every establishment.")
    return [s.strip() for s in scope]


# ------------------------------------------------------------------------------- reference

_REF_EST = ("SELECT CAST(id AS VARCHAR) AS id, CAST(knack_id AS VARCHAR) AS knack_id, name, "
            "is_australian, use_standard_year FROM establishments")
_KEPT_ATTRS = ("knack_id", "name", "year_group", "course", "faculty", "group", "gender")
_REF_STUDENTS = ("SELECT CAST(email AS VARCHAR) AS email, CAST(academic_year AS VARCHAR) AS academic_year, "
                 "CAST(establishment_id AS VARCHAR) AS establishment_id, "
                 + ", ".join(f'CAST("{a}" AS VARCHAR) AS "{a}"' for a in _KEPT_ATTRS) + " FROM students")


# The cohort rule's evidence: every stored score row (all text: PostgreSQL is read through CSV).
_REF_CYCLES = ("SELECT lower(s.email) AS email, CAST(t.academic_year AS VARCHAR) AS academic_year, "
               "CAST(t.cycle AS VARCHAR) AS cycle, "
               + ", ".join(f"CAST(t.{e} AS VARCHAR) AS {e}" for e in rows_sql.ELEMENTS)
               + ", CAST(t.completion_date AS VARCHAR) AS completion_date "
               "FROM vespa_scores t JOIN students s ON s.id = t.student_id")


def _register_reference(con: duckdb.DuckDBPyConnection, reference: Any) -> None:
    """Copy the target's establishments, students and score rows into TEMP tables of ``con`` (via Arrow)."""
    est, students = _read_reference(reference, _REF_EST), _read_reference(reference, _REF_STUDENTS)
    cycles = _read_reference(reference, _REF_CYCLES)
    con.register("_rows_in_est", est)
    con.register("_rows_in_students", students)
    con.register("_rows_in_cycles", cycles)
    labels = {r[0] for r in con.execute("SELECT DISTINCT academic_year FROM _rows_in_cycles").fetchall()}
    _lookup(con, "_rows_ref_labels", [{"label": y, "canonical": _canonical_or_none(y)} for y in sorted(labels - {None})],
            pa.schema([("label", pa.string()), ("canonical", pa.string())]))
    try:
        con.execute("""CREATE OR REPLACE TEMP TABLE _rows_ref_est AS
            SELECT id, trim(knack_id) AS knack_id, name, CAST(is_australian AS BOOLEAN) AS is_australian,
                   CAST(use_standard_year AS BOOLEAN) AS use_standard_year FROM _rows_in_est""")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _rows_ref_students AS
            SELECT lower(trim(email)) AS email, academic_year, establishment_id,
                   {", ".join(rows_sql._q(a) for a in _KEPT_ATTRS)} FROM _rows_in_students""")
        six = ", ".join(f"try_cast(c.{e} AS DOUBLE)::INTEGER AS {e}" for e in rows_sql.ELEMENTS)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _rows_ref_cycles AS
            SELECT trim(c.email) AS email, l.canonical AS academic_year, try_cast(c.cycle AS INTEGER) AS cycle, {six},
                   try_cast(c.completion_date AS DATE) AS completion_date
            FROM _rows_in_cycles c JOIN _rows_ref_labels l ON l.label = c.academic_year""")
    finally:
        con.unregister("_rows_in_est")
        con.unregister("_rows_in_students")
        con.unregister("_rows_in_cycles")


def _canonical_or_none(label: str) -> str | None:
    try:
        return years.canonical(label)
    except years.YearError:
        return None


def _read_reference(reference: Any, query: str) -> pa.Table:
    try:
        result = reference.sql(query)
    except Exception as exc:  # any driver's error: the message names the table and the next step
        raise SchemaError(
            f"Cannot read the target for the import rules ({query.split(' FROM ')[-1]}): {exc}. "
            "Check the target has the docs/DOMAIN.md, “Production schema” schema (run the audit runbook).") from None
    if hasattr(result, "to_arrow_table"):
        return result.to_arrow_table()
    if isinstance(result, pa.Table):
        return result
    return pa.Table.from_pandas(result, preserve_index=False)


# ------------------------------------------------------------------------ distinct decoding

def _distinct(con: duckdb.DuckDBPyConnection, sources: dict[str, list[str]]) -> list[str]:
    """Distinct non-NULL raw values of the given columns (table -> columns), plus '' (blank)."""
    parts = [f"SELECT unnest([{', '.join(rows_sql._q(c) for c in cols)}]) AS raw FROM {table}"
             for table, cols in sources.items()]
    found = con.execute(f"SELECT DISTINCT raw FROM ({' UNION ALL '.join(parts)}) WHERE raw IS NOT NULL")
    return sorted({""} | {r[0] for r in found.fetchall()})


def _lookup(con: duckdb.DuckDBPyConnection, name: str, rows: list[dict], schema: pa.Schema) -> None:
    con.register("_rows_in_lookup", pa.Table.from_pylist(rows, schema=schema))
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _rows_in_lookup")
    finally:
        con.unregister("_rows_in_lookup")


def _uk_timestamp(value: date | datetime) -> datetime:
    """A naive UK-local timestamp for ordering (aware values converted to Europe/London)."""
    if isinstance(value, datetime):
        return value.astimezone(years.UK_TZ).replace(tzinfo=None) if value.tzinfo else value
    return datetime.combine(value, time())


def _date_row(raw: str) -> dict:
    d = knack.decode_date(raw)
    if not d.ok:
        return {"raw": raw, "day": None, "ts": None, "reason": d.reason}
    return {"raw": raw, "day": knack.completion_date(d), "ts": _uk_timestamp(d.value), "reason": None}


def _connection_rows(raw: str) -> list[dict]:
    d = knack.decode_connection(raw)
    return [{"raw": raw, "oid": c.id, "identifier": c.identifier} for c in (d.value or [])]


def _answer_row(raw: str, percentage: bool) -> dict:
    """A Likert answer; with ``percentage`` (q29 conversion on), a value above 5 is read as a
    percentage (docs/DOMAIN.md, “Knack fields”): 1..5 stay Likert answers, since 1..5 % and Likert 1..5 cannot be told apart."""
    d = knack.decode_answer(raw)
    if percentage and d.reason == "answer_out_of_range" and _above_five(raw):
        d = knack.decode_answer(raw, percentage=True)
    return {"raw": raw, "pct": percentage, "value": d.value, "reason": d.reason}


def _above_five(raw: str) -> bool:
    try:
        return Decimal(raw.strip(knack.NUMBER_TRIM)) > 5
    except InvalidOperation:
        return False


def _link_row(raw: str) -> dict:
    """field_792: one connection, by record id or by an identifier that is the student's email."""
    conns = knack.decode_connection(raw).value or []
    if len(conns) != 1:
        return {"raw": raw, "oid": None, "email": None}
    email = knack.decode_email(conns[0].identifier)
    return {"raw": raw, "oid": conns[0].id, "email": email.value if email.ok else None}


def _decode_distinct(con: duckdb.DuckDBPyConnection) -> None:
    """Lookup tables raw -> decoded value and reason, one per kind of value (docs/DOMAIN.md, “Knack fields”)."""
    s, i, b = pa.string(), pa.int64(), pa.bool_()
    emails = _distinct(con, {"_rows_src_o10": ["email"], "_rows_src_o6": ["email"], "_rows_src_o29": ["email"]})
    _lookup(con, "_rows_email", [dict(raw=r, email=(d := knack.decode_email(r)).value, reason=d.reason)
                                 for r in emails], pa.schema([("raw", s), ("email", s), ("reason", s)]))
    dates = _distinct(con, {"_rows_src_o10": ["completion_date", "updated"], "_rows_src_o29": ["updated"]})
    _lookup(con, "_rows_date", [_date_row(r) for r in dates],
            pa.schema([("raw", s), ("day", pa.date32()), ("ts", pa.timestamp("us")), ("reason", s)]))
    scores = _distinct(con, {"_rows_src_o10": [c for c, _, _ in rows_sql.score_columns()]})
    _lookup(con, "_rows_score", [dict(raw=r, value=(d := knack.decode_score(r)).value, reason=d.reason)
                                 for r in scores], pa.schema([("raw", s), ("value", i), ("reason", s)]))
    answers = _distinct(con, {"_rows_src_o29": [c for c, _, _ in rows_sql.answer_columns()]})
    _lookup(con, "_rows_answer", [_answer_row(r, p) for r in answers for p in (False, True)],
            pa.schema([("raw", s), ("pct", b), ("value", i), ("reason", s)]))
    conns = _distinct(con, {"_rows_src_o10": ["establishment", "establishment_id"], "_rows_src_o6": ["establishment", "establishment_id"]})
    _lookup(con, "_rows_conn", [row for r in conns for row in _connection_rows(r)],
            pa.schema([("raw", s), ("oid", s), ("identifier", s)]))
    links = _distinct(con, {"_rows_src_o29": ["student_record", "student_record_id"]})
    _lookup(con, "_rows_link", [_link_row(r) for r in links],
            pa.schema([("raw", s), ("oid", s), ("email", s)]))


# ---------------------------------------------------------------------------------- steps

# F1 (docs/DOMAIN.md, “Academic years” "Never today"): without a fallback a blank date is a reason of its own, decided
# after email/establishment/scope and before the scores, as the sync's truth orders them.
_NO_DATE = """UPDATE _rows_outcome SET reason = 'no_date', academic_year = NULL, year_rule = NULL
WHERE date_reason = 'blank'
  AND (reason IS NULL OR reason IN ('stale_date', 'outside_import_year', 'bad_score', 'no_scores'))"""
_NO_DATE_DETAIL = """UPDATE _rows_quarantine SET detail = 'the completion date (field_855) is blank: '
    || 'no year is guessed (F1)' WHERE reason = 'no_date'"""


def _run_records(con: duckdb.DuckDBPyConnection, params: dict, *, no_fallback: bool = False) -> None:
    """object_10: scores per cycle, establishment and year chains, outcome, duplicates, rows."""
    for sql in (rows_sql.EST_CONN, rows_sql.O6_EST, rows_sql.DOMAIN_EST, rows_sql.scores_long(),
                rows_sql.cycles(), rows_sql.cycle_flags(), rows_sql.SCORE_SUMMARY, rows_sql.record_base()):
        con.execute(sql)
    con.execute(rows_sql.record_year(), {"year": params["year"], "calendar_year": params["calendar_year"]})
    con.execute(rows_sql.RECORD_OUTCOME, {k: params[k] for k in ("first", "calendar_first", "scoped", "scope",
                                                                 "late_only", "archived", "cohort_years")})
    if no_fallback:
        con.execute(_NO_DATE)
    con.execute(rows_sql.RANKED)
    con.execute(rows_sql.students())
    if params["late_only"]:  # a late cycle adds its cycle: the archived student row stays as it is
        sets = ", ".join(f"{rows_sql._q(a)} = r.{rows_sql._q(a)}" for a in _KEPT_ATTRS)
        con.execute(f"UPDATE _rows_students s SET {sets} FROM _rows_ref_students r "
                    "WHERE r.email = s.email AND r.academic_year = s.academic_year")
    con.execute(rows_sql.SCORES)


def _run_answers(con: duckdb.DuckDBPyConnection, convert_q29: bool) -> None:
    """object_29: link to students, UNPIVOT the answers, keep cycles that have scores."""
    con.execute(rows_sql.O29_BASE)
    con.execute(rows_sql.O29_LINK)
    con.execute(rows_sql.answers_long(), {"convert": bool(convert_q29)})
    con.execute(rows_sql.ANSWER_CYCLES)
    con.execute(rows_sql.RESPONSES)


def _drop_work_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Free the working TEMP tables (millions of answer cells at scale): the result is in Arrow."""
    names = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary "
                        "AND starts_with(table_name, '_rows_')").fetchall()
    for (name,) in names:
        con.execute(f"DROP TABLE IF EXISTS {rows_sql._q(name)}")


# An answer row repeats its student's email, its year and its question id: held dictionary-encoded
# (one copy of each value, a 4-byte index per row), the answers of 10x the realistic scale (11 M rows)
# take 0.26 GB instead of 0.87 GB (docs/ARCHITECTURE.md, “Quality bars”: 10x within 2 GB). Readers see the same values.
_REPEATED = ("email", "academic_year", "question_id")


def _fetch(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...],
           dictionary: tuple[str, ...] = ()) -> pa.Table:
    """``columns`` of a work table as Arrow, read in batches; ``dictionary`` columns dictionary-encoded
    batch by batch (never the whole plain column in memory), then given one shared dictionary."""
    reader = con.sql(f"SELECT {', '.join(rows_sql._q(c) for c in columns)} FROM {table}").to_arrow_reader(1 << 20)
    if not dictionary:
        return reader.read_all()
    import pyarrow.compute as pc  # noqa: PLC0415

    schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f
                        for f in reader.schema])
    # every column copied out of DuckDB's batch: a column kept as is would keep the whole exported
    # batch alive (its release frees all columns at once), plain emails included (10x: +1.2 GB)
    batches = [pa.RecordBatch.from_arrays([pc.dictionary_encode(b.column(i)) if name in dictionary
                                           else pa.concat_arrays([b.column(i)])
                                           for i, name in enumerate(b.schema.names)], schema=schema)
               for b in reader]
    return pa.Table.from_batches(batches, schema=schema).unify_dictionaries()


def _counts(con: duckdb.DuckDBPyConnection, sql: str, prefix: str = "") -> dict[str, int]:
    return {f"{prefix}{k}": int(n) for k, n in con.execute(sql).fetchall() if k is not None}


def _rule_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows per year and establishment rule, records per quarantine reason, values per drop reason."""
    counts = {f"year_rule.{r}": 0 for r in YEAR_RULES} | {f"establishment_rule.{r}": 0 for r in ESTABLISHMENT_RULES}
    counts |= {f"quarantine.{r}": 0 for r in QUARANTINE_REASONS} | {r: 0 for r in DROP_REASONS}
    counts |= _counts(con, "SELECT _year_rule, count(*) FROM _rows_students GROUP BY 1", "year_rule.")
    counts |= _counts(con, "SELECT _establishment_rule, count(*) FROM _rows_students GROUP BY 1",
                      "establishment_rule.")
    counts |= _counts(con, "SELECT reason, count(*) FROM _rows_quarantine GROUP BY 1", "quarantine.")
    counts |= _counts(con, "SELECT reason, count(*) FROM _rows_answer_long WHERE value IS NULL GROUP BY 1")
    one = {
        "object_10_records": "SELECT count(*) FROM _rows_src_o10",
        "object_29_records": "SELECT count(*) FROM _rows_src_o29",
        "students": "SELECT count(*) FROM _rows_students",
        "vespa_scores": "SELECT count(*) FROM _rows_scores",
        "question_responses": "SELECT count(*) FROM _rows_responses",
        "f10_cycle_copy": "SELECT coalesce(sum(b.f10_copies), 0) FROM _rows_students s "
                          "JOIN _rows_base b USING (_record)",
        "duplicate_record": "SELECT count(*) FROM _rows_ranked WHERE rank > 1",
        "out_of_scope": "SELECT count(*) FROM _rows_outcome WHERE reason = 'out_of_scope'",
        "not_late_cycle": "SELECT count(*) FROM _rows_outcome WHERE reason = 'not_late_cycle'",
        # records per cohort decision, set aside or not (the year_rule.* counts are the kept rows)
        "records.cohort_continued": "SELECT count(*) FROM _rows_outcome WHERE year_rule = 'cohort_continued'",
        "records.cohort_started": "SELECT count(*) FROM _rows_outcome WHERE year_rule = 'cohort_started'",
        "out_of_scope.object_29": "SELECT count(*) FROM _rows_o29_link WHERE status = 'out_of_scope'",
        "object_29_linked": "SELECT count(*) FROM _rows_o29_link WHERE status = 'linked' AND rank = 1",
        "re_enrolled": "SELECT count(DISTINCT s.email) FROM _rows_students s JOIN _rows_ref_students r "
                       "ON r.email = s.email AND r.academic_year <> s.academic_year",
    }
    for key, sql in one.items():
        counts[key] = int(con.execute(sql).fetchall()[0][0])
    return counts
