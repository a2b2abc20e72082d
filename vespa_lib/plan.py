"""Plan a guarded write (SPEC.md §7.1): what applying desired rows would change. Read-only.

Desired rows arrive as Arrow tables keyed by natural keys (docs/ARCHITECTURE.md "Guarded writes"):
students by (email, academic_year), vespa_scores by (email, academic_year, cycle) through the
student, question_responses by (email, academic_year, cycle, question_id). Columns starting with
``_`` and columns the target table does not have are ignored.

``plan_changes`` stages the rows into temporary tables in the target (DuckDB: from Arrow;
PostgreSQL: ``COPY`` inside a transaction that is rolled back) and classifies every row set-based
with ``IS DISTINCT FROM``. ``stage_and_classify`` is the same work without the transaction, for the
guard, which re-plans inside its own write transaction and merges from the same temp tables.

While any migration is pending no data change is planned at all (stricter than only blocking on
the F2 key migration: a plan computed against a schema that is about to change would describe the
wrong thing). The plan lists the migrations and says "apply migrations first".
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from vespa_lib import duckwork
from vespa_lib.errors import ValidationFailed, VespaError
from vespa_lib.privacy import mask_email
from vespa_lib.rowdigest import unchanged_groups
from vespa_lib.schema import dialect_of, table_columns

__all__ = ["OPS", "SPECS", "Desired", "Plan", "TableSpec", "checksum_expr", "copy_in", "copy_out", "plan_changes", "q",
           "read_only_session", "reuse_kept",
           "row_text_expr", "run", "scalar", "stage_and_classify"]

OPS = ("insert", "update", "unchanged", "delete", "refused")
SAMPLE_ROWS = 5


# --- SQL helpers (both dialects; values always parameterised with ``?``) -------------------------


def q(identifier: str) -> str:
    """Quote an identifier (``group`` is a keyword); identifiers come from this package, never input."""
    return '"' + identifier.replace('"', '""') + '"'


def run(con: Any, sql: str, params: list | tuple = ()) -> list[tuple]:
    """Execute one statement; rows for a query, ``[(rowcount,)]`` for DML on both engines."""
    if dialect_of(con) == "duckdb":
        return con.execute(sql, list(params)).fetchall()
    cur = con.execute(sql.replace("?", "%s"), list(params) or None)
    return cur.fetchall() if cur.description else [(cur.rowcount,)]


def scalar(con: Any, sql: str, params: list | tuple = ()) -> Any:
    rows = run(con, sql, params)
    return rows[0][0] if rows else None


_NULL = "'<null>'"


def checksum_expr(parts: list[str]) -> str:
    """An order-independent md5 aggregate over rows whose text is ``parts`` joined (NULLs marked)."""
    text = "concat_ws('|', " + ", ".join(f"coalesce(CAST({p} AS TEXT), {_NULL})" for p in parts) + ")"
    return f"md5(coalesce(string_agg({text}, chr(10) ORDER BY {text}), ''))"


def digest_expr(dialect: str, parts: list[str]) -> str:
    """An order-independent digest of rows whose text is ``parts`` joined: count and two 64-bit hash sums.

    Unlike ``checksum_expr`` it needs no sort (an ordered string_agg over a million rows took ~25 s),
    so it is one streaming aggregate per table slice (SPEC.md §9). A sum, not XOR: repeated rows count."""
    text = "concat_ws('|', " + ", ".join(f"coalesce(CAST({p} AS TEXT), {_NULL})" for p in parts) + ")"
    if dialect == "postgres":
        hi, lo = f"hashtextextended({text}, 0)", f"hashtextextended({text}, 1)"
    else:
        hi, lo = f"md5_number_upper({text})", f"md5_number_lower({text})"
    return f"concat(count(*), ':', coalesce(sum({hi}), 0), ':', coalesce(sum({lo}), 0))"


def row_text_expr(con: Any, table: str, alias: str, schema: str = "public") -> str:
    """Every column of the live table (including ones the workbook does not know) as one text."""
    cols = [c["name"] for c in table_columns(con, table, schema)]
    return "concat_ws('|', " + ", ".join(f"coalesce(CAST({alias}.{q(c)} AS TEXT), {_NULL})" for c in cols) + ")"


@dataclass(frozen=True)
class TableSpec:
    """How one production table is keyed and compared (docs/ARCHITECTURE.md "Guarded writes")."""

    name: str
    keys: tuple[str, ...]
    compared: tuple[str, ...]
    types: dict[str, str]
    via_student: bool


_STUDENT_TYPES = {"email": "TEXT", "academic_year": "TEXT", "knack_id": "TEXT", "name": "TEXT",
                  "establishment_id": "UUID", "year_group": "TEXT", "course": "TEXT", "faculty": "TEXT",
                  "group": "TEXT", "gender": "TEXT"}
_SCORES = ("vision", "effort", "systems", "practice", "attitude", "overall")
SPECS: tuple[TableSpec, ...] = (
    TableSpec("students", ("email", "academic_year"),
              ("knack_id", "name", "establishment_id", "year_group", "course", "faculty", "group", "gender"),
              _STUDENT_TYPES, False),
    TableSpec("vespa_scores", ("email", "academic_year", "cycle"), (*_SCORES, "completion_date"),
              {"email": "TEXT", "academic_year": "TEXT", "cycle": "INTEGER", "completion_date": "DATE",
               **dict.fromkeys(_SCORES, "INTEGER")}, True),
    TableSpec("question_responses", ("email", "academic_year", "cycle", "question_id"), ("response_value",),
              {"email": "TEXT", "academic_year": "TEXT", "cycle": "INTEGER", "question_id": "TEXT",
               "response_value": "INTEGER"}, True),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


@dataclass
class Desired:
    """Desired rows per table plus the run's scope (years, establishments, whether to delete)."""

    tables: dict[str, pa.Table]
    years: list[str]
    establishment_ids: list[str] | None = None
    allow_delete: bool = False
    # per-table facts of the (immutable) Arrow tables, computed once: the guard re-plans the same rows
    _facts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.tables) - set(SPEC_BY_NAME)
        if unknown:
            raise ValidationFailed(["desired_tables"], f"Desired rows for unknown tables {sorted(unknown)}: "
                                   f"the guard writes only {', '.join(SPEC_BY_NAME)}.")
        if not self.years:
            raise ValidationFailed(["scope_years"], "The run's scope names no academic year: pass years=[...].")


@dataclass
class Plan:
    """The changes per table × year, refused rows, pending migrations and the fingerprint."""

    counts_by_table: dict[str, dict[str, dict[str, int]]]
    changed_columns: dict[str, list[str]]
    samples: dict[str, list[dict]]
    refused_reasons: dict[str, dict[str, int]]
    migrations: list[dict]
    fingerprint: str
    scope: dict
    kind: str = "data"
    extra: dict = field(default_factory=dict)
    staged: dict[str, list[str]] = field(default_factory=dict)  # staged columns per table (for the merge)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase; not part of the fingerprint
    session: str | None = None  # key of the plan tables kept in the planning connection (``plan_changes(keep=)``)

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """{table: {year: {insert, update, unchanged, delete, refused}}}."""
        return self.counts_by_table

    @property
    def blocked(self) -> str | None:
        """Why data changes were not planned (pending migrations), or None."""
        if not self.migrations:
            return None
        names = ", ".join(f"{m['version']} {m['name']}" for m in self.migrations)
        return f"apply migrations first: {names} are pending; data changes are planned after they are applied."

    @property
    def is_empty(self) -> bool:
        """True when applying would write nothing (no change, no migration, nothing to mark)."""
        changing = ("insert", "update", "delete")
        return not self.migrations and not any(
            c.get(op, 0) for years in self.counts_by_table.values() for c in years.values() for op in changing
        ) and not any(self.extra.get("mark", {}).values())

    def summary_frame(self) -> pd.DataFrame:
        """One row per table × year with the five counts."""
        rows = [{"table": t, "academic_year": y, **{op: c.get(op, 0) for op in OPS}}
                for t, years in self.counts_by_table.items() for y, c in sorted(years.items())]
        return pd.DataFrame(rows, columns=["table", "academic_year", *OPS])

    def to_json(self) -> str:
        """The whole plan as canonical JSON (samples carry masked emails only)."""
        return json.dumps({"kind": self.kind, "fingerprint": self.fingerprint, "scope": self.scope,
                           "counts": self.counts_by_table, "changed_columns": self.changed_columns,
                           "samples": self.samples, "refused_reasons": self.refused_reasons,
                           "migrations": self.migrations, "blocked": self.blocked, "extra": self.extra},
                          sort_keys=True, default=str, indent=1)


# --- staging -------------------------------------------------------------------------------------


def _stage_columns(spec: TableSpec, table: pa.Table) -> list[str]:
    names = set(table.column_names)
    missing = [k for k in spec.keys if k not in names]
    if missing:
        raise ValidationFailed(["desired_keys"], f"Desired {spec.name} rows lack key columns {missing}: "
                               "build them with vespa_lib.rows.")
    return [*spec.keys, *(c for c in spec.compared if c in names)]


def _stage(con: Any, dialect: str, spec: TableSpec, table: pa.Table, on_chunk: Any = None) -> list[str]:
    """Load desired rows into temp table ``vespa_stage_<table>`` typed like the target."""
    cols = _stage_columns(spec, table)
    name = f"vespa_stage_{spec.name}"
    run(con, f"DROP TABLE IF EXISTS {name}")
    typed = ", ".join(f"{q(c)} {spec.types[c]}" for c in cols)
    if dialect == "duckdb":
        con.register("vespa_arrow_in", table.select(cols))
        select = ", ".join(f"CAST({q(c)} AS {spec.types[c]}) AS {q(c)}" for c in cols)
        run(con, f"CREATE TEMP TABLE {name} AS SELECT {select} FROM vespa_arrow_in")
        con.unregister("vespa_arrow_in")
        return cols
    run(con, f"CREATE TEMP TABLE {name} ({typed}) ON COMMIT DROP")
    copy_in(con, name, cols, table.select(cols), on_chunk)
    _analyze(con, name)
    return cols


def _analyze(con: Any, name: str) -> None:
    """PostgreSQL plans temp tables blind until analysed (autovacuum never sees them)."""
    if dialect_of(con) == "postgres":
        run(con, f"ANALYZE {name}")


def copy_in(con: Any, name: str, cols: list[str], table: pa.Table | pa.RecordBatchReader, on_chunk: Any = None) -> None:
    """COPY Arrow rows as CSV (SPEC.md §4: bulk work over COPY); nulls unquoted, strings quoted.
    ``table`` may be a stream (``RecordBatchReader``): rows are then never all in memory at once."""
    collist = ", ".join(q(c) for c in cols)
    batches = table if isinstance(table, pa.RecordBatchReader) else table.to_batches(max_chunksize=50_000)
    with con.cursor().copy(f"COPY {name} ({collist}) FROM STDIN WITH (FORMAT csv)") as copy:
        for i, batch in enumerate(batches):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False))
            copy.write(buf.getvalue())
            if on_chunk is not None:
                on_chunk(i)


def desired_facts(desired: Desired, spec: TableSpec) -> dict:
    """{"digest", "duplicate"} of the desired rows of ``spec``: an order-independent digest of the staged
    columns (what the fingerprint binds) and one repeated natural key or None. Read-only; cached on
    ``desired`` (its Arrow tables are immutable), so the guard's re-plan does not recompute it.

    Computed in a private in-memory DuckDB over the Arrow table (~0.1 s for a million rows, against
    ~1.5 s for a GROUP BY over the staged copy on PostgreSQL). DuckDB's ``hash`` is stable for one
    DuckDB version; the version is part of the digest, so an upgrade between plan and apply changes
    the fingerprint and the apply is refused (safe), never misapproved."""
    import duckdb  # noqa: PLC0415 - private in-memory engine whatever the target

    table = desired.tables[spec.name]
    cached = desired._facts.get(spec.name)
    if cached is not None and cached[0] is table:
        return cached[1]
    cols = _stage_columns(spec, table)
    keys = ", ".join(q(k) for k in spec.keys)
    every = ", ".join(q(c) for c in cols)
    mem = duckwork.connect()
    try:
        mem.register("vespa_desired", table.select(cols))
        # keys grouped by their 64-bit hash first (8 bytes a row, not the keys: 10x answers are 11 M keys),
        # then only rows whose hash repeats are compared by value (a collision alone is not a duplicate)
        dup = mem.execute(f"SELECT {keys} FROM vespa_desired WHERE hash({keys}) IN (SELECT hash({keys}) AS h "
                          "FROM vespa_desired GROUP BY h HAVING count(*) > 1) GROUP BY ALL HAVING count(*) > 1 "
                          "LIMIT 1").fetchall()
        n, h1, h2 = mem.execute(f"SELECT count(*), CAST(coalesce(sum(CAST(hash({every}) AS HUGEINT)), 0) AS TEXT), "
                                f"CAST(coalesce(sum(CAST(hash({every}, 'vespa') AS HUGEINT)), 0) AS TEXT) "
                                "FROM vespa_desired").fetchone()
    finally:
        mem.close()
    facts = {"digest": f"duckdb {duckdb.__version__}:{cols}:{n}:{h1}:{h2}", "duplicate": dup[0] if dup else None}
    desired._facts[spec.name] = (table, facts)
    return facts


def _check_unique(desired: Desired, spec: TableSpec) -> None:
    dup = desired_facts(desired, spec)["duplicate"]
    if dup:
        raise ValidationFailed(["desired_duplicates"], f"Desired {spec.name} rows repeat the natural key "
                               f"{spec.keys} (e.g. year {dup[1]}): collapse duplicates before planning.")


# --- classification ------------------------------------------------------------------------------


def live_sql(spec: TableSpec, cols: list[str], years: list[str] | None = None, emails_of: str | None = None) -> str:
    """The live table projected on natural keys: lid, keys, l_est, compared columns; only the rows of
    ``years`` when given (one ``?`` per year, in order) and of students whose email is in table
    ``emails_of`` when given (a few staged students are then found by index, not by a scan)."""
    compared = ", ".join(f"t.{q(c)}" for c in cols if c not in spec.keys)
    compared = ", " + compared if compared else ""
    where = f" WHERE t.academic_year IN {_in(years) if years else '(NULL)'}" if years is not None else ""
    if emails_of:
        where += f"{' AND' if where else ' WHERE'} {'t' if not spec.via_student else 's'}.email IN " \
                 f"(SELECT x.email FROM {emails_of} x)"
    if not spec.via_student:
        return (f"SELECT t.id AS lid, t.email, t.academic_year, t.establishment_id AS l_est{compared} "
                f"FROM students t{where}")
    keys = ", ".join(f"t.{q(k)}" for k in spec.keys if k != "email")
    return (f"SELECT t.id AS lid, s.email, {keys}, s.establishment_id AS l_est{compared} "
            f"FROM {spec.name} t JOIN students s ON s.id = t.student_id{where}")


def _d_est(spec: TableSpec, cols: list[str]) -> tuple[str, str]:
    """The desired row's establishment and the joins it needs (set-based: no correlated subquery)."""
    if not spec.via_student:
        return ("d.establishment_id" if "establishment_id" in cols else "l.l_est"), ""
    joins = ("LEFT JOIN vespa_plan_students xs ON xs.email = d.email AND xs.academic_year = d.academic_year "
             "LEFT JOIN students ss ON ss.email = d.email AND ss.academic_year = d.academic_year")
    return "coalesce(xs.d_est, CAST(ss.establishment_id AS TEXT))", joins


def _has_student(spec: TableSpec) -> str:
    """Whether the row's student exists or will be inserted unrefused (students are planned first)."""
    if not spec.via_student:
        return "true"
    return "(ss.id IS NOT NULL OR (xs.email IS NOT NULL AND xs.refused IS NULL))"


def _classify(con: Any, spec: TableSpec, cols: list[str], desired: Desired, locked: list[str],
              staged_years: list[str] | None = None) -> None:
    """Create ``vespa_plan_<table>``: one row per desired key (and per delete) with op, refusal, flags
    and the desired values, so the merge, digest and samples read this one table (no re-join).

    ``staged_years``: the years of the staged rows; only live rows of those years can match a key, so
    the live side is read for them only (half the answers table or less, SPEC.md §9)."""
    compared = [c for c in cols if c not in spec.keys]
    on = " AND ".join(f"l.{q(k)} = d.{q(k)}" for k in spec.keys)
    flags = "".join(f", (d.{q(c)} IS DISTINCT FROM l.{q(c)}) AS {q('ch_' + c)}" for c in compared)
    values = "".join(f", d.{q(c)}" for c in compared)
    differs = " OR ".join(f"d.{q(c)} IS DISTINCT FROM l.{q(c)}" for c in compared) or "false"
    keys = ", ".join(f"d.{q(k)}" for k in spec.keys)
    name = f"vespa_plan_{spec.name}"
    d_est, joins = _d_est(spec, cols)
    refusal, params = _refusal(spec, desired, locked)
    run(con, f"DROP TABLE IF EXISTS {name}")
    run(con, f"CREATE TEMP TABLE {name} AS SELECT c.*, CASE WHEN c.op = 'unchanged' THEN CAST(NULL AS TEXT) "
             f"ELSE {refusal} END AS refused FROM (SELECT {keys}, l.lid, CAST({d_est} AS TEXT) AS d_est, "
             f"CAST(l.l_est AS TEXT) AS l_est, {_has_student(spec)} AS has_student, CASE WHEN l.lid IS NULL THEN "
             f"'insert' WHEN {differs} THEN 'update' ELSE 'unchanged' END AS op{flags}{values} "
             f"FROM vespa_stage_{spec.name} d LEFT JOIN ({live_sql(spec, cols, staged_years, f'vespa_stage_{spec.name}')}) "
             f"l ON {on} {joins}) c",
        [*params, *(staged_years or [])])
    if desired.allow_delete:
        _plan_deletes(con, spec, cols, desired)
        run(con, f"UPDATE {name} SET refused = {refusal} WHERE op = 'delete'", params)
    _analyze(con, name)


def _in(values: list) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


def _plan_deletes(con: Any, spec: TableSpec, cols: list[str], desired: Desired) -> None:
    """Live rows of the scope's years and establishments that the desired set lacks (F16: scope only).

    Nothing is deleted in the student groups proven unchanged (``vespa_proven_<table>``, from
    ``_stage_groups``): their rows are desired although not staged."""
    keys = ", ".join(q(k) for k in spec.keys)
    on = " AND ".join(f"d.{q(k)} = l.{q(k)}" for k in spec.keys)
    years = list(desired.years)
    where, params = f"l.academic_year IN {_in(years) if years else '(NULL)'}", years
    if desired.establishment_ids is not None:
        where += f" AND CAST(l.l_est AS TEXT) IN {_in(desired.establishment_ids) if desired.establishment_ids else '(NULL)'}"
        params += [str(e) for e in desired.establishment_ids]
    run(con, f"INSERT INTO vespa_plan_{spec.name} ({keys}, lid, l_est, op) "
             f"SELECT {', '.join('l.' + q(k) for k in spec.keys)}, l.lid, CAST(l.l_est AS TEXT), 'delete' "
             f"FROM ({live_sql(spec, cols)}) l WHERE {where} "
             f"AND NOT EXISTS (SELECT 1 FROM vespa_stage_{spec.name} d WHERE {on}) "
             f"AND NOT EXISTS (SELECT 1 FROM vespa_proven_{spec.name} g WHERE g.email = l.email "
             "AND g.academic_year = l.academic_year)", params)


def _stage_groups(con: Any, spec: TableSpec, groups: pa.Table | None) -> None:
    """Temp table ``vespa_proven_<table>`` (email, academic_year): the groups the fast path proved
    unchanged, whose rows are desired although not staged (``_plan_deletes`` keeps them)."""
    name = f"vespa_proven_{spec.name}"
    run(con, f"DROP TABLE IF EXISTS {name}")
    if groups is None:
        groups = pa.table({"email": pa.array([], pa.string()), "academic_year": pa.array([], pa.string())})
    if dialect_of(con) == "duckdb":
        con.register("vespa_groups_in", groups)
        run(con, f"CREATE TEMP TABLE {name} AS SELECT CAST(email AS TEXT) AS email, "
                 "CAST(academic_year AS TEXT) AS academic_year FROM vespa_groups_in")
        con.unregister("vespa_groups_in")
        return
    run(con, f"CREATE TEMP TABLE {name} (email TEXT, academic_year TEXT) ON COMMIT DROP")
    copy_in(con, name, ["email", "academic_year"], groups.select(["email", "academic_year"]), None)
    _analyze(con, name)


def _refusal(spec: TableSpec, desired: Desired, locked_years: list[str]) -> tuple[str, list]:
    """Why a change may not be made (NULL when it may): outside scope (F16), archived year, no student.

    A CASE over the plan row's columns, with its parameters, used when the plan table is created."""
    params: list = list(desired.years)
    cases = [f"WHEN academic_year NOT IN {_in(desired.years)} THEN 'outside_year_scope'"]
    if desired.establishment_ids is not None:
        ests = [str(e) for e in desired.establishment_ids] or [""]
        cases.append(f"WHEN coalesce(d_est, l_est, '') NOT IN {_in(ests)} "
                     f"OR coalesce(l_est, d_est, '') NOT IN {_in(ests)} THEN 'outside_establishment_scope'")
        params += ests + ests
    if locked_years:
        cases.append(f"WHEN academic_year IN {_in(locked_years)} THEN 'archived_year'")
        params += locked_years
    if spec.via_student:
        cases.append("WHEN lid IS NULL AND NOT has_student THEN 'no_student'")
    return f"CASE {' '.join(cases)} END", params


# --- summarising ---------------------------------------------------------------------------------


def _counts(con: Any, spec: TableSpec) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for year, op, refused, n in run(con, f"SELECT academic_year, op, refused IS NOT NULL, count(*) "
                                         f"FROM vespa_plan_{spec.name} GROUP BY 1, 2, 3"):
        cell = out.setdefault(year, dict.fromkeys(OPS, 0))
        cell["refused" if refused else op] += n
    return out


def _changed_columns(con: Any, spec: TableSpec, cols: list[str]) -> list[str]:
    compared = [c for c in cols if c not in spec.keys]
    if not compared:
        return []
    sums = ", ".join(f"sum(CASE WHEN {q('ch_' + c)} THEN 1 ELSE 0 END)" for c in compared)
    row = run(con, f"SELECT {sums} FROM vespa_plan_{spec.name} WHERE op = 'update' AND refused IS NULL")[0]
    return [c for c, n in zip(compared, row, strict=True) if n]


def _samples(con: Any, spec: TableSpec, cols: list[str], changed: list[str]) -> list[dict]:
    """A few updates with before/after of the changed columns; emails masked (SPEC.md §8)."""
    if not changed:
        return []
    keys = ", ".join(f"p.{q(k)}" for k in spec.keys)
    vals = ", ".join(f"CAST(l.{q(c)} AS TEXT), CAST(p.{q(c)} AS TEXT)" for c in changed)
    # the few plan rows first, then their live values by id: no join over the whole live table
    rows = run(con, f"SELECT {keys}, {vals} FROM (SELECT * FROM vespa_plan_{spec.name} WHERE op = 'update' "
                    f"AND refused IS NULL ORDER BY {', '.join(q(k) for k in spec.keys)} LIMIT {SAMPLE_ROWS}) p "
                    f"JOIN ({live_sql(spec, cols)}) l ON l.lid = p.lid ORDER BY {keys}")
    out = []
    for row in rows:
        key = dict(zip(spec.keys, row[:len(spec.keys)], strict=True))
        key["email"] = mask_email(key["email"])
        rest = row[len(spec.keys):]
        key["changes"] = {c: {"before": rest[2 * i], "after": rest[2 * i + 1]} for i, c in enumerate(changed)}
        out.append(key)
    return out


def _token_slices(years: list[str]) -> list[tuple[str, str, list]]:
    """(table, WHERE, params) of every live slice a plan reads: the planned tables' rows of ``years``
    and academic_years, but ALL students: scores and answers are matched through their student's
    email, whatever that student's year (an F8 row's student may belong to another year)."""
    where = f" WHERE t.academic_year IN {_in(years)}"
    return [(name, "" if name == "students" else where, [] if name == "students" else list(years))
            for name in [s.name for s in SPECS] + ["academic_years"]]


def state_digest(con: Any, years: list[str]) -> dict[str, str]:
    """Content digest of the live slices a plan of ``years`` reads (``_token_slices``). Read-only."""
    return {name: scalar(con, f"SELECT {digest_expr(dialect_of(con), [row_text_expr(con, name, 't')])} "
                              f"FROM {name} t{where}", params) or ""
            for name, where, params in _token_slices(years)}


def state_token(con: Any, years: list[str]) -> dict[str, str]:
    """What the fingerprint binds the plan to: every live row the classification reads. Read-only.

    PostgreSQL: the row count and a sum of 64-bit hashes of the rows' ``xmin`` (the transaction that
    wrote each row version), not of their content. A row inserted or updated since planning is a
    version written by a transaction the plan did not see (its ``xmin`` is new to the multiset); a
    delete lowers the count unless rows are also written, which bring new ``xmin``s. Unlike ``ctid``,
    ``xmin`` survives VACUUM (FULL) and freezing, which change no row. One integer hash per row costs a
    third of hashing (ctid, xmin) text twice (0.21 against 0.63 s per million rows). DuckDB has no row
    versions: ``state_digest``."""
    if dialect_of(con) == "duckdb":
        return state_digest(con, years)
    sums = "concat(count(*), ':', coalesce(sum(hashint8extended(t.xmin::text::bigint, 0)), 0))"
    return {name: scalar(con, f"SELECT {sums} FROM {name} t{where}", params) or ""
            for name, where, params in _token_slices(years)}


# --- no-op fast path (SPEC.md §9: a re-run that finds nothing to do ≤ 5 s) ----------------------
# The live rows of the desired years are read once (COPY out) and compared with the desired rows per
# student group (academic_year, email) in DuckDB; only the groups that differ are staged and
# classified. With deletes, the proven groups are staged as keys only, so no row of theirs is deleted.

FAST_NOOP = True  # tests switch it off to prove the fast path plans exactly what classification plans


def _live_rows(con: Any, spec: TableSpec, cols: list[str], years: list[str]
               ) -> tuple[pa.Table | pa.RecordBatchReader, pa.Table | None]:
    """The live rows of ``years`` projected on the staged columns, as text, and for scores and answers
    the (student_id, email) pairs their ``student_id`` resolves through (None: rows carry the email).
    Read-only.

    PostgreSQL: a stream of Arrow batches over one ``COPY ... TO STDOUT`` (SPEC.md §4: bulk reads
    over COPY; §9: never all in memory), to be read once; scores and answers carry their
    ``student_id``, which the reader resolves to emails in DuckDB (no join per row in Python); dates
    rendered ISO whatever the server's DateStyle; NULL unquoted, empty text quoted."""
    join = "JOIN students s ON s.id = t.student_id " if spec.via_student else ""
    exprs = [(f"s.{q(c)}" if spec.via_student and c == "email" else f"t.{q(c)}") for c in cols]
    if dialect_of(con) == "duckdb":
        select = ", ".join(f"{e} AS {q(c)}" for e, c in zip(exprs, cols, strict=True))
        return con.sql(f"SELECT {select} FROM {spec.name} t {join}WHERE t.academic_year IN {_in(years)}",
                       params=years).to_arrow_table(), None
    names = [("student_id" if spec.via_student and c == "email" else c) for c in cols]
    exprs = ["t.student_id" if n == "student_id" else e for n, e in zip(names, exprs, strict=True)]
    select = ", ".join(f"to_char({e}, 'YYYY-MM-DD')" if spec.types.get(c) == "DATE" else f"CAST({e} AS TEXT)"
                       for e, c in zip(exprs, names, strict=True))
    live = copy_out_reader(con, f"SELECT {select} FROM {spec.name} t WHERE t.academic_year IN {_in(years)}",
                           years, names)
    if not spec.via_student:
        return live, None
    return live, copy_out(con, "SELECT CAST(id AS TEXT), email FROM students", [], ["student_id", "email"])


def copy_out(con: Any, select: str, params: list, names: list[str]) -> pa.Table:
    """Rows of a PostgreSQL query as Arrow text columns over ``COPY ... TO STDOUT`` (csv; NULL
    unquoted, empty text quoted, so they stay apart). Read-only."""
    return pa.Table.from_batches(list(copy_out_batches(con, select, params, names)), schema=_text_schema(names))


COPY_BATCH_BYTES = 32 << 20  # CSV bytes parsed into one Arrow batch when streaming a COPY out


def _text_schema(names: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in names])


def copy_out_batches(con: Any, select: str, params: list, names: list[str],
                     batch_bytes: int = COPY_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """``copy_out`` as a stream of Arrow batches of about ``batch_bytes`` of CSV each, so a large read
    (10x: 11 M answers) is never all in memory (SPEC.md §9). Read-only. PostgreSQL sends one row per
    COPY message, so a batch always ends at a row boundary. A reader that stops early leaves the rest
    drained, and the connection usable."""
    read = pacsv.ReadOptions(column_names=names)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
                                   quoted_strings_can_be_null=False)

    def parse(data: bytearray) -> Iterator[pa.RecordBatch]:
        yield from pacsv.read_csv(io.BytesIO(bytes(data)), read_options=read, convert_options=convert).to_batches()

    with con.cursor().copy(f"COPY ({select.replace('?', '%s')}) TO STDOUT WITH (FORMAT csv)", params or None) as copy:
        rows = iter(copy)
        try:
            buf = bytearray()
            for chunk in rows:
                buf += chunk
                if len(buf) >= batch_bytes:
                    yield from parse(buf)
                    buf = bytearray()
            if buf:
                yield from parse(buf)
        finally:
            for _ in rows:  # the consumer stopped early (or failed): finish the COPY
                pass


def copy_out_reader(con: Any, select: str, params: list, names: list[str]) -> pa.RecordBatchReader:
    """``copy_out_batches`` as an Arrow stream (DuckDB scans it once without holding it). Read-only."""
    return pa.RecordBatchReader.from_batches(_text_schema(names), copy_out_batches(con, select, params, names))


_GROUP = ("academic_year", "email")


def _unchanged_groups(con: Any, spec: TableSpec, table: pa.Table) -> tuple[dict[str, int], pa.Table, pa.Table | None]:
    """({year: rows proven unchanged}, desired rows left to stage, proven groups): the student groups
    (year, email) whose live rows are exactly their desired rows are unchanged and need no staging.
    Read-only. A proven group can produce no delete either: all its live rows are desired."""
    cols = _stage_columns(spec, table)
    years = _years_of(table)
    if not years:
        return {}, table, None
    live, ids = _live_rows(con, spec, cols, years)
    split = unchanged_groups(table.select(cols), list(spec.keys), [(c, spec.types[c]) for c in cols], live, ids)
    if split is None or not split[0]:  # nothing proven (a first import): every row is classified
        return {}, table, None
    proven, rest, groups = split
    return proven, table.take(rest), groups


@dataclass
class _Split:
    """What the fast path proved for one table before staging."""

    proven: dict[str, int]  # {year: rows proven unchanged}
    rest: pa.Table  # desired rows left to stage and classify
    groups: pa.Table | None  # proven (email, academic_year) groups (deletes: none of their rows)


def _fast_split(con: Any, spec: TableSpec, desired: Desired) -> _Split:
    """By student group, with or without deletes (a proven group's live rows are all desired)."""
    table = desired.tables[spec.name]
    if not FAST_NOOP:
        return _Split({}, table, None)
    proven, rest, groups = _unchanged_groups(con, spec, table)
    return _Split(proven, rest, groups)


def _years_of(table: pa.Table) -> list[str]:
    """The distinct academic years of Arrow rows (as text), sorted."""
    import pyarrow.compute as pc  # noqa: PLC0415

    return sorted(y for y in pc.unique(pc.cast(table["academic_year"], pa.string())).to_pylist() if y is not None)


def _empty_student_plan(con: Any) -> None:
    """The students plan table the score/answer classification joins, empty: no student changes."""
    run(con, "DROP TABLE IF EXISTS vespa_plan_students")
    run(con, "CREATE TEMP TABLE vespa_plan_students (email TEXT, academic_year TEXT, lid BIGINT, d_est TEXT, "
             "op TEXT, refused TEXT)")


# --- entry points --------------------------------------------------------------------------------


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[phase]`` (benchmarks read them; SPEC.md §9)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - start, 4)


# Hash joins and aggregates over a million staged rows spill to disk in batches at the default 4 MB;
# transaction-local, so it ends with the plan's or the apply's transaction.
WORK_MEM = "128MB"


def _session_settings(con: Any) -> None:
    if dialect_of(con) == "postgres":
        run(con, "SELECT set_config('work_mem', ?, true)", [WORK_MEM])


def archived_years(con: Any) -> list[str]:
    """Years marked archived in academic_years. Read-only.

    A database the workbook has not migrated yet has no archive markers, so no archived year (its
    plans are blocked by the pending migrations, which the caller reports)."""
    if "is_archived" not in {c["name"] for c in table_columns(con, "academic_years")}:
        return []
    return [r[0] for r in run(con, "SELECT academic_year FROM academic_years WHERE is_archived ORDER BY 1")]


def stage_and_classify(con: Any, desired: Desired, *, archived_write_years: tuple | list = (),
                       archive_years: tuple | list = (), on_chunk: Any = None) -> Plan:
    """The plan, computed inside the caller's open transaction; leaves the temp tables for merging."""
    from vespa_lib.migrations import pending

    dialect = dialect_of(con)
    scope = _scope(desired, archive_years, archived_write_years)
    if dialect == "postgres":  # whatever plan tables this replaces are no longer a kept plan
        run(con, f"DROP TABLE IF EXISTS {SESSION_TABLE}")
    migrations = [m.describe() for m in pending(con)]
    if migrations:
        digest = {"migrations": migrations, "scope": scope}
        return Plan({}, {}, {}, {}, migrations, _sha(digest), scope, kind="migrations")
    locked = [y for y in archived_years(con) if y not in archived_write_years]
    _session_settings(con)
    counts, changed, samples, reasons, changes, staged = {}, {}, {}, {}, {}, {}
    timings: dict[str, float] = {}
    for spec in SPECS:
        if spec.name not in desired.tables:
            continue
        with timed(timings, f"unique.{spec.name}"):
            _check_unique(desired, spec)
            changes[spec.name] = desired_facts(desired, spec)["digest"]
        with timed(timings, f"fast.{spec.name}"):
            split = _fast_split(con, spec, desired)
            proven, rest = split.proven, split.rest
        if proven and not rest.num_rows and not desired.allow_delete:  # the result classification would give
            counts[spec.name], changed[spec.name], samples[spec.name] = _with_unchanged({}, proven), [], []
            reasons[spec.name] = {}
            if spec.name == "students":
                _empty_student_plan(con)
            continue
        with timed(timings, f"stage.{spec.name}"):  # only the groups not proven unchanged
            cols = staged[spec.name] = _stage(con, dialect, spec, rest, on_chunk)
            if desired.allow_delete:
                _stage_groups(con, spec, split.groups)
        with timed(timings, f"classify.{spec.name}"):
            _classify(con, spec, cols, desired, locked, _years_of(rest))
        with timed(timings, f"summarise.{spec.name}"):
            counts[spec.name] = _with_unchanged(_counts(con, spec), proven)
            changed[spec.name] = _changed_columns(con, spec, cols)
            samples[spec.name] = _samples(con, spec, cols, changed[spec.name])
            reasons[spec.name] = dict(run(con, f"SELECT refused, count(*) FROM vespa_plan_{spec.name} "
                                               "WHERE refused IS NOT NULL GROUP BY 1 ORDER BY 1"))
    with timed(timings, "state_digest"):
        extra, state = _live_binding(con, counts, scope, set(staged))
    fingerprint = _fingerprint(changes, counts, changed, reasons, state, scope, extra)
    return Plan(counts, changed, samples, reasons, [], fingerprint, scope, extra=extra, staged=staged,
                timings=timings)


def _scope(desired: Desired, archive_years: tuple | list, archived_write_years: tuple | list) -> dict:
    return {"years": sorted(desired.years), "establishment_ids": desired.establishment_ids,
            "allow_delete": desired.allow_delete, "archive_years": sorted(archive_years),
            "archived_write_years": sorted(archived_write_years)}


def _live_binding(con: Any, counts: dict, scope: dict, staged: set[str]) -> tuple[dict, dict]:
    """(extra, state): the rows to mark archived and the token of every live row the plan read."""
    years = sorted(set(scope["years"]) | {y for c in counts.values() for y in c} | set(scope["archive_years"]))
    return {"mark": _mark_counts(con, scope["archive_years"], staged)}, state_token(con, years)


def _fingerprint(changes: dict, counts: dict, changed: dict, reasons: dict, state: dict, scope: dict,
                 extra: dict) -> str:
    """The classification is a function of the desired rows, the live state the token covers and the
    scope, so binding those (plus the outcome) binds the plan (docs/ARCHITECTURE.md "Fingerprint")."""
    return _sha({"desired": changes, "counts": counts, "changed": changed, "refused": reasons, "state": state,
                 "scope": scope, "extra": extra})


# --- a plan kept in its connection, reused by the guard (SPEC.md §9) ----------------------------
# The runbooks plan, show the plan, then apply in the same session. Planning twice (once to show,
# once under the guard's lock) cost a third of a realistic import. A plan made with ``keep=True``
# leaves its plan tables in the session (temp tables: invisible to others, gone at disconnect) with a
# marker row; the guard reuses them only when, under its lock, the marker is still this plan's and
# the fingerprint recomputed from the live state equals the approved one. Otherwise it re-plans.

SESSION_TABLE = "vespa_plan_session"


def _row_writes(con: Any) -> dict[str, int]:
    """This backend's not yet reported row writes per permanent table. They include earlier
    transactions' (statistics are reported lazily), so callers compare two readings in one
    transaction: nothing is reported while a transaction is open."""
    return {r[0]: int(r[1]) for r in run(con, "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + "
                                              "n_tup_del FROM pg_stat_xact_user_tables "
                                              "WHERE schemaname !~ '^pg_temp'")}


def reuse_kept(con: Any, planned: Plan | None, desired: Desired, *, approve: str, archived_write_years: tuple | list
               = (), archive_years: tuple | list = ()) -> Plan | None:
    """``planned`` when its kept plan tables are still valid in this transaction (see above), else None.
    Call under the guard's lock, inside its write transaction. Read-only."""
    from vespa_lib.migrations import pending

    if planned is None or planned.session is None or planned.fingerprint != approve or planned.migrations \
            or dialect_of(con) != "postgres" or scalar(con, "SELECT to_regclass(?)", [f"pg_temp.{SESSION_TABLE}"]) \
            is None or scalar(con, f"SELECT key FROM {SESSION_TABLE}") != planned.session or pending(con):
        return None
    scope = _scope(desired, archive_years, archived_write_years)
    changes = {s.name: desired_facts(desired, s)["digest"] for s in SPECS if s.name in desired.tables}
    extra, state = _live_binding(con, planned.counts_by_table, scope, set(planned.staged))
    if _fingerprint(changes, planned.counts_by_table, planned.changed_columns, planned.refused_reasons, state, scope,
                    extra) != planned.fingerprint:
        return None
    _session_settings(con)
    run(con, f"DROP TABLE {SESSION_TABLE}")  # applied once: a second apply re-plans
    return planned


def _with_unchanged(counts: dict[str, dict[str, int]], proven: dict[str, int]) -> dict[str, dict[str, int]]:
    """Classified counts plus the rows proven unchanged (a year may be partly proven, partly staged)."""
    for year, n in proven.items():
        counts.setdefault(year, dict.fromkeys(OPS, 0))["unchanged"] += n
    return counts


def _mark_counts(con: Any, archive_years: list[str], planned: set[str]) -> dict[str, int]:
    """Live rows of the years being archived that are not yet marked (SPEC.md §7 archive markers).

    Rows the plan deletes are not counted; inserted rows arrive already marked."""
    if not archive_years:
        return {}
    out = {}
    for spec in SPECS:
        condition, params = _unmarked(spec.name, archive_years, planned)
        out[spec.name] = scalar(con, f"SELECT count(*) FROM {spec.name} t WHERE {condition}", params)
    return out


def _unmarked(table: str, archive_years: list[str], planned: set[str]) -> tuple[str, list]:
    """(condition on ``t``, params): unmarked rows of ``archive_years`` the plan does not delete."""
    skip = (f" AND t.id NOT IN (SELECT lid FROM vespa_plan_{table} WHERE op = 'delete' AND refused IS NULL)"
            if table in planned else "")
    return f"t.academic_year IN {_in(archive_years)} AND NOT t.is_archived{skip}", list(archive_years)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def rolled_back(con: Any) -> Iterator[None]:
    """A transaction that is always rolled back: planning leaves nothing behind."""
    if dialect_of(con) == "postgres":
        with con.transaction(force_rollback=True):
            yield
        return
    con.begin()
    try:
        yield
    finally:
        con.rollback()


def read_only_session(con: Any) -> bool:
    """Whether a PostgreSQL connection opens read-only transactions (a target opened ``read_only``). Read-only."""
    return dialect_of(con) == "postgres" and scalar(con, "SELECT current_setting('default_transaction_read_only')") == "on"


def _staged_without_writes(con: Any, desired: Desired, kw: dict) -> Plan:
    """``stage_and_classify`` in the open PostgreSQL transaction, refused (raised, so the transaction rolls
    back) if it wrote a row of any permanent table: only temp tables may be written while planning."""
    before = _row_writes(con)
    plan = stage_and_classify(con, desired, **kw)
    wrote = sorted(t for t, n in _row_writes(con).items() if n > before.get(t, 0))
    if wrote:
        raise VespaError(f"Planning wrote to {wrote}, so it was rolled back: planning must be read-only. "
                         "This is a bug in vespa_lib.plan; report it with the plan's parameters.")
    return plan


def plan_changes(con: Any, desired: Desired, *, archived_write_years: tuple | list = (),
                 archive_years: tuple | list = (), keep: bool = False) -> Plan:
    """Plan applying ``desired`` (SPEC.md §7.1). Read-only: staging is rolled back.

    ``keep`` (PostgreSQL): the plan tables stay in this connection for ``reuse_kept``; the planning
    transaction then commits, after checking it wrote to no permanent table (else it rolls back).

    A read-only PostgreSQL session (``read_only_session``: a plan-only run) keeps nothing, since nothing
    can be applied from it. PostgreSQL refuses every CREATE and DROP in a read-only transaction, temp
    tables included (DuckDB's read-only mode allows temp tables), so that plan's one transaction is
    opened READ WRITE for its temp tables only: it is checked to have written no row of a permanent
    table, and always rolled back, so the database is left exactly as it was."""
    kw = {"archived_write_years": archived_write_years, "archive_years": archive_years}
    if dialect_of(con) != "postgres":
        with rolled_back(con):
            return stage_and_classify(con, desired, **kw)
    read_only = read_only_session(con)
    if not keep or read_only:
        with con.transaction(force_rollback=True):
            if read_only:  # the transaction's first statement
                run(con, "SET TRANSACTION READ WRITE")
            return _staged_without_writes(con, desired, kw)
    import uuid  # noqa: PLC0415

    with con.transaction():
        plan = _staged_without_writes(con, desired, kw)
        if not plan.migrations:
            plan.session = uuid.uuid4().hex
            run(con, f"CREATE TEMP TABLE {SESSION_TABLE} AS SELECT CAST(? AS TEXT) AS key", [plan.session])
    return plan


def sha(obj: Any) -> str:
    """SHA-256 of canonical JSON (the fingerprint function)."""
    return _sha(obj)


def in_list(values: list) -> str:
    """``(?, ?, ...)`` for a parameterised IN list."""
    return _in(values)
