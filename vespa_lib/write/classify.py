"""Stage desired rows and classify them against the live tables (docs/ARCHITECTURE.md "Guarded writes").

The steps ``plan.stage_and_classify`` runs per table, inside the caller's transaction: the desired
rows' facts (digest, repeated keys), the no-op fast path (student groups proven unchanged are not
staged), staging into temp tables (DuckDB: from Arrow; PostgreSQL: ``COPY``), the set-based
classification with ``IS DISTINCT FROM`` into ``vespa_plan_<table>``, and the summaries a plan shows.
Read-only on the live tables; writes temp tables only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vespa_lib.errors import ValidationFailed
from vespa_lib.ops.privacy import mask_email
from vespa_lib.sources import duckwork
from vespa_lib.write.pgcopy import copy_in, copy_out, copy_out_reader
from vespa_lib.write.planspec import OPS, Desired, TableSpec
from vespa_lib.write.rowdigest import unchanged_groups
from vespa_lib.write.schema import dialect_of
from vespa_lib.write.sql import in_list, q, run

__all__ = ["FAST_NOOP", "changed_columns", "check_unique", "classify_rows", "count_ops", "desired_facts",
           "empty_student_plan", "fast_split", "live_sql", "sample_updates", "session_settings", "stage",
           "stage_groups", "with_unchanged", "years_of"]

SAMPLE_ROWS = 5


# --- staging -------------------------------------------------------------------------------------


def _stage_columns(spec: TableSpec, table: pa.Table) -> list[str]:
    names = set(table.column_names)
    missing = [k for k in spec.keys if k not in names]
    if missing:
        raise ValidationFailed(["desired_keys"], f"Desired {spec.name} rows lack key columns {missing}: "
                               "build them with vespa_lib.rules.rows.")
    return [*spec.keys, *(c for c in spec.compared if c in names)]


def stage(con: Any, dialect: str, spec: TableSpec, table: pa.Table, on_chunk: Any = None) -> list[str]:
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


def check_unique(desired: Desired, spec: TableSpec) -> None:
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
    where = f" WHERE t.academic_year IN {in_list(years) if years else '(NULL)'}" if years is not None else ""
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


def classify_rows(con: Any, spec: TableSpec, cols: list[str], desired: Desired, locked: list[str],
              staged_years: list[str] | None = None) -> None:
    """Create ``vespa_plan_<table>``: one row per desired key (and per delete) with op, refusal, flags
    and the desired values, so the merge, digest and samples read this one table (no re-join).

    ``staged_years``: the years of the staged rows; only live rows of those years can match a key, so
    the live side is read for them only (half the answers table or less, docs/ARCHITECTURE.md, “Quality bars”)."""
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


def _plan_deletes(con: Any, spec: TableSpec, cols: list[str], desired: Desired) -> None:
    """Live rows of the scope's years and establishments that the desired set lacks (F16: scope only).

    Nothing is deleted in the student groups proven unchanged (``vespa_proven_<table>``, from
    ``stage_groups``): their rows are desired although not staged."""
    keys = ", ".join(q(k) for k in spec.keys)
    on = " AND ".join(f"d.{q(k)} = l.{q(k)}" for k in spec.keys)
    years = list(desired.years)
    where, params = f"l.academic_year IN {in_list(years) if years else '(NULL)'}", years
    if desired.establishment_ids is not None:
        where += f" AND CAST(l.l_est AS TEXT) IN {in_list(desired.establishment_ids) if desired.establishment_ids else '(NULL)'}"
        params += [str(e) for e in desired.establishment_ids]
    run(con, f"INSERT INTO vespa_plan_{spec.name} ({keys}, lid, l_est, op) "
             f"SELECT {', '.join('l.' + q(k) for k in spec.keys)}, l.lid, CAST(l.l_est AS TEXT), 'delete' "
             f"FROM ({live_sql(spec, cols)}) l WHERE {where} "
             f"AND NOT EXISTS (SELECT 1 FROM vespa_stage_{spec.name} d WHERE {on}) "
             f"AND NOT EXISTS (SELECT 1 FROM vespa_proven_{spec.name} g WHERE g.email = l.email "
             "AND g.academic_year = l.academic_year)", params)


def stage_groups(con: Any, spec: TableSpec, groups: pa.Table | None) -> None:
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
    cases = [f"WHEN academic_year NOT IN {in_list(desired.years)} THEN 'outside_year_scope'"]
    if desired.establishment_ids is not None:
        ests = [str(e) for e in desired.establishment_ids] or [""]
        cases.append(f"WHEN coalesce(d_est, l_est, '') NOT IN {in_list(ests)} "
                     f"OR coalesce(l_est, d_est, '') NOT IN {in_list(ests)} THEN 'outside_establishment_scope'")
        params += ests + ests
    if locked_years:
        cases.append(f"WHEN academic_year IN {in_list(locked_years)} THEN 'archived_year'")
        params += locked_years
    if spec.via_student:
        cases.append("WHEN lid IS NULL AND NOT has_student THEN 'no_student'")
    return f"CASE {' '.join(cases)} END", params


# --- summarising ---------------------------------------------------------------------------------


def count_ops(con: Any, spec: TableSpec) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for year, op, refused, n in run(con, f"SELECT academic_year, op, refused IS NOT NULL, count(*) "
                                         f"FROM vespa_plan_{spec.name} GROUP BY 1, 2, 3"):
        cell = out.setdefault(year, dict.fromkeys(OPS, 0))
        cell["refused" if refused else op] += n
    return out


def changed_columns(con: Any, spec: TableSpec, cols: list[str]) -> list[str]:
    compared = [c for c in cols if c not in spec.keys]
    if not compared:
        return []
    sums = ", ".join(f"sum(CASE WHEN {q('ch_' + c)} THEN 1 ELSE 0 END)" for c in compared)
    row = run(con, f"SELECT {sums} FROM vespa_plan_{spec.name} WHERE op = 'update' AND refused IS NULL")[0]
    return [c for c, n in zip(compared, row, strict=True) if n]


def sample_updates(con: Any, spec: TableSpec, cols: list[str], changed: list[str]) -> list[dict]:
    """A few updates with before/after of the changed columns; emails masked (docs/ARCHITECTURE.md, “Evidence and privacy”)."""
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


def with_unchanged(counts: dict[str, dict[str, int]], proven: dict[str, int]) -> dict[str, dict[str, int]]:
    """Classified counts plus the rows proven unchanged (a year may be partly proven, partly staged)."""
    for year, n in proven.items():
        counts.setdefault(year, dict.fromkeys(OPS, 0))["unchanged"] += n
    return counts


# --- no-op fast path (docs/ARCHITECTURE.md, “Quality bars”: a re-run that finds nothing to do ≤ 5 s) ----------------------
# The live rows of the desired years are read once (COPY out) and compared with the desired rows per
# student group (academic_year, email) in DuckDB; only the groups that differ are staged and
# classified. With deletes, the proven groups are staged as keys only, so no row of theirs is deleted.

FAST_NOOP = True  # tests switch it off to prove the fast path plans exactly what classification plans


def _live_rows(con: Any, spec: TableSpec, cols: list[str], years: list[str]
               ) -> tuple[pa.Table | pa.RecordBatchReader, pa.Table | None]:
    """The live rows of ``years`` projected on the staged columns, as text, and for scores and answers
    the (student_id, email) pairs their ``student_id`` resolves through (None: rows carry the email).
    Read-only.

    PostgreSQL: a stream of Arrow batches over one ``COPY ... TO STDOUT`` (docs/ARCHITECTURE.md, “Targets”: bulk reads
    over COPY; never all in memory, docs/ARCHITECTURE.md “Quality bars”), to be read once; scores and answers carry their
    ``student_id``, which the reader resolves to emails in DuckDB (no join per row in Python); dates
    rendered ISO whatever the server's DateStyle; NULL unquoted, empty text quoted."""
    join = "JOIN students s ON s.id = t.student_id " if spec.via_student else ""
    exprs = [(f"s.{q(c)}" if spec.via_student and c == "email" else f"t.{q(c)}") for c in cols]
    if dialect_of(con) == "duckdb":
        select = ", ".join(f"{e} AS {q(c)}" for e, c in zip(exprs, cols, strict=True))
        return con.sql(f"SELECT {select} FROM {spec.name} t {join}WHERE t.academic_year IN {in_list(years)}",
                       params=years).to_arrow_table(), None
    names = [("student_id" if spec.via_student and c == "email" else c) for c in cols]
    exprs = ["t.student_id" if n == "student_id" else e for n, e in zip(names, exprs, strict=True)]
    select = ", ".join(f"to_char({e}, 'YYYY-MM-DD')" if spec.types.get(c) == "DATE" else f"CAST({e} AS TEXT)"
                       for e, c in zip(exprs, names, strict=True))
    live = copy_out_reader(con, f"SELECT {select} FROM {spec.name} t WHERE t.academic_year IN {in_list(years)}",
                           years, names)
    if not spec.via_student:
        return live, None
    return live, copy_out(con, "SELECT CAST(id AS TEXT), email FROM students", [], ["student_id", "email"])


def _unchanged_groups(con: Any, spec: TableSpec, table: pa.Table) -> tuple[dict[str, int], pa.Table, pa.Table | None]:
    """({year: rows proven unchanged}, desired rows left to stage, proven groups): the student groups
    (year, email) whose live rows are exactly their desired rows are unchanged and need no staging.
    Read-only. A proven group can produce no delete either: all its live rows are desired."""
    cols = _stage_columns(spec, table)
    years = years_of(table)
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


def fast_split(con: Any, spec: TableSpec, desired: Desired) -> _Split:
    """By student group, with or without deletes (a proven group's live rows are all desired)."""
    table = desired.tables[spec.name]
    if not FAST_NOOP:
        return _Split({}, table, None)
    proven, rest, groups = _unchanged_groups(con, spec, table)
    return _Split(proven, rest, groups)


def years_of(table: pa.Table) -> list[str]:
    """The distinct academic years of Arrow rows (as text), sorted."""
    import pyarrow.compute as pc  # noqa: PLC0415

    return sorted(y for y in pc.unique(pc.cast(table["academic_year"], pa.string())).to_pylist() if y is not None)


def empty_student_plan(con: Any) -> None:
    """The students plan table the score/answer classification joins, empty: no student changes."""
    run(con, "DROP TABLE IF EXISTS vespa_plan_students")
    run(con, "CREATE TEMP TABLE vespa_plan_students (email TEXT, academic_year TEXT, lid BIGINT, d_est TEXT, "
             "op TEXT, refused TEXT)")


# Hash joins and aggregates over a million staged rows spill to disk in batches at the default 4 MB;
# transaction-local, so it ends with the plan's or the apply's transaction.
WORK_MEM = "128MB"


def session_settings(con: Any) -> None:
    """``work_mem`` for this transaction's plan or apply (PostgreSQL; nothing on DuckDB)."""
    if dialect_of(con) == "postgres":
        run(con, "SELECT set_config('work_mem', ?, true)", [WORK_MEM])
