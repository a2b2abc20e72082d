"""Guarded writes (docs/ARCHITECTURE.md, “Guarded writes”): approve, apply in one transaction, verify. Writes only here.

``apply_plan`` follows docs/ARCHITECTURE.md "Guarded writes" step by step:

1. approval is required; ``auto`` only on a DuckDB target (a production target never auto-approves);
2. ONE transaction; on PostgreSQL ``pg_try_advisory_xact_lock(LOCK_KEY)`` (a second writer is
   refused, not queued); DuckDB is single-writer by its file lock;
3. re-plan inside the transaction (``plan.stage_and_classify``) and compare the fingerprint with
   ``approve``; a mismatch writes nothing;
4. pending migrations, if the plan is a migration plan, are applied and recorded;
5. transaction-local ``vespa.run_id``/``vespa.allowed_years`` and an ``applying`` ledger row (plus
   archive grants) in the same transaction, so the archive triggers let this run, and only this run,
   write the years it was granted;
6. pre-image backup into ``vespa_ops.backup_<table>`` (and the pre-images as Parquet in
   ``backup_dir``): whole rows for updates and deletes; an inserted row's pre-image is its absence,
   so it is recorded in the database by ``id`` and ``academic_year`` only (``INSERT_BACKUP``:
   what undo deletes and counts per year; at realistic scale a million inserted answers, whose
   full copy doubled the write); set-based
   merge from the staged rows (students first, then scores and answers resolved by email + year;
   a PostgreSQL table receiving a large share of its rows is loaded with its keys dropped and
   rebuilt in the same transaction, ``bulk_tables`` / vespa_lib.write.bulkload);
   statistics recomputed by a hook; archive markers; ledger completed; row counts compared with
   the plan: any difference raises and everything rolls back.

``VESPA_CRASH_AT=copy|merge|before_commit`` makes the process announce ``VESPA_CRASH_READY`` and
sleep at that point, so tests can SIGKILL an apply there (docs/ARCHITECTURE.md, “Quality bars” reliability).
Undo (``plan_undo``/``apply_undo``) reverses a run from its backup as its own guarded run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vespa_lib.errors import GuardRefused, ValidationFailed, VespaError
from vespa_lib.rules.years import year_bounds
from vespa_lib.write.bulkload import is_bulk, keys_rebuilt
from vespa_lib.write.classify import live_sql
from vespa_lib.write.migrations import ARCHIVED_TABLES, apply_pending
from vespa_lib.write.pgcopy import copy_out_batches
from vespa_lib.write.plan import (
    SPECS,
    Desired,
    Plan,
    archived_years,
    plan_changes,
    reuse_kept,
    stage_and_classify,
    timed,
)
from vespa_lib.write.planspec import sha
from vespa_lib.write.planstate import state_digest
from vespa_lib.write.protect import WRITERS_LOCK_KEY
from vespa_lib.write.schema import WORKBOOK_SCHEMA, dialect_of, table_columns, transaction
from vespa_lib.write.sql import checksum_expr, in_list, q, rolled_back, row_text_expr, run, scalar

__all__ = ["CRASH_ENV", "INSERT_BACKUP", "LOCK_KEY", "WRITERS_WAIT", "ApplyResult", "Verification", "apply_plan", "apply_undo", "bulk_tables", "plan_undo",
           "backup_rows", "close_run", "guarded_write", "mark_archived", "open_run", "snapshot_stats",
           "table_checksums", "verify", "write_transaction"]

LOCK_KEY = 0x56455350_41  # "VESPA": the one advisory lock every guarded run takes
WRITERS_WAIT = "60s"  # how long a guarded run waits for plain write transactions already under way
CRASH_ENV = "VESPA_CRASH_AT"
STATS_TABLES = ("school_statistics", "national_statistics")
OPS_SCHEMA = WORKBOOK_SCHEMA
INSERT_BACKUP = ("id", "academic_year")  # what the backup keeps of an inserted row (module docstring, step 6)
_SECRET_WORDS = ("password", "secret", "token", "dsn", "key", "credential")


@dataclass
class ApplyResult:
    """What a guarded run wrote: the plan it applied, actual counts, backup files."""

    run_id: str
    fingerprint: str
    plan: Plan
    applied: dict = field(default_factory=dict)
    migrations: list[dict] = field(default_factory=list)
    backup_files: list[str] = field(default_factory=list)
    status: str = "applied"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (plan.*, merge.*, ...)


def crash_point(name: str) -> None:
    """Test hook: announce and sleep at ``name`` when VESPA_CRASH_AT says so (killed there by tests)."""
    if os.environ.get(CRASH_ENV) == name:
        print(f"VESPA_CRASH_READY {name}", flush=True)
        sys.stdout.flush()
        time.sleep(600)


@contextmanager
def write_transaction(con: Any) -> Iterator[None]:
    """ONE transaction: commit on success, roll back and re-raise on any error."""
    with transaction(con):
        yield


def _check_approval(approve: str, dialect: str, target_kind: str | None) -> None:
    if not approve:
        raise GuardRefused("No approval given: nothing was written. Review the plan and pass "
                           "approve=<its fingerprint>.")
    if approve == "auto" and (dialect != "duckdb" or target_kind not in (None, "duckdb")):
        raise GuardRefused(f"approve='auto' refused for a {target_kind or dialect} target: automatic approval "
                           "is for DuckDB rehearsals only (docs/ARCHITECTURE.md, “Guarded writes”). Pass the reviewed plan's fingerprint.")


def _lock(con: Any) -> None:
    """The guarded runs' lock (a second run is refused), then the plain writers' lock, exclusively, for
    the whole transaction: a plain statement on a protected table waits until this run has committed
    or rolled back, and is then judged against what it archived (``protect.WRITERS_LOCK_KEY``). Plain
    transactions already under way are waited for, at most ``WRITERS_WAIT``."""
    if dialect_of(con) != "postgres":
        return
    if not scalar(con, "SELECT pg_try_advisory_xact_lock(?)", [LOCK_KEY]):
        raise GuardRefused("another guarded run holds the write lock (pg advisory lock "
                           f"{LOCK_KEY}): nothing was written. Wait for it to finish, then re-plan and apply.")
    previous = scalar(con, "SELECT current_setting('lock_timeout')")
    run(con, "SELECT set_config('lock_timeout', ?, true)", [WRITERS_WAIT])
    try:
        run(con, "SELECT pg_advisory_xact_lock(?)", [WRITERS_LOCK_KEY])
    except Exception as exc:  # psycopg's LockNotAvailable; the transaction rolls back either way
        if getattr(exc, "sqlstate", None) != "55P03":
            raise
        raise GuardRefused(f"plain writers kept transactions on the protected tables open for {WRITERS_WAIT}: "
                           "nothing was written. Find them with SELECT pid, state, xact_start FROM "
                           "pg_stat_activity WHERE state LIKE 'idle in transaction%', let them finish, then apply "
                           "again.") from exc
    run(con, "SELECT set_config('lock_timeout', ?, true)", [previous])


def _check_fingerprint(plan: Plan, approve: str) -> None:
    if approve != "auto" and approve != plan.fingerprint:
        raise GuardRefused(f"The plan changed since it was approved (approved {approve[:12]}…, now "
                           f"{plan.fingerprint[:12]}…): nothing was written. Re-plan, review, approve again.")


@contextmanager
def guarded_write(con: Any, *, approve: str, target_kind: str | None, replan: Callable[[], Any]) -> Iterator[Any]:
    """The guard's protocol around a write (steps 1-3 of the module docstring): the approval checked,
    ONE write transaction, the lock, ``replan()`` under the lock and its ``fingerprint`` compared with
    ``approve``. Yields the re-made plan; the block writes through ``open_run``, ``backup_rows``,
    ``snapshot_stats``, ``mark_archived`` and ``close_run``, and commits when it ends (any error rolls
    everything back). For writes other than a data plan: an undo, the year rollover."""
    _check_approval(approve, dialect_of(con), target_kind)
    with write_transaction(con):
        _lock(con)
        plan = replan()
        _check_fingerprint(plan, approve)
        yield plan


def _clean(parameters: dict | None) -> dict:
    """Parameters without secrets (docs/ARCHITECTURE.md, “Targets”): values of secret-looking names are dropped."""
    return {k: ("<removed>" if any(w in k.lower() for w in _SECRET_WORDS) else v)
            for k, v in (parameters or {}).items()}


def _json(con: Any) -> str:
    return "JSONB" if dialect_of(con) == "postgres" else "JSON"


def open_run(con: Any, run_id: str, info: dict, years: list[str], grants: list[str]) -> None:
    """Open run ``run_id`` inside the guarded transaction: the settings the archive triggers read, its
    ``applying`` ledger row (``info``: runbook, actor, parameters, target_kind, fingerprint; secrets
    removed) naming ``years``, and archive grants for ``grants``. Writes."""
    if dialect_of(con) == "postgres":
        run(con, "SELECT set_config('vespa.run_id', ?, true), set_config('vespa.allowed_years', ?, true)",
            [run_id, ",".join(grants)])
    run(con, f"INSERT INTO {OPS_SCHEMA}.ledger (run_id, runbook, actor, status, target, parameters, fingerprint, "
             f"years) VALUES (?, ?, ?, 'applying', ?, CAST(? AS {_json(con)}), ?, CAST(? AS {_json(con)}))",
        [run_id, info["runbook"], info["actor"], info.get("target_kind"), json.dumps(_clean(info.get("parameters")),
         default=str), info["fingerprint"], json.dumps(sorted(years))])
    for year in sorted(set(grants)):
        run(con, f"INSERT INTO {OPS_SCHEMA}.archive_grants (run_id, academic_year, granted_by) VALUES (?, ?, ?)",
            [run_id, year, info["actor"]])


def close_run(con: Any, run_id: str, counts: dict) -> None:
    """Complete run ``run_id``'s ledger row: ``applied``, finished now, with ``counts``. Writes."""
    run(con, f"UPDATE {OPS_SCHEMA}.ledger SET status = 'applied', finished_at = current_timestamp, "
             f"counts = CAST(? AS {_json(con)}) WHERE run_id = ?", [json.dumps(counts, default=str), run_id])


def _resolve_hook(recompute: Callable | None | bool) -> Callable | None:
    """``None``: statistics of the touched years (``default_statistics_hook``); ``False``: no recompute;
    a callable: ``hook(con, dialect, labels, establishment_ids)`` inside the transaction."""
    if recompute is False:
        return None
    if recompute is not None:
        return recompute
    return default_statistics_hook


def default_statistics_hook(con: Any, dialect: str, labels: list[str], establishment_ids: list | None) -> None:
    """Recompute school and national statistics for the benchmark years of the touched labels
    (docs/DOMAIN.md, “Academic years”: a calendar year ``Y/Y`` is counted in ``Y/Y+1``; misspelt labels are canonicalised)."""
    from vespa_lib.rules import stats, years  # noqa: PLC0415 - stats imports guard-free modules only

    wanted = set()
    for label in labels:
        try:
            canonical = years.canonical(label)
        except VespaError:
            continue  # a nonsense label has no statistics; the audit reports it (F11)
        wanted.add(years.benchmark_year(canonical) if years.is_calendar_label(canonical) else canonical)
    if wanted:
        stats.recompute_statistics(con, sorted(wanted), establishment_ids)


# --- backup --------------------------------------------------------------------------------------


def _backup_cols(con: Any, table: str) -> list[str]:
    backup = {c["name"] for c in table_columns(con, f"backup_{table}", OPS_SCHEMA)}
    return [c["name"] for c in table_columns(con, table) if c["name"] in backup]


def _extra_cols(con: Any, table: str) -> list[str]:
    """Production columns the workbook does not know (docs/DOMAIN.md, "Production schema"), kept in a
    pre-image's ``_extra`` so an undo puts them back as they were (PostgreSQL; DuckDB has none)."""
    if dialect_of(con) != "postgres":
        return []
    backup = {c["name"] for c in table_columns(con, f"backup_{table}", OPS_SCHEMA)}
    if "_extra" not in backup:
        return []
    return [c["name"] for c in table_columns(con, table) if c["name"] not in backup]


def _extra_value(table: str, column: str, alias: str = "b") -> str:
    """The typed value of an unknown column from a pre-image's ``_extra`` (SQL)."""
    return f"(jsonb_populate_record(NULL::{q(table)}, {alias}._extra)).{q(column)}"


def backup_rows(con: Any, run_id: str, table: str, where: str, params: list, op: str) -> int:
    """Copy live rows matching ``where`` into vespa_ops.backup_<table> as pre-images (of an insert:
    the row's id and year, ``INSERT_BACKUP``), unknown production columns in ``_extra``."""
    names = INSERT_BACKUP if op == "insert" else _backup_cols(con, table)
    extra = [] if op == "insert" else _extra_cols(con, table)
    cols = ", ".join(q(c) for c in names)
    into, select = cols, ", ".join(f"t.{q(c)}" for c in names)
    if extra:
        into += ", _extra"
        select += ", jsonb_build_object(" + ", ".join(f"'{c}', t.{q(c)}" for c in extra) + ")"
    return run(con, f"INSERT INTO {OPS_SCHEMA}.backup_{table} ({into}, _run_id, _op) SELECT {select}, ?, ? "
                    f"FROM {table} t WHERE {where}", [run_id, op, *params])[0][0]


def _reinsert_sql(con: Any, table: str) -> tuple[str, str]:
    """(target columns, select list over a pre-image ``b``) to re-insert deleted rows whole."""
    cols, extra = _backup_cols(con, table), _extra_cols(con, table)
    names = ", ".join(q(c) for c in cols + extra)
    select = ", ".join([f"b.{q(c)}" for c in cols] + [_extra_value(table, c) for c in extra])
    return names, select


def _planned_ids(spec_name: str, ops: tuple[str, ...]) -> str:
    return (f"t.id IN (SELECT lid FROM vespa_plan_{spec_name} WHERE refused IS NULL AND op IN "
            f"({', '.join(repr(o) for o in ops)}))")


def _inserted_ids(spec: Any) -> str:
    on = " AND ".join(f"l.{q(k)} = p.{q(k)}" for k in spec.keys)
    return (f"t.id IN (SELECT l.lid FROM ({live_sql(spec, list(spec.keys))}) l JOIN vespa_plan_{spec.name} p "
            f"ON {on} WHERE p.op = 'insert' AND p.refused IS NULL)")


def _write_parquet(con: Any, run_id: str, backup_dir: Path | None) -> list[str]:
    """Evidence copy of this run's pre-images (docs/ARCHITECTURE.md, “Guarded writes”: "a pre-image backup of every row about to
    change, inside the database and in the evidence folder"): the backup rows of updates and deletes,
    every value as text. Inserted rows had no pre-image: their ids stay in the database backup (what
    undo deletes) and their counts in the ledger; copying a million ids out cost 3 s of a realistic
    import's apply and 31 s at 10× for nothing the evidence needs. Set-based: ``COPY ... TO STDOUT`` streamed into Arrow batches on PostgreSQL
    (the per-row Python loop it replaces took 2.6 s for a realistic sync's backup rows), Arrow directly
    on DuckDB."""
    if backup_dir is None:
        return []
    backup_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for table in [s.name for s in SPECS] + list(STATS_TABLES) + ["academic_years"]:
        cols = [c["name"] for c in table_columns(con, f"backup_{table}", OPS_SCHEMA)]
        select = (f"SELECT {', '.join(f'CAST({q(c)} AS TEXT) AS {q(c)}' for c in cols)} "
                  f"FROM {OPS_SCHEMA}.backup_{table} WHERE _run_id = ? AND _op <> 'insert'")
        if dialect_of(con) == "postgres":  # streamed: never the whole backup in memory (10x: 11 M rows)
            batches = copy_out_batches(con, select, [run_id], cols)
        else:
            batches = iter(con.sql(select, params=[run_id]).to_arrow_table().to_batches())
        first = next((b for b in batches if b.num_rows), None)
        if first is None:
            continue
        path = backup_dir / f"backup_{table}.parquet"
        with pq.ParquetWriter(path, first.schema) as writer:
            writer.write_batch(first)
            for batch in batches:
                writer.write_batch(batch)
        files.append(str(path))
    return files


# --- merge ---------------------------------------------------------------------------------------


def _archived_expr(years: list[str]) -> tuple[str, list]:
    return (f"p.academic_year IN {in_list(years)}", list(years)) if years else ("false", [])


def _insert(con: Any, spec: Any, cols: list[str], marked: list[str], run_id: str) -> int:
    """Insert the planned rows from the plan table; on PostgreSQL the inserted rows are backed up by
    the same statement (``RETURNING``), so they need no second lookup by natural key."""
    expr, params = _archived_expr(marked)
    if spec.via_student:
        target = ["student_id", *(c for c in cols if c != "email")]
        values = ["s.id", *(f"p.{q(c)}" for c in cols if c != "email")]
        join = "JOIN students s ON s.email = p.email AND s.academic_year = p.academic_year"
    else:
        target, values, join = cols, [f"p.{q(c)}" for c in cols], ""
    insert = (f"INSERT INTO {spec.name} ({', '.join(q(c) for c in target)}, is_archived) "
              f"SELECT {', '.join(values)}, {expr.replace('d.', 'p.')} FROM vespa_plan_{spec.name} p {join} "
              "WHERE p.op = 'insert' AND p.refused IS NULL")
    if dialect_of(con) != "postgres":  # DuckDB has no DML in WITH: backed up by key afterwards
        n = run(con, insert, params)[0][0]
        backup_rows(con, run_id, spec.name, _inserted_ids(spec), [], "insert")
        return n
    backup = ", ".join(q(c) for c in INSERT_BACKUP)
    return run(con, f"WITH ins AS ({insert} RETURNING {backup}) INSERT INTO {OPS_SCHEMA}.backup_{spec.name} "
                    f"({backup}, _run_id, _op) SELECT {backup}, ?, 'insert' FROM ins", [*params, run_id])[0][0]


def _update(con: Any, spec: Any, cols: list[str]) -> int:
    compared = [c for c in cols if c not in spec.keys and not _duck_fk_column(con, spec, c)]
    if not compared:
        return 0
    sets = ", ".join(f"{q(c)} = p.{q(c)}" for c in compared)
    if spec.name == "students":
        sets += ", updated_at = current_timestamp"
    return run(con, f"UPDATE {spec.name} SET {sets} FROM vespa_plan_{spec.name} p "
                    f"WHERE {spec.name}.id = p.lid AND p.op = 'update' AND p.refused IS NULL")[0][0]


def _duck_fk_column(con: Any, spec: Any, column: str) -> bool:
    """DuckDB indexes FK columns and cannot update them on a referenced row (schema.py limits)."""
    return dialect_of(con) == "duckdb" and spec.name == "students" and column == "establishment_id"


def _refuse_duck_limits(con: Any, plan: Plan) -> None:
    if dialect_of(con) == "duckdb" and "establishment_id" in plan.changed_columns.get("students", []):
        raise GuardRefused("The plan moves existing students to another establishment, which DuckDB cannot do "
                           "in place (a foreign-key column of a referenced row): nothing was written. Apply this "
                           "change on PostgreSQL, or delete and re-import the students concerned.")


def _merge(con: Any, plan: Plan, run_id: str, marked: list[str], timings: dict[str, float],
           bulk: list[str] = (), archive: list[str] = (), early: dict[str, int] | None = None) -> dict:
    """Backups, then deletes (children first), inserts and updates (students first). Counts per table.

    Tables in ``bulk`` are updated first, then loaded with their keys rebuilt (vespa_lib.write.bulkload);
    their existing rows of the ``archive`` years are marked then too (counts into ``early``)."""
    early = {} if early is None else early
    # tables the planner found unchanged by digest have no plan table: nothing to back up or write
    present = [s for s in SPECS if s.name in plan.staged]
    applied: dict[str, dict[str, int]] = {t: dict.fromkeys(("insert", "update", "delete"), 0)
                                          for t in plan.counts_by_table if t not in plan.staged}
    applied.update({s.name: {} for s in present})
    with timed(timings, "backup"):
        for spec in present:
            backup_rows(con, run_id, spec.name, _planned_ids(spec.name, ("update",)), [], "update")
            backup_rows(con, run_id, spec.name, _planned_ids(spec.name, ("delete",)), [], "delete")
    with timed(timings, "merge.delete"):
        for spec in reversed(present):
            applied[spec.name]["delete"] = run(con, f"DELETE FROM {spec.name} WHERE id IN (SELECT lid FROM vespa_plan_"
                                                    f"{spec.name} WHERE op = 'delete' AND refused IS NULL)")[0][0]
    for spec in present:
        cols = plan.staged[spec.name]
        with timed(timings, f"merge.{spec.name}"):
            if spec.name not in bulk:
                applied[spec.name]["insert"] = _insert(con, spec, cols, marked, run_id)
                applied[spec.name]["update"] = _update(con, spec, cols)
                crash_point("merge")
                continue
            applied[spec.name]["update"] = _update(con, spec, cols)  # by id, while the key exists
            with keys_rebuilt(con, spec.name):
                if archive:  # the existing rows of the archived years: no index to maintain right now
                    early[spec.name] = _mark_rows(con, run_id, spec.name, archive)
                applied[spec.name]["insert"] = _insert(con, spec, cols, marked, run_id)
                crash_point("merge")  # killed here, with the keys dropped: the rollback restores them
    return applied


def bulk_tables(con: Any, plan: Plan, rows_before: dict[str, dict[str, int]] | None = None) -> list[str]:
    """Tables whose planned inserts use bulk-load mode (vespa_lib.write.bulkload): PostgreSQL only. Read-only.

    ``rows_before``: {table: {year: rows}} when the caller has counted them already."""
    if dialect_of(con) != "postgres":
        return []
    before = rows_before if rows_before is not None else _year_counts(con)
    return sorted(t for t, ops in _planned_totals(plan).items()
                  if is_bulk(ops["insert"], sum(before.get(t, {}).values())))


def _planned_totals(plan: Plan) -> dict:
    return {t: {op: sum(c[op] for c in years.values()) for op in ("insert", "update", "delete")}
            for t, years in plan.counts_by_table.items()}


def _year_counts(con: Any) -> dict:
    out = {}
    for spec in SPECS:
        rows = run(con, f"SELECT academic_year, count(*) FROM {spec.name} GROUP BY 1")
        out[spec.name] = {y: n for y, n in rows}
    return out


def _check_counts(plan: Plan, applied: dict, before: dict, after: dict) -> None:
    """docs/ARCHITECTURE.md, “Guarded writes”: row counts checked against the plan; any difference rolls everything back."""
    problems = [f"{t}.{op}: planned {n}, wrote {applied.get(t, {}).get(op)}"
                for t, ops in _planned_totals(plan).items() for op, n in ops.items() if applied.get(t, {}).get(op) != n]
    for table in before:
        for year in set(before[table]) | set(after[table]):
            cell = plan.counts_by_table.get(table, {}).get(year, {})
            expected = before[table].get(year, 0) + cell.get("insert", 0) - cell.get("delete", 0)
            if after[table].get(year, 0) != expected:
                problems.append(f"{table} {year}: expected {expected} rows after the run, found "
                                f"{after[table].get(year, 0)}")
    if problems:
        raise ValidationFailed(["row_counts"], "Row counts differ from the approved plan, so everything was rolled "
                               "back and nothing was written: " + "; ".join(problems) + ". Re-plan and investigate.")


# --- archive markers and statistics --------------------------------------------------------------


def snapshot_stats(con: Any, run_id: str, years: list[str]) -> None:
    """Back up the statistics of ``years`` for run ``run_id``: undo deletes those years' rows and
    restores these. Writes (backup tables)."""
    for table in STATS_TABLES:
        backup_rows(con, run_id, table, f"t.academic_year IN {in_list(years)}", list(years), "delete")


def _mark_rows(con: Any, run_id: str, table: str, years: list[str]) -> int:
    """Back up and mark archived the unmarked rows of ``years`` in one table. Writes."""
    where = f"t.academic_year IN {in_list(years)} AND NOT t.is_archived"
    if table not in STATS_TABLES:  # statistics pre-images are the whole-year snapshot
        # rows this run updated are backed up already (their pre-image); inserted rows arrive marked
        # NOT IN, not NOT EXISTS: a hashed subplan whatever the (stale, in-transaction) statistics say; an
        # anti-join planned on them looped over the run's backup rows per row (38 s at realistic scale)
        backup_rows(con, run_id, table, where + f" AND t.id NOT IN (SELECT b.id FROM {OPS_SCHEMA}.backup_{table} b "
                     "WHERE b._run_id = ? AND b._op = 'update')", [*years, run_id], "update")
    return run(con, f"UPDATE {table} SET is_archived = true WHERE academic_year IN {in_list(years)} "
                    "AND NOT is_archived", list(years))[0][0]


def mark_archived(con: Any, run_id: str, years: list[str], early: dict[str, int]) -> dict:
    """Set is_archived on every row of ``years`` (the years run ``run_id`` archives), pre-images backed
    up, and mark them archived in academic_years (inserting a missing row); returns rows marked per
    table. Writes.

    ``early``: rows already marked by ``_merge`` (bulk tables, marked while their keys were dropped)."""
    marked = dict(early)
    for table in ARCHIVED_TABLES:
        if table != "academic_years" and table not in early:
            marked[table] = _mark_rows(con, run_id, table, years)
    for year in years:
        where = "t.academic_year = ?"
        if backup_rows(con, run_id, "academic_years", where, [year], "update"):
            run(con, "UPDATE academic_years SET is_archived = true, is_current = false WHERE academic_year = ?", [year])
        else:
            start, end = year_bounds(year)
            run(con, "INSERT INTO academic_years (academic_year, start_date, end_date, is_current, is_archived) "
                     "VALUES (?, ?, ?, false, true)", [year, start, end])
            backup_rows(con, run_id, "academic_years", where, [year], "insert")
    return marked


def _changed_years(plan: Plan) -> list[str]:
    return sorted({y for years in plan.counts_by_table.values() for y, c in years.items()
                   if c["insert"] or c["update"] or c["delete"]})


# --- the protocol --------------------------------------------------------------------------------


def apply_plan(con: Any, desired: Desired, *, approve: str, run_id: str, runbook: str, actor: str,
               parameters: dict | None = None, target_kind: str | None = None,
               recompute: Callable | None | bool = None, archive_years: tuple | list = (),
               archived_write_years: tuple | list = (), backup_dir: Path | str | None = None,
               planned: Plan | None = None) -> ApplyResult:
    """Apply ``desired`` under the guard (docs/ARCHITECTURE.md, “Guarded writes”). Writes, in one transaction, or nothing.

    ``planned``: the plan this connection just made with ``plan_changes(keep=True)``; reused when it is
    still valid under the lock (``plan.reuse_kept``), else the guard re-plans."""
    dialect = dialect_of(con)
    _check_approval(approve, dialect, target_kind)
    hook = _resolve_hook(recompute)
    archive_years, write_years = sorted(archive_years), sorted(archived_write_years)
    info = {"runbook": runbook, "actor": actor, "parameters": parameters, "target_kind": target_kind or dialect}
    started = time.perf_counter()
    with write_transaction(con):
        _lock(con)
        reuse_started = time.perf_counter()
        plan = reuse_kept(con, planned, desired, approve=approve, archived_write_years=write_years,
                          archive_years=archive_years)
        if plan is not None:
            timings = {"plan.reused": round(time.perf_counter() - reuse_started, 4)}
        else:
            plan = stage_and_classify(con, desired, archived_write_years=write_years, archive_years=archive_years,
                                      on_chunk=lambda i: crash_point("copy"))
            timings = {f"plan.{k}": v for k, v in plan.timings.items()}
        _check_fingerprint(plan, approve)
        info["fingerprint"] = plan.fingerprint
        if plan.migrations:
            done = apply_pending(con, run_id)
            open_run(con, run_id, info, [], [])
            close_run(con, run_id, {"migrations": done})
            crash_point("before_commit")
            return ApplyResult(run_id, plan.fingerprint, plan, migrations=done)
        result = _apply_data(con, plan, run_id, info, hook, (archive_years, write_years), desired, timings)
        with timed(timings, "parquet"):
            result.backup_files = _write_parquet(con, run_id, Path(backup_dir) if backup_dir else None)
        crash_point("before_commit")
        commit_started = time.perf_counter()
    timings["commit"] = round(time.perf_counter() - commit_started, 4)
    timings["total"] = round(time.perf_counter() - started, 4)
    result.timings = timings
    return result


def _apply_data(con: Any, plan: Plan, run_id: str, info: dict, hook: Callable | None,
                years: tuple[list[str], list[str]], desired: Desired, timings: dict[str, float]) -> ApplyResult:
    """Steps 5-6 of the module docstring, inside the open transaction (``years``: archive, write)."""
    archive_years, write_years = years
    changed = _changed_years(plan)
    _refuse_duck_limits(con, plan)
    open_run(con, run_id, info, sorted(set(changed) | set(archive_years)), sorted(set(archive_years) | set(write_years)))
    with timed(timings, "check_counts"):  # a plan without changes writes no row: nothing to count (docs/ARCHITECTURE.md, “Quality bars”)
        before = _year_counts(con) if not plan.is_empty else None
    marked_years = sorted(set(archive_years) | set(archived_years(con)))
    stats_years = sorted((set(changed) if hook else set()) | set(archive_years))
    if stats_years:
        with timed(timings, "backup"):
            snapshot_stats(con, run_id, stats_years)
    bulk = bulk_tables(con, plan, before) if before is not None else []
    early: dict[str, int] = {}
    applied = _merge(con, plan, run_id, marked_years, timings, bulk, archive_years, early)
    with timed(timings, "statistics"):
        if hook is not None and changed:
            hook(con, dialect_of(con), sorted(set(changed) | set(archive_years)), desired.establishment_ids)
    with timed(timings, "archive_markers"):
        marked = mark_archived(con, run_id, archive_years, early) if archive_years else {}
    with timed(timings, "check_counts"):
        _check_counts(plan, applied, before or {}, _year_counts(con) if before is not None else {})
    for table, n in plan.extra.get("mark", {}).items():
        if marked.get(table) != n:
            raise ValidationFailed(["archive_markers"], f"{table}: planned to mark {n} rows archived, marked "
                                   f"{marked.get(table)}; everything was rolled back. Re-plan and investigate.")
    counts = {"plan": plan.counts(), "applied": applied, "marked": marked, "statistics_years": stats_years,
              "archive_years": archive_years, "bulk_tables": bulk,
              "scope_years": plan.scope.get("years", [])}  # a scope year without a plan cell holds no row
    close_run(con, run_id, counts)
    return ApplyResult(run_id, plan.fingerprint, plan, applied=counts)


@dataclass
class Verification(Plan):
    """The re-plan after a commit (docs/ARCHITECTURE.md, “Guarded writes”). Empty only when nothing would be written AND nothing
    was refused: a refused row differs from the source in a year this run may not write (a plain
    write that slipped into an archived year, say), so the target does not hold the source."""

    @property
    def refused(self) -> int:
        return sum(c.get("refused", 0) for years in self.counts_by_table.values() for c in years.values())

    @property
    def is_empty(self) -> bool:
        return Plan.is_empty.fget(self) and not self.refused


def verify(con: Any, desired: Desired, *, archived_write_years: tuple | list = ()) -> Verification:
    """docs/ARCHITECTURE.md, “Guarded writes”: re-plan after commit; ``is_empty`` (no change, no refused row) is expected. Read-only."""
    plan = plan_changes(con, desired, archived_write_years=archived_write_years)
    return Verification(**{f.name: getattr(plan, f.name) for f in fields(plan)})


def table_checksums(con: Any, tables: list[str] | tuple[str, ...], schema: str = "public") -> dict[str, str]:
    """Order-independent md5 of every row of each table (all columns, known or not). Read-only."""
    out = {}
    for table in tables:
        name = table if schema == "public" else f"{schema}.{table}"
        out[table] = scalar(con, f"SELECT {checksum_expr([row_text_expr(con, table, 't', schema)])} FROM {name} t")
    return out



# --- undo (docs/ARCHITECTURE.md, “Guarded writes”) -------------------------------------------------------------------------

_NEVER_UPDATED = {"id", "email", "academic_year", "student_id", "cycle", "question_id"}  # keys stay put
_UNDO_TABLES = ("students", "vespa_scores", "question_responses", "academic_years")


def _ledger(con: Any, run_id: str) -> tuple[str, dict]:
    row = run(con, f"SELECT status, CAST(counts AS TEXT) FROM {OPS_SCHEMA}.ledger WHERE run_id = ?", [run_id])
    if not row:
        raise GuardRefused(f"No guarded run {run_id!r} in the ledger: nothing to undo. List runs in vespa_ops.ledger.")
    if row[0][0] != "applied":
        raise GuardRefused(f"Run {run_id!r} has status {row[0][0]!r}: only an applied run can be undone.")
    return row[0][0], json.loads(row[0][1] or "{}")


def _backup_of(table: str, op: str) -> str:
    """This run's backup rows of one operation; the run id is the statement's ``?`` parameter."""
    return f"(SELECT * FROM {OPS_SCHEMA}.backup_{table} WHERE _run_id = ? AND _op = '{op}')"


def _undo_counts(con: Any, run_id: str, stats_years: list[str]) -> dict:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    bk = f"{OPS_SCHEMA}.backup_"
    for table in _UNDO_TABLES:
        queries = {
            "delete": f"SELECT b.academic_year, count(*) FROM {bk}{table} b JOIN {table} t ON t.id = b.id "
                      "WHERE b._run_id = ? AND b._op = 'insert' GROUP BY 1",
            "update": f"SELECT b.academic_year, count(*) FROM {bk}{table} b JOIN {table} t ON t.id = b.id "
                      "WHERE b._run_id = ? AND b._op = 'update' GROUP BY 1",
            "insert": f"SELECT b.academic_year, count(*) FROM {bk}{table} b WHERE b._run_id = ? AND b._op = 'delete' "
                      f"AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = b.id) GROUP BY 1"}
        for op, sql in queries.items():
            for year, n in run(con, sql, [run_id]):
                cell = counts.setdefault(table, {}).setdefault(year, dict.fromkeys(
                    ("insert", "update", "unchanged", "delete", "refused"), 0))
                cell[op] += n
    for table in STATS_TABLES if stats_years else ():
        for op, sql in {"delete": f"SELECT academic_year, count(*) FROM {table} WHERE academic_year IN "
                                  f"{in_list(stats_years)} GROUP BY 1",
                        "insert": f"SELECT academic_year, count(*) FROM {bk}{table} WHERE academic_year IN "
                                  f"{in_list(stats_years)} AND _run_id = ? AND _op = 'delete' GROUP BY 1"}.items():
            params = [*stats_years, run_id] if op == "insert" else list(stats_years)
            for year, n in run(con, sql, params):
                counts.setdefault(table, {}).setdefault(year, dict.fromkeys(
                    ("insert", "update", "unchanged", "delete", "refused"), 0))[op] += n
    return counts


def _undo_plan(con: Any, run_id: str) -> Plan:
    _, counts = _ledger(con, run_id)
    stats_years = counts.get("statistics_years", [])
    plan_counts = _undo_counts(con, run_id, stats_years)
    years = sorted({y for t in plan_counts.values() for y in t} | set(stats_years)) or ["0000/0000"]
    backups = {t: scalar(con, f"SELECT {checksum_expr([row_text_expr(con, 'backup_' + t, 'b', OPS_SCHEMA)])} "
                              f"FROM {OPS_SCHEMA}.backup_{t} b WHERE b._run_id = ?", [run_id])
               for t in (*_UNDO_TABLES, *STATS_TABLES)}
    state = state_digest(con, years)
    state.update({t: scalar(con, f"SELECT {checksum_expr([row_text_expr(con, t, 't')])} FROM {t} t "
                                 f"WHERE t.academic_year IN {in_list(years)}", years) for t in STATS_TABLES})
    scope = {"undo_of": run_id, "years": years, "statistics_years": stats_years}
    fingerprint = sha({"undo": run_id, "counts": plan_counts, "backups": backups, "state": state})
    return Plan(plan_counts, {}, {}, {}, [], fingerprint, scope, kind="undo")


def plan_undo(con: Any, run_id: str) -> Plan:
    """What undoing ``run_id`` would change (delete its inserts, restore its pre-images). Read-only."""
    with rolled_back(con):
        return _undo_plan(con, run_id)


def _restore(con: Any, run_id: str, table: str) -> None:
    cols = _backup_cols(con, table)
    duck_fk = {"establishment_id"} if dialect_of(con) == "duckdb" and table == "students" else set()
    sets = ", ".join([f"{q(c)} = b.{q(c)}" for c in cols if c not in _NEVER_UPDATED | duck_fk]
                     + [f"{q(c)} = {_extra_value(table, c)}" for c in _extra_cols(con, table)])
    run(con, f"UPDATE {table} SET {sets} FROM {_backup_of(table, 'update')} b WHERE {table}.id = b.id", [run_id])
    names, select = _reinsert_sql(con, table)
    run(con, f"INSERT INTO {table} ({names}) SELECT {select} FROM {_backup_of(table, 'delete')} b "
             f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = b.id)", [run_id])


def _undo_writes(con: Any, run_id: str, stats_years: list[str]) -> None:
    """Statistics snapshot back; inserted rows deleted (children first); pre-images restored."""
    if dialect_of(con) == "duckdb" and scalar(con, f"SELECT count(*) FROM {OPS_SCHEMA}.backup_students "
                                                   "WHERE _run_id = ? AND _op = 'insert'", [run_id]):
        raise GuardRefused(f"Undo of {run_id!r} would delete students it inserted together with their scores, which "
                           "DuckDB cannot do in one transaction (foreign-key limitation): nothing was written. "
                           "Restore the DuckDB file from the audit's backup instead, or undo on PostgreSQL.")
    if stats_years:
        for table in STATS_TABLES:
            run(con, f"DELETE FROM {table} WHERE academic_year IN {in_list(stats_years)}", stats_years)
            names, select = _reinsert_sql(con, table)
            run(con, f"INSERT INTO {table} ({names}) SELECT {select} FROM {_backup_of(table, 'delete')} b", [run_id])
    for table in ("question_responses", "vespa_scores", "students", "academic_years"):
        run(con, f"DELETE FROM {table} WHERE id IN (SELECT id FROM {_backup_of(table, 'insert')} b)", [run_id])
    for table in _UNDO_TABLES:
        _restore(con, run_id, table)


def apply_undo(con: Any, run_id: str, *, approve: str, undo_run_id: str, actor: str,
               target_kind: str | None = None) -> ApplyResult:
    """Reverse ``run_id`` as its own guarded run (lock, fingerprint, ledger row, grants). Writes."""
    with guarded_write(con, approve=approve, target_kind=target_kind, replan=lambda: _undo_plan(con, run_id)) as plan:
        info = {"runbook": "undo", "actor": actor, "parameters": {"undo_of": run_id},
                "target_kind": target_kind or dialect_of(con), "fingerprint": plan.fingerprint}
        years = plan.scope["years"]
        open_run(con, undo_run_id, info, years, years)
        _undo_writes(con, run_id, plan.scope["statistics_years"])
        run(con, f"UPDATE {OPS_SCHEMA}.ledger SET status = 'undone' WHERE run_id = ?", [run_id])
        close_run(con, undo_run_id, {"plan": plan.counts(), "undo_of": run_id})
        crash_point("before_commit")
    return ApplyResult(undo_run_id, plan.fingerprint, plan, applied={"undo_of": run_id})
