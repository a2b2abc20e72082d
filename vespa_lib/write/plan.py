"""Plan a guarded write (docs/ARCHITECTURE.md, “Guarded writes”): what applying desired rows would change. Read-only.

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

The parts live beside it: ``planspec`` (table specs, ``Desired``, ``Plan``, the fingerprint),
``classify`` (staging, the no-op fast path, classification, summaries), ``planstate`` (what the
fingerprint binds in the live database), ``plankeep`` (a plan kept for the guard), ``sql`` and
``pgcopy`` (SQL and COPY helpers). The names callers plan with are re-exported here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vespa_lib.errors import VespaError
from vespa_lib.ops import progress
from vespa_lib.write import classify as cl
from vespa_lib.write.migrations import pending
from vespa_lib.write.plankeep import SESSION_TABLE, reuse_kept
from vespa_lib.write.planspec import (
    OPS,
    SPEC_BY_NAME,
    SPECS,
    Desired,
    Plan,
    TableSpec,
    fingerprint,
    scope_of,
    sha,
)
from vespa_lib.write.planstate import live_binding
from vespa_lib.write.schema import dialect_of, table_columns
from vespa_lib.write.sql import read_only_session, rolled_back, run

__all__ = ["OPS", "SPECS", "SPEC_BY_NAME", "Desired", "Plan", "TableSpec", "archived_years", "plan_changes",
           "read_only_session", "reuse_kept", "stage_and_classify", "timed"]


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[phase]`` (benchmarks read them; docs/ARCHITECTURE.md, “Quality bars”)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - start, 4)


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
    dialect = dialect_of(con)
    scope = scope_of(desired, archive_years, archived_write_years)
    if dialect == "postgres":  # whatever plan tables this replaces are no longer a kept plan
        run(con, f"DROP TABLE IF EXISTS {SESSION_TABLE}")
    migrations = [m.describe() for m in pending(con)]
    if migrations:
        digest = {"migrations": migrations, "scope": scope}
        return Plan({}, {}, {}, {}, migrations, sha(digest), scope, kind="migrations")
    locked = [y for y in archived_years(con) if y not in archived_write_years]
    cl.session_settings(con)
    counts, changed, samples, reasons, changes, staged = {}, {}, {}, {}, {}, {}
    timings: dict[str, float] = {}
    for spec in progress.bar([s for s in SPECS if s.name in desired.tables], desc="Planning", unit="table"):
        with timed(timings, f"unique.{spec.name}"):
            cl.check_unique(desired, spec)
            changes[spec.name] = cl.desired_facts(desired, spec)["digest"]
        with timed(timings, f"fast.{spec.name}"):
            split = cl.fast_split(con, spec, desired)
            proven, rest = split.proven, split.rest
        if proven and not rest.num_rows and not desired.allow_delete:  # the result classification would give
            counts[spec.name], changed[spec.name], samples[spec.name] = cl.with_unchanged({}, proven), [], []
            reasons[spec.name] = {}
            if spec.name == "students":
                cl.empty_student_plan(con)
            continue
        with timed(timings, f"stage.{spec.name}"):  # only the groups not proven unchanged
            cols = staged[spec.name] = cl.stage(con, dialect, spec, rest, on_chunk)
            if desired.allow_delete:
                cl.stage_groups(con, spec, split.groups)
        with timed(timings, f"classify.{spec.name}"):
            cl.classify_rows(con, spec, cols, desired, locked, cl.years_of(rest))
        with timed(timings, f"summarise.{spec.name}"):
            counts[spec.name] = cl.with_unchanged(cl.count_ops(con, spec), proven)
            changed[spec.name] = cl.changed_columns(con, spec, cols)
            samples[spec.name] = cl.sample_updates(con, spec, cols, changed[spec.name])
            reasons[spec.name] = dict(run(con, f"SELECT refused, count(*) FROM vespa_plan_{spec.name} "
                                               "WHERE refused IS NOT NULL GROUP BY 1 ORDER BY 1"))
    with timed(timings, "state_digest"):
        extra, state = live_binding(con, counts, scope, set(staged))
    bound = fingerprint(changes, counts, changed, reasons, state, scope, extra)
    return Plan(counts, changed, samples, reasons, [], bound, scope, extra=extra, staged=staged,
                timings=timings)


def _row_writes(con: Any) -> dict[str, int]:
    """This backend's not yet reported row writes per permanent table. They include earlier
    transactions' (statistics are reported lazily), so callers compare two readings in one
    transaction: nothing is reported while a transaction is open."""
    return {r[0]: int(r[1]) for r in run(con, "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + "
                                              "n_tup_del FROM pg_stat_xact_user_tables "
                                              "WHERE schemaname !~ '^pg_temp'")}


def _staged_without_writes(con: Any, desired: Desired, kw: dict) -> Plan:
    """``stage_and_classify`` in the open PostgreSQL transaction, refused (raised, so the transaction rolls
    back) if it wrote a row of any permanent table: only temp tables may be written while planning."""
    before = _row_writes(con)
    plan = stage_and_classify(con, desired, **kw)
    wrote = sorted(t for t, n in _row_writes(con).items() if n > before.get(t, 0))
    if wrote:
        raise VespaError(f"Planning wrote to {wrote}, so it was rolled back: planning must be read-only. "
                         "This is a bug in vespa_lib.write.plan; report it with the plan's parameters.")
    return plan


def plan_changes(con: Any, desired: Desired, *, archived_write_years: tuple | list = (),
                 archive_years: tuple | list = (), keep: bool = False) -> Plan:
    """Plan applying ``desired`` (docs/ARCHITECTURE.md, “Guarded writes”). Read-only: staging is rolled back.

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
    with con.transaction():
        plan = _staged_without_writes(con, desired, kw)
        if not plan.migrations:
            plan.session = uuid.uuid4().hex
            run(con, f"CREATE TEMP TABLE {SESSION_TABLE} AS SELECT CAST(? AS TEXT) AS key", [plan.session])
    return plan
