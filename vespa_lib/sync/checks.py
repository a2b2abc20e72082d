"""The sync's proofs and drift report. Read-only on the target and the source.

``drift`` reconciles the desired rows with the database key by key (keys as production keys them,
the year compared canonically so a misspelt stored label shows as a change of ``academic_year``,
F11): per row ``missing`` (in the source, not the database), ``extra`` (in the database, not the
source), ``changed`` (with the changed columns) or ``unchanged``; rolled up per student
(``new``/``changed``/``unchanged``/``extra``) and per table × establishment × cycle.

``proofs`` re-derives, independently of the rule chains that built the rows, the facts the
verdict rests on (docs/DOMAIN.md, “Failure catalogue”): no archived year (plus the plan's refusals), every year from the
record's own date (F1), one year per student and cycle across scores and answers (F8), no F10 cycle
copy, no other year's student row changed (F2), deletions only in the current year and scope (F16),
and, per establishment, every row written in that school's own running year, which is not archived
(UK rule: the UK year of ``as_of``; calendar-year schools: the calendar year of ``as_of``, docs/DOMAIN.md, “Academic years”).
Each is ``{"name", "passed", "figures", "detail"}``, as ``runbook.Run.check`` takes it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from vespa_lib.rules import knack, years
from vespa_lib.rules.rows_sql import ELEMENTS
from vespa_lib.rules.years import uk_year_sql
from vespa_lib.sources import duckwork
from vespa_lib.write.schema import dialect_of
from vespa_lib.write.sql import in_list, run

__all__ = ["Drift", "concat", "drift", "fetch_arrow", "kept_as_is", "label_proof", "late_cycles", "proofs", "unsyncable"]

KEYS = {"students": ("email", "cy"), "vespa_scores": ("email", "cy", "cycle"),
        "question_responses": ("email", "cy", "cycle", "question_id")}
COMPARED = {"students": ("academic_year", "knack_id", "name", "establishment_id", "year_group", "course", "faculty",
                         "group", "gender"),
            "vespa_scores": ("academic_year", *ELEMENTS, "completion_date"),
            "question_responses": ("academic_year", "response_value")}
# Reasons a record cannot be synced, grouped for the drift report.
REASON_GROUPS = {"no_email": "no_email", "invalid_email": "no_email", "no_establishment": "no_establishment",
                 "unknown_establishment": "no_establishment", "no_date": "no_date", "bad_date": "no_date",
                 "stale_date": "other_year", "outside_import_year": "other_year",
                 "late_cycle_of_archived_year": "late_cycle"}


def _q(name: str) -> str:
    return '"' + name + '"'


def fetch_arrow(con: Any, sql: str, params: list | tuple = ()) -> pa.Table:
    """A query's result as Arrow, on DuckDB or PostgreSQL (COPY ... TO STDOUT, all text). Read-only."""
    if dialect_of(con) == "duckdb":
        return con.sql(sql, params=list(params) or None).to_arrow_table()
    buf = io.BytesIO()
    with con.cursor().copy(f"COPY ({sql.replace('?', '%s')}) TO STDOUT WITH (FORMAT csv, HEADER)",
                           list(params) or None) as copy:
        for chunk in copy:
            buf.write(chunk)
    if not buf.getvalue():
        return pa.table({})
    opts = pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False,
                                column_types=None, auto_dict_encode=False)
    header = buf.getvalue().split(b"\n", 1)[0].decode().split(",")
    opts.column_types = {h.strip('"'): pa.string() for h in header}
    return pacsv.read_csv(io.BytesIO(buf.getvalue()), convert_options=opts)


def concat(desired: pa.Table, extra: pa.Table | None) -> pa.Table:
    """``desired`` plus rows cast to its schema (missing columns NULL)."""
    if extra is None or extra.num_rows == 0:
        return desired
    cols = [extra.column(f.name).cast(f.type) if f.name in extra.column_names else pa.nulls(extra.num_rows, f.type)
            for f in desired.schema]
    return pa.concat_tables([desired, pa.Table.from_arrays(cols, schema=desired.schema)])


# --- database slices -----------------------------------------------------------------------------

# Scores and answers carry their student's establishment id only (its knack id is looked up once, per
# student, where needed): a million answer rows each carrying a 24-character knack id cost ~1 s of COPY.
_SLICE = {
    "students": ("SELECT lower(s.email) AS email, s.academic_year, CAST(s.knack_id AS TEXT) AS knack_id, s.name, "
                 "CAST(s.establishment_id AS TEXT) AS establishment_id, s.year_group, s.course, s.faculty, "
                 's."group", s.gender, e.knack_id AS est FROM students s '
                 "LEFT JOIN establishments e ON e.id = s.establishment_id"),
    "vespa_scores": ("SELECT lower(s.email) AS email, t.academic_year, CAST(t.cycle AS TEXT) AS cycle, "
                     + ", ".join(f"CAST(t.{e} AS TEXT) AS {e}" for e in ELEMENTS)
                     + ", CAST(t.completion_date AS TEXT) AS completion_date, "
                     "CAST(s.establishment_id AS TEXT) AS establishment_id "
                     "FROM vespa_scores t JOIN students s ON s.id = t.student_id"),
    "question_responses": ("SELECT lower(s.email) AS email, t.academic_year, CAST(t.cycle AS TEXT) AS cycle, "
                           "t.question_id, CAST(t.response_value AS TEXT) AS response_value, "
                           "CAST(s.establishment_id AS TEXT) AS establishment_id "
                           "FROM question_responses t JOIN students s ON s.id = t.student_id"),
}


def db_slice(con: Any, table: str, labels: list[str], emails: list[str] | None = None) -> pa.Table:
    """Rows of ``table`` labelled ``labels`` (optionally of ``emails``), every value as text. Read-only."""
    alias = "s" if table == "students" else "t"
    sql = f"{_SLICE[table]} WHERE {alias}.academic_year IN {in_list(labels)}"
    params = list(labels)
    if emails is not None:
        sql += f" AND lower(s.email) IN {in_list(emails)}"
        params += emails
    return fetch_arrow(con, sql, params)


def _anchored(con: Any, labels: list[str]) -> list[tuple[str, str]]:
    """(email, label) of students of ``labels`` that own rows of another year (F8 damage: answers of an archived
    year hanging off a current-year student). Deleting such a student would take those rows with it."""
    other = " OR ".join(f"EXISTS (SELECT 1 FROM {t} c WHERE c.student_id = s.id AND c.academic_year NOT IN "
                        f"{in_list(labels)})" for t in ("vespa_scores", "question_responses"))
    rows = run(con, f"SELECT DISTINCT lower(s.email), s.academic_year FROM students s WHERE s.academic_year IN "
                    f"{in_list(labels)} AND ({other})", [*labels, *labels, *labels])
    return sorted((r[0], r[1]) for r in rows)


def kept_as_is(src: Any, rows: Any, con: Any, labels: list[str], est_ids: list[str] | None) -> dict[str, pa.Table]:
    """Database rows planned unchanged, never deleted. Read-only. Two kinds:

    * every row of a student the source still has but sets aside (a record that cannot be synced is
      not a deletion in Knack), unless every such record is dated in another year (``other_year``:
      it vouches for that year only, so the owned years' rows follow Knack like a deleted record's);
    * the student row (only) of a student the source no longer has who owns rows of another year:
      deleting it would delete history with it (F2/F8), so it stays and the drift shows it.

    Kept rows are relabelled canonically (``_canonical_labels``; counts under ``_relabels``)."""
    q = rows.quarantine.filter(pa.compute.equal(rows.quarantine["object"], "object_10"))
    other_year = [r for r, g in REASON_GROUPS.items() if g == "other_year"]
    q = q.filter(pa.compute.invert(pa.compute.is_in(q["reason"], pa.array(other_year, pa.string()))))
    built = set(rows.students.column("email").to_pylist())
    emails = {d.value for raw in q.column("email").to_pylist() if (d := knack.decode_email(raw or "")).ok} - built
    built_keys = set(zip(rows.students.column("email").to_pylist(), rows.students.column("academic_year").to_pylist(),
                         strict=True))
    anchored = {k for k in _anchored(con, labels) if k not in built_keys and k[0] not in emails}
    out: dict[str, Any] = dict.fromkeys(KEYS)
    out["_anchored"] = sorted(anchored)
    relabels: dict[str, dict[str, int]] = {}
    out["_relabels"] = relabels
    for table in KEYS:
        wanted = sorted(emails | {e for e, _ in anchored}) if table == "students" else sorted(emails)
        if not wanted:
            continue
        t = db_slice(con, table, labels, wanted)
        if table == "students":  # an anchored email's other labels are not kept
            keep = [e in emails or (e, y) in anchored
                    for e, y in zip(t.column("email").to_pylist(), t.column("academic_year").to_pylist(), strict=True)]
            t = t.filter(pa.array(keep, pa.bool_()))
        if est_ids is not None:
            t = t.filter(pa.compute.is_in(t["establishment_id"], pa.array(est_ids, pa.string())))
        t = _canonical_labels(t, table, relabels)
        out[table] = t.drop_columns([c for c in ("est", "establishment_id") if c in t.column_names
                                     and not (table == "students" and c == "establishment_id")])
    return out


def _canonical_labels(t: pa.Table, table: str, relabels: dict) -> pa.Table:
    """Kept rows relabelled canonically (F11: ``2025-26`` → ``2025/2026``), so the plan relabels them by
    delete + insert. A relabel that meets a kept canonical row of the same key drops the misspelt copy
    when every value is equal (the delete removes it); otherwise both stay as they are and the
    conflict is counted (the ``f11_labels_canonical`` proof then refuses the sync)."""
    counts = relabels.setdefault(table, {"relabelled": 0, "identical_duplicates": 0, "conflicts": 0})
    if t.num_rows == 0:
        return t
    frame = t.to_pandas(types_mapper=pd.ArrowDtype)
    label = frame["academic_year"].astype(object)
    fixed = label.map(lambda y: _canonical_or_same(y))
    moved = fixed != label
    if not moved.any():
        return t
    keys = ["email", "academic_year", *KEYS[table][2:]]
    values = [c for c in frame.columns if c not in keys]
    frame = frame.assign(academic_year=fixed.astype(str), _moved=moved)
    clash = frame.duplicated(keys, keep=False)
    same = frame.duplicated([*keys, *values], keep=False)
    drop = moved & clash & same
    conflict = moved & clash & ~same
    frame.loc[conflict, "academic_year"] = label[conflict].astype(str)  # refused: kept under its old label
    counts["relabelled"] += int((moved & ~clash).sum())
    counts["identical_duplicates"] += int(drop.sum())
    counts["conflicts"] += int(conflict.sum())
    frame = frame[~drop].drop(columns="_moved")
    return pa.Table.from_pandas(frame, preserve_index=False).cast(t.schema)


def _canonical_or_same(label: Any) -> Any:
    try:
        return years.canonical(label) if isinstance(label, str) else label
    except years.YearError:
        return label


def label_proof(relabels: dict) -> dict:
    """``f11_labels_canonical``: every kept (set-aside) row of the sync's labels is relabelled
    canonically or dropped as an identical duplicate; a conflicting duplicate refuses the sync."""
    conflicts = sum(c["conflicts"] for c in relabels.values())
    figures = {t: dict(c) for t, c in relabels.items()}
    detail = ("every kept row carries a canonical label after the sync "
              f"({sum(c['relabelled'] for c in relabels.values())} relabelled, "
              f"{sum(c['identical_duplicates'] for c in relabels.values())} identical duplicates deleted)"
              if not conflicts else f"{conflicts} misspelt row(s) differ from the canonical row of the same key: "
              "nothing is relabelled for them; decide which is right, then sync again")
    return _check("f11_labels_canonical", not conflicts, figures, detail)


# --- drift ---------------------------------------------------------------------------------------


@dataclass
class Drift:
    """Key-by-key reconciliation: ``rows`` (every differing row), ``students`` (per student),
    ``summary`` (per table × establishment × cycle × kind)."""

    rows: pd.DataFrame
    students: pd.DataFrame
    summary: pd.DataFrame
    late_cycles: pd.DataFrame = field(default_factory=pd.DataFrame)  # set aside: a person adds them

    def kinds(self) -> dict[str, int]:
        """Students per drift kind."""
        return {str(k): int(v) for k, v in self.students["drift"].value_counts().items()}


def _load_desired(dc: duckdb.DuckDBPyConnection, table: str, desired: pa.Table) -> None:
    cols = ["email", "academic_year", *(c for c in KEYS[table][2:]), *(c for c in COMPARED[table][1:]),
            *(["est"] if table == "students" else [])]
    dc.register("_in", desired)
    have = set(desired.column_names)
    sel = ", ".join(f"CAST({_q(c)} AS VARCHAR) AS {_q(c)}" if c in have else f"CAST(NULL AS VARCHAR) AS {_q(c)}"
                    for c in cols if c != "est")
    dc.execute(f"CREATE TABLE d_{table} AS SELECT {sel} FROM _in")
    dc.unregister("_in")


def _diff(dc: duckdb.DuckDBPyConnection, table: str) -> None:
    keys, compared = KEYS[table], COMPARED[table]
    on = " AND ".join(f"d.{_q(k)} = l.{_q(k)}" for k in keys)
    flags = ", ".join(f"CASE WHEN d.{_q(c)} IS DISTINCT FROM l.{_q(c)} THEN '{c}' END" for c in compared)
    key_sel = ", ".join(f"coalesce(d.{_q(k)}, l.{_q(k)}) AS {_q(k)}" for k in keys)
    dc.execute(f"""CREATE TABLE x_{table} AS
        SELECT {key_sel}, coalesce(d.academic_year, l.academic_year) AS academic_year, l.establishment_id AS l_est_id,
               CASE WHEN l.email IS NULL THEN 'missing' WHEN d.email IS NULL THEN 'extra'
                    WHEN len(list_filter([{flags}], lambda x: x IS NOT NULL)) > 0 THEN 'changed' ELSE 'unchanged' END AS kind,
               list_filter([{flags}], lambda x: x IS NOT NULL) AS changed
        FROM (SELECT x.*, m.cy FROM d_{table} x LEFT JOIN canon_map m ON m.label = x.academic_year) d
        FULL JOIN (SELECT x.*, m.cy FROM l_{table} x LEFT JOIN canon_map m ON m.label = x.academic_year) l ON {on}""")


def drift(con: Any, desired: Any, labels: list[str], anchored: list[tuple[str, str]] = ()) -> Drift:
    """Reconcile ``desired`` (plan.Desired) with the database's rows of ``labels``. Read-only.

    ``anchored``: (email, label) of students whose row is kept only because it owns another year's rows; they
    are compared as absent from the source (their drift is ``extra``)."""
    dc = duckwork.connect()
    canon = {label: years.canonical(label) for label in labels}
    dc.execute("CREATE TABLE canon_map AS SELECT * FROM (VALUES " + ", ".join(["(?, ?)"] * len(canon))
               + ") v(label, cy)", [x for kv in canon.items() for x in kv])
    ests = fetch_arrow(con, "SELECT CAST(id AS TEXT) AS id, knack_id FROM establishments")
    dc.register("ests", ests)
    for table in KEYS:
        want = desired.tables[table]
        if table == "students" and anchored:
            pairs = set(anchored)
            drop = [(e, y) in pairs for e, y in zip(want.column("email").to_pylist(),
                                                    want.column("academic_year").to_pylist(), strict=True)]
            want = want.filter(pa.compute.invert(pa.array(drop, pa.bool_())))
        _load_desired(dc, table, want)
        dc.register("_l", db_slice(con, table, labels))
        dc.execute(f"CREATE TABLE l_{table} AS SELECT * FROM _l")
        dc.unregister("_l")
        _diff(dc, table)
    return Drift(*_drift_frames(dc))


def _drift_frames(dc: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    # the live row's establishment, else the desired student's (one knack id per email and year)
    dc.execute("CREATE TABLE d_est AS SELECT s.email, m.cy, min(e.knack_id) AS knack_id FROM d_students s "
               "JOIN canon_map m ON m.label = s.academic_year JOIN ests e ON e.id = s.establishment_id GROUP BY 1, 2")
    parts = []
    for table in KEYS:
        cycle = "CAST(x.cycle AS INTEGER)" if table != "students" else "CAST(NULL AS INTEGER)"
        parts.append(f"SELECT '{table}' AS \"table\", x.email, x.cy AS academic_year, "
                     f"coalesce(le.knack_id, de.knack_id) AS establishment, {cycle} AS cycle, x.kind, x.changed, "
                     f"x.l_est_id FROM x_{table} x LEFT JOIN ests le ON le.id = x.l_est_id "
                     "LEFT JOIN d_est de ON de.email = x.email AND de.cy = x.cy")
    dc.execute(f"CREATE TABLE drift_rows AS {' UNION ALL '.join(parts)}")
    rows = dc.sql("SELECT * FROM drift_rows WHERE kind <> 'unchanged'").df()
    summary = dc.sql("""SELECT "table", establishment, cycle, kind, count(*) AS rows,
                               string_agg(DISTINCT c, ', ' ORDER BY c) AS changed_columns
                        FROM (SELECT *, unnest(CASE WHEN len(changed) = 0 THEN [NULL] ELSE changed END) AS c
                              FROM drift_rows WHERE kind <> 'unchanged')
                        GROUP BY ALL ORDER BY ALL""").df()
    students = dc.sql(_STUDENT_ROLLUP).df()
    return rows, students, summary


# One row per student key: new / extra / changed (any row of the student differs) / unchanged, with
# tokens in the fresh truth's vocabulary (students.<col>, vespa_scores.c<k>.<col> or c<k>:insert|delete).
_STUDENT_ROLLUP = """
WITH tokens AS (
    SELECT email, academic_year, unnest(changed) AS token FROM drift_rows WHERE "table" = 'students'
        AND kind = 'changed'
    UNION ALL
    SELECT email, academic_year, "table" || '.c' || cycle || CASE kind WHEN 'missing' THEN ':insert'
        WHEN 'extra' THEN ':delete' END FROM drift_rows WHERE "table" <> 'students' AND kind IN ('missing', 'extra')
    UNION ALL
    SELECT email, academic_year, "table" || '.c' || cycle || '.' || unnest(changed) FROM drift_rows
        WHERE "table" <> 'students' AND kind = 'changed')
SELECT s.email, s.academic_year, s.establishment,
       CASE WHEN s.kind = 'missing' THEN 'new' WHEN s.kind = 'extra' THEN 'extra'
            WHEN count(t.token) > 0 THEN 'changed' ELSE 'unchanged' END AS drift,
       CASE WHEN s.kind IN ('missing', 'extra') THEN '' ELSE
            coalesce(string_agg(DISTINCT t.token, ';' ORDER BY t.token), '') END AS changed_columns
FROM drift_rows s LEFT JOIN tokens t ON t.email = s.email AND t.academic_year = s.academic_year
WHERE s."table" = 'students'
GROUP BY s.email, s.academic_year, s.establishment, s.kind
ORDER BY 1, 2
"""


def late_cycles(rows: Any, src: Any) -> pd.DataFrame:
    """Late cycles of an archived year the sync set aside (docs/DOMAIN.md, "Cohort rule across 1 August"):
    record, file line, cohort year, and how a person adds them: a guarded import of that year from this
    export with ``late_cycles_only`` (it plans only those records; approve its fingerprint). Read-only."""
    q = rows.quarantine.to_pandas()
    q = q[q["reason"] == "late_cycle_of_archived_year"]
    cols = ["record_id", "line_number", "email", "cohort_year", "detail", "how_to_add"]
    if q.empty:
        return pd.DataFrame(columns=cols)
    folder = Path(next(iter(src.files.values()))).parent if getattr(src, "files", None) else "<a fresh export folder>"
    q["cohort_year"] = q["detail"].str.extract(r"continues the (\d{4}/\d{4}) cohort", expand=False)
    q["how_to_add"] = q["cohort_year"].map(
        lambda y: f"vespa-ops run import -p snapshot_dir={folder} -p academic_year={y} -p late_cycles_only=true "
                  "-p mode=plan; review the plan (only the late cycles), then run again with -p mode=apply "
                  "-p approve=<its fingerprint>")
    return q[cols].reset_index(drop=True)


def unsyncable(rows: Any) -> pd.DataFrame:
    """Records the source has that cannot be synced: object, record, reason, group, detail. Read-only."""
    q = rows.quarantine.to_pandas()
    if q.empty:
        return pd.DataFrame(columns=["object", "record_id", "line_number", "reason", "group", "detail", "email"])
    q["reason"] = q["reason"].replace({"outside_import_year": "outside_current_year"})
    q["group"] = q["reason"].map(lambda r: REASON_GROUPS.get(r, r))
    return q[["object", "record_id", "line_number", "reason", "group", "detail", "email"]]


# --- proofs --------------------------------------------------------------------------------------


def _check(name: str, passed: bool, figures: dict, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "figures": figures, "detail": detail}


def proofs(con: Any, src: Any, rows: Any, desired: Any, plan: Any, drift_: Drift, *, labels: list[str],
           archived: list[str], est_ids: list[str] | None, anchored: list[tuple[str, str]] = (),
           own_labels: list[str] | None = None, running: tuple[str, str] | None = None) -> list[dict]:
    """The proofs (module docstring), each with its figures. Read-only. ``own_labels``: the sync's own
    years when ``labels`` also holds an open cohort year it writes a late cycle into; ``running`` = (UK
    running year, calendar running year) adds the per-establishment proof."""
    dc = duckwork.connect()
    for table in KEYS:
        dc.register(table, desired.tables[table])
    dc.register("built_students", rows.students)
    dc.register("built_scores", rows.vespa_scores)
    dc.register("built_answers", rows.question_responses)
    dc.register("ests", fetch_arrow(con, "SELECT CAST(id AS TEXT) AS id, knack_id, is_australian, use_standard_year "
                                         "FROM establishments"))
    out = [_archived(dc, plan, archived), _own_dates(dc, rows), _one_year(dc, own_labels or labels),
           _no_f10(dc, src, rows), _other_years(dc, plan, labels, rows),
           _deletions(plan, drift_, labels, est_ids, list(anchored))]
    if running is not None:
        out.append(_running_year_per_establishment(dc, running, archived))
    return out


def _running_year_per_establishment(dc: duckdb.DuckDBPyConnection, running: tuple[str, str],
                                    archived: list[str]) -> dict:
    """Each school's own current year (docs/DOMAIN.md, "Each school's own running year"): every row built
    from the source (students, scores, answers) carries its establishment's running year, and no school's
    running year is archived. A late cycle continuing an open cohort (its cycle-1 year) is proved by
    ``years_from_own_dates`` instead."""
    uk, calendar = running
    rule = "coalesce(e.is_australian AND e.use_standard_year = false, false)"
    parts = " UNION ALL ".join(f"SELECT '{t}' AS tbl, email, academic_year FROM {v}" for t, v in
                               (("students", "built_students"), ("vespa_scores", "built_scores"),
                                ("question_responses", "built_answers")))
    per = dc.execute(f"""SELECT e.knack_id, CASE WHEN {rule} THEN ? ELSE ? END AS running,
            count(*) FILTER (r.tbl = 'students') AS students, count(*) AS rows,
            count(*) FILTER (r.academic_year <> CASE WHEN {rule} THEN ? ELSE ? END) AS other_year
        FROM ({parts}) r JOIN built_students s ON s.email = r.email AND s.academic_year = r.academic_year
        LEFT JOIN ests e ON e.id = CAST(s.establishment_id AS VARCHAR)
        WHERE s._year_rule IS DISTINCT FROM 'cohort_continued'
        GROUP BY 1, 2 ORDER BY 1""", [calendar, uk, calendar, uk]).fetchall()
    schools = {k or "(none)": {"running_year": y, "students": int(n), "rows": int(m), "rows_in_another_year": int(o),
                               "running_year_archived": y in archived} for k, y, n, m, o in per}
    wrong = sum(v["rows_in_another_year"] for v in schools.values())
    closed = sorted({v["running_year"] for v in schools.values() if v["running_year_archived"] and v["rows"]})
    figures = {"uk_running_year": uk, "calendar_running_year": calendar, "rows_in_another_year": wrong,
               "archived_running_years_written": closed, "establishments": schools}
    return _check("running_year_per_establishment", not wrong and not closed, figures,
                  f"every row written carries its school's running year ({uk} UK rule, {calendar} calendar-year "
                  "schools), none of them archived")


def _archived(dc: duckdb.DuckDBPyConnection, plan: Any, archived: list[str]) -> dict:
    counts = {t: dc.execute(f"SELECT count(*) FROM {t} WHERE academic_year IN (SELECT unnest(?))",
                            [archived or [""]]).fetchall()[0][0] for t in KEYS}
    refused = sum(r.get("archived_year", 0) for r in plan.refused_reasons.values())
    return _check("no_archived_year_rows", not any(counts.values()) and not refused,
                  {"archived_years": archived, "planned_rows_in_archived_years": counts,
                   "refused_archived_year": refused},
                  "no planned row belongs to an archived year; the plan refuses none either")


def _own_dates(dc: duckdb.DuckDBPyConnection, rows: Any) -> dict:
    """F1: each built student's year equals the year of its own latest completion date, except a late cycle
    continuing its cycle-1 cohort (docs/DOMAIN.md, "Cohort rule across 1 August"), counted apart."""
    year_of = (f"CASE WHEN coalesce(e.is_australian AND e.use_standard_year = false, false) "
               f"THEN CAST(year(d) AS VARCHAR) || '/' || CAST(year(d) AS VARCHAR) ELSE {uk_year_sql('d')} END")
    bad = dc.execute(f"""SELECT count(*) FILTER (d IS NULL), count(*) FILTER ({year_of} <> s.academic_year), count(*)
        FROM built_students s LEFT JOIN ests e ON e.id = CAST(s.establishment_id AS VARCHAR)
        LEFT JOIN (SELECT email, academic_year, max(completion_date) AS d FROM built_scores GROUP BY 1, 2) c
               ON c.email = s.email AND c.academic_year = s.academic_year
        WHERE s._year_rule IS DISTINCT FROM 'cohort_continued'""").fetchall()[0]
    fallback = int(rows.rule_counts.get("year_rule.snapshot_year", 0))
    figures = {"students": bad[2], "without_own_date": bad[0], "year_differs_from_date": bad[1],
               "decided_by_fallback": fallback,
               "late_cycles_of_open_cohorts": int(rows.rule_counts.get("year_rule.cohort_continued", 0)),
               "set_aside_no_date": int(rows.rule_counts.get("quarantine.no_date", 0)),
               "set_aside_bad_date": int(rows.rule_counts.get("quarantine.bad_date", 0))}
    return _check("years_from_own_dates", not (bad[0] or bad[1] or fallback), figures,
                  "every row's year is its record's completion date's year (F1); blank dates are set aside")


def _one_year(dc: duckdb.DuckDBPyConnection, own: list[str]) -> dict:
    """F8: every answered student × cycle has scores of the same year (the sync's own years, and every
    answer built from the source whatever its year), and one year only among the sync's own years (an
    open cohort year's kept rows hold re-enrolled students' earlier cycles)."""
    r = dc.execute("""SELECT
        (SELECT count(*) FROM (SELECT DISTINCT email, academic_year, cycle FROM question_responses
                                 WHERE list_contains($own, academic_year)
                               UNION SELECT DISTINCT email, academic_year, cycle FROM built_answers) a
         WHERE NOT EXISTS (SELECT 1 FROM vespa_scores s WHERE s.email = a.email AND s.cycle = a.cycle
                           AND s.academic_year = a.academic_year)),
        (SELECT count(*) FROM (SELECT email, cycle FROM (SELECT email, cycle, academic_year FROM vespa_scores
                               UNION SELECT email, cycle, academic_year FROM question_responses)
                               WHERE list_contains($own, academic_year)
                               GROUP BY 1, 2 HAVING count(DISTINCT academic_year) > 1)),
        (SELECT count(*) FROM (SELECT DISTINCT email, cycle FROM question_responses))""", {"own": list(own)}).fetchall()[0]
    return _check("one_year_per_student_cycle", not (r[0] or r[1]),
                  {"answered_student_cycles": r[2], "answers_year_differs_from_scores": r[0],
                   "student_cycles_in_two_years": r[1]},
                  "answers carry their scores' year: one year per student per cycle (F8)")


def _no_f10(dc: duckdb.DuckDBPyConnection, src: Any, rows: Any) -> dict:
    """F10: no planned cycle equals the record's current-cycle fields unless it is the current cycle."""
    num = "TRY_CAST(trim({}) AS DOUBLE)"
    same_cur = " AND ".join(f"sc.{e} IS NOT DISTINCT FROM {num.format('o.current_' + e)}" for e in ELEMENTS)
    cc = num.format("o.current_cycle")
    src.con.complete()  # DuckDB 2.0: one open result per connection (see rows.build_rows)
    dc.register("o10", src.con.sql(f"SELECT id, current_cycle, {', '.join('current_' + e for e in ELEMENTS)} "
                                   f"FROM {src.table('object_10')}").to_arrow_table())
    n = dc.execute(f"""SELECT count(*) FROM built_scores sc JOIN built_students s USING (email, academic_year)
        JOIN o10 o ON o.id = s.knack_id
        WHERE {cc} IS NOT NULL AND sc.cycle <> {cc} AND {same_cur}
          AND EXISTS (SELECT 1 FROM built_scores k WHERE k.email = sc.email AND k.academic_year = sc.academic_year
                      AND k.cycle = {cc} AND {" AND ".join(f"k.{e} = sc.{e}" for e in ELEMENTS)})""").fetchall()[0][0]
    return _check("no_f10_cycle_copies", n == 0, {"copies_planned": n,
                                                 "copies_dropped": int(rows.rule_counts.get("f10_cycle_copy", 0))},
                  "no planned cycle merely copies the current-cycle fields (F10)")


def _other_years(dc: duckdb.DuckDBPyConnection, plan: Any, labels: list[str], rows: Any) -> dict:
    """F2: nothing outside the sync's labels is inserted, updated or deleted (re-enrolled students too)."""
    outside = {t: {y: c for y, c in by_year.items() if y not in labels and (c["insert"] or c["update"] or c["delete"])}
               for t, by_year in plan.counts().items()}
    stray = dc.execute("SELECT count(*) FROM students WHERE academic_year NOT IN (SELECT unnest(?))",
                       [labels]).fetchall()[0][0]
    figures = {"re_enrolled_students": int(rows.rule_counts.get("re_enrolled", 0)), "rows_outside_run_years": stray,
               "other_year_changes": {t: v for t, v in outside.items() if v}}
    return _check("no_other_year_student_updated", not stray and not any(outside.values()), figures,
                  "keyed by (email, academic_year): a re-enrolled student's other-year row is never touched (F2)")


def _deletions(plan: Any, drift_: Drift, labels: list[str], est_ids: list[str] | None,
               anchored: list[tuple[str, str]]) -> dict:
    """F16: deletions only of the run's labels and establishments, and exactly the extra rows in scope."""
    rows = drift_.rows
    relabelled = rows["changed"].map(lambda c: "academic_year" in list(c))  # F11: delete + insert
    extra = rows[(rows["kind"] == "extra") | ((rows["kind"] == "changed") & relabelled)]
    in_scope = extra if est_ids is None else extra[extra["l_est_id"].isin(est_ids)]
    planned = {t: sum(c["delete"] for c in by_year.values()) for t, by_year in plan.counts().items()}
    outside = {t: sum(c["delete"] for y, c in by_year.items() if y not in labels) for t, by_year in plan.counts().items()}
    pairs = {(e, years.canonical(y)) for e, y in anchored}
    is_pair = pd.Series([(e, y) in pairs for e, y in zip(in_scope["email"], in_scope["academic_year"], strict=True)],
                        index=in_scope.index, dtype=bool)
    kept = in_scope[(in_scope["table"] == "students") & is_pair]
    expected = in_scope.drop(kept.index).groupby("table").size().to_dict()
    ok = not any(outside.values()) and all(planned.get(t, 0) == int(expected.get(t, 0)) for t in KEYS)
    figures = {"planned_deletes": planned, "extra_rows_in_scope": {t: int(expected.get(t, 0)) for t in KEYS},
               "extra_rows_outside_scope_kept": int(len(extra) - len(in_scope)), "deletes_outside_run_years": outside,
               "students_kept_owning_other_year_rows": int(len(kept)),
               "scope": "all establishments" if est_ids is None else est_ids}
    return _check("deletions_in_scope", ok, figures,
                  "deletions are exactly the current year's rows the source no longer has, within the scope (F16)")
