"""The import runbook's orchestration (SPEC.md §6.3, §7): preflight, rows, rehearsal, plan, apply,
verify, reconcile. ``notebooks/import.ipynb`` calls these one step per cell.

    open_import(target, read_only)        a connection the guard can plan (and apply) on
    preflight(snapshot_dir, target)       the csv_profile blockers and fallbacks (read-only)
    import_rows(...)                      the year's rows and quarantine (vespa_lib.rows; read-only)
    desired_for(rows, con, year, scope)   the guard's Desired: the year's labels, the F16 scope
    rehearse(...)                         a sample planned; on DuckDB applied to a throw-away copy
    plan_import / apply_import            the guarded write (migrations first, then data)
    reconcile(con, desired)               source against target key by key (read-only)

Only ``apply_import`` (and ``rehearse`` on its throw-away copy) writes, and only through
``vespa_lib.guard``: pending migrations are applied as their own guarded run (run id ``<id>-m``),
then the data plan is applied with statistics recomputed and the quarantine stored in
``vespa_ops.quarantine`` inside the same transaction. Refusals come back as an ``ImportOutcome``
with the reason (nothing written), so the runbook records a failed check instead of crashing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vespa_lib import guard, privacy, stats, targets, years
from vespa_lib import plan as planmod
from vespa_lib import rows as rowsmod
from vespa_lib.errors import GuardRefused, ParameterError, VespaError
from vespa_lib.profile import Profile, profile_snapshot
from vespa_lib.schema import WORKBOOK_SCHEMA, dialect_of
from vespa_lib.snapshot import Snapshot, open_snapshot

__all__ = ["RUNBOOK", "ImportOutcome", "Rehearsal", "actor", "applied_matches_plan", "archive_labels",
           "check_parameters", "reconciled", "verify_frame", "apply_import", "desired_for", "import_rows",
           "open_import", "plan_frame", "plan_import", "preflight", "quarantine_frame", "reconcile",
           "rehearse", "rule_frame", "sample_rows", "samples_frame", "totals", "write_quarantine"]

RUNBOOK = "import"
TABLES = ("students", "vespa_scores", "question_responses")
CHANGING = ("insert", "update", "delete")


@dataclass
class ImportOutcome:
    """What an apply step did: ``applied``, ``migrated`` (data awaits approval), ``nothing`` or ``refused``."""

    status: str
    reason: str = ""
    result: guard.ApplyResult | None = None
    migrations: list[dict] = field(default_factory=list)
    plan: planmod.Plan | None = None  # the data plan current after this step


@dataclass
class Rehearsal:
    """A sample's plan (and, on DuckDB, its apply on a throw-away copy and the re-plan after it)."""

    students: int
    counts: pd.DataFrame
    applied: bool
    verified: bool | None
    note: str


def check_parameters(mode: str, approve: str, target: str) -> None:
    """Refuse a bad mode, or ``auto`` approval of a non-DuckDB target, before any work (SPEC.md §7.2)."""
    if mode not in ("plan", "apply"):
        raise ParameterError(f"mode must be 'plan' or 'apply', got {mode!r}: plan first, then apply with approval.")
    if approve == "auto" and targets.parse_target(target).kind != "duckdb":
        raise ParameterError("approve='auto' is for DuckDB rehearsal targets only (SPEC.md §7.2): nothing was "
                             "planned or written. Run mode=plan, review the plan and pass its fingerprint.")


def actor() -> str:
    """Who runs this (recorded in the ledger): ``VESPA_ACTOR``, else the login name."""
    return os.environ.get("VESPA_ACTOR") or getpass.getuser()


def open_import(target: str, *, read_only: bool = False) -> targets.Target:
    """Open ``target`` for the import. Planning stages temp tables, so PostgreSQL needs a writable
    session even for a plan (it is always rolled back). Supabase REST cannot be written (SPEC.md §4)."""
    spec = targets.parse_target(target)
    if spec.kind == "supabase":
        raise ParameterError("The import writes over PostgreSQL, never REST (SPEC.md §4): name a "
                             "postgres:ENV_VAR target holding the session-mode connection string.")
    return targets.open_target(spec, read_only=read_only and spec.kind == "duckdb")


def preflight(snapshot_dir: str | Path, target: targets.Target) -> tuple[Snapshot, Profile]:
    """Open the snapshot and profile it against the target (the csv_profile blockers). Read-only."""
    snap = open_snapshot(snapshot_dir)
    return snap, profile_snapshot(snap, db=target)


def import_rows(snap: Snapshot, academic_year: str, target: targets.Target, *, convert_q29_percentage: bool,
                establishment_scope: list[str] | None) -> rowsmod.ImportRows:
    """The year's rows by the rule chains (``vespa_lib.rows.build_rows``). Read-only."""
    return rowsmod.build_rows(snap, academic_year, target, convert_q29_percentage=convert_q29_percentage,
                              establishment_scope=establishment_scope or None)


def rule_frame(rows: rowsmod.ImportRows) -> pd.DataFrame:
    """Rule-chain outcomes as (chain, outcome, count): which rule decided how many rows."""
    out = []
    for key, n in sorted(rows.rule_counts.items()):
        chain, _, outcome = key.rpartition(".") if "." in key else ("totals", "", key)
        out.append({"chain": chain or "totals", "outcome": outcome, "count": int(n)})
    return pd.DataFrame(out, columns=["chain", "outcome", "count"])


def quarantine_frame(rows: rowsmod.ImportRows) -> pd.DataFrame:
    """The set-aside records with reason, detail, file and line; emails masked (SPEC.md §8)."""
    frame = rows.quarantine.to_pandas()
    frame["email"] = frame["email"].map(privacy.mask_email)
    frame["source_file"] = frame["source_file"].map(lambda p: Path(p).name if isinstance(p, str) else p)
    return frame.sort_values(["object", "line_number"], kind="stable").reset_index(drop=True)


def _labels(rows: rowsmod.ImportRows, academic_year: str) -> list[str]:
    """The import's year labels: N and calendar years counted in N (docs/ARCHITECTURE.md year chain)."""
    found = set(rows.students.column("academic_year").to_pylist())
    return sorted({years.canonical(academic_year)} | found)


def _establishment_ids(con: Any, scope: list[str] | None) -> list[str] | None:
    """F16: the establishments' uuids for the scope's knack ids; unknown ids refuse the run."""
    if not scope:
        return None
    found = dict(planmod.run(con, "SELECT knack_id, CAST(id AS TEXT) FROM establishments WHERE knack_id IN "
                                  f"{planmod.in_list(scope)}", list(scope)))
    unknown = [k for k in scope if k not in found]
    if unknown:
        raise ParameterError(f"establishment_scope names {unknown}, which no establishment in the target has as "
                             "knack_id: nothing was planned. Check the ids (establishments.knack_id).")
    return [found[k] for k in scope]


def desired_for(rows: rowsmod.ImportRows, con: Any, academic_year: str,
                establishment_scope: list[str] | None = None) -> planmod.Desired:
    """The guard's desired rows: the three tables, the import's labels, the establishment scope."""
    tables = {"students": rows.students, "vespa_scores": rows.vespa_scores,
              "question_responses": rows.question_responses}
    return planmod.Desired(tables, years=_labels(rows, academic_year),
                           establishment_ids=_establishment_ids(con, establishment_scope))


def archive_labels(desired: planmod.Desired, archive: bool) -> list[str]:
    """Labels the run marks archived: every label of the import when ``archive``. A run scoped to some
    establishments archives nothing: marking a year archived touches every school's rows (F16)."""
    return list(desired.years) if archive and desired.establishment_ids is None else []


def sample_rows(rows: rowsmod.ImportRows, students: int) -> rowsmod.ImportRows:
    """The first ``students`` students by email, with all their scores and answers (rehearsal)."""
    emails = sorted(set(rows.students.column("email").to_pylist()))[:students]
    keep = pa.array(emails, pa.string())

    def pick(table: pa.Table) -> pa.Table:  # noqa: E306 - a three-line filter
        return table.filter(pc.is_in(table.column("email"), value_set=keep))

    return rowsmod.ImportRows(rows.academic_year, pick(rows.students), pick(rows.vespa_scores),
                              pick(rows.question_responses), rows.quarantine.slice(0, 0), dict(rows.rule_counts))


def plan_import(con: Any, desired: planmod.Desired, archive: list[str]) -> planmod.Plan:
    """The plan (SPEC.md §7.1), or the pending migrations while any are pending. Read-only."""
    return planmod.plan_changes(con, desired, archive_years=archive)


def plan_frame(plan: planmod.Plan) -> pd.DataFrame:
    """Per table × year: insert, update, unchanged, delete, refused (and refusal reasons)."""
    frame = plan.summary_frame()
    frame["refused_reasons"] = [", ".join(f"{k}: {v}" for k, v in plan.refused_reasons.get(t, {}).items())
                                for t in frame["table"]]
    return frame


def samples_frame(plan: planmod.Plan) -> pd.DataFrame:
    """A few planned updates with the before/after of each changed column (emails masked)."""
    out = []
    for table, samples in plan.samples.items():
        for s in samples:
            key = {k: v for k, v in s.items() if k != "changes"}
            for col, change in s["changes"].items():
                out.append({"table": table, "key": ", ".join(f"{k}={v}" for k, v in key.items()),
                            "column": col, "before": change["before"], "after": change["after"]})
    return pd.DataFrame(out, columns=["table", "key", "column", "before", "after"])


def totals(counts: dict) -> dict[str, dict[str, int]]:
    """{table: {op: n}} summed over years, from a plan's counts or the guard's applied counts."""
    out: dict[str, dict[str, int]] = {}
    for table, cells in counts.items():
        if all(isinstance(v, int) for v in cells.values()):  # applied counts: {op: n}
            out[table] = {op: int(cells.get(op, 0)) for op in CHANGING}
            continue
        out[table] = {op: sum(int(c.get(op, 0)) for c in cells.values()) for op in planmod.OPS}
    return out


# --- writes (only through the guard) -------------------------------------------------------------


def write_quarantine(con: Any, quarantine: pa.Table, run_id: str) -> int:
    """Store the run's set-aside records in vespa_ops.quarantine (masked email). Caller's transaction."""
    if quarantine.num_rows == 0:
        return 0
    masked = [privacy.mask_email(e) for e in quarantine.column("email").to_pylist()]
    data = pa.table({"run_id": [run_id] * quarantine.num_rows,
                     "source_file": [Path(p).name if p else None for p in quarantine.column("source_file").to_pylist()],
                     "line_number": quarantine.column("line_number").cast(pa.int64()),
                     "record_id": quarantine.column("record_id"), "object": quarantine.column("object"),
                     "reason": quarantine.column("reason"), "detail": quarantine.column("detail"),
                     "masked_email": masked})
    cols = ", ".join(data.column_names)
    if dialect_of(con) == "duckdb":
        con.register("vespa_quarantine_in", data)
        con.execute(f"INSERT INTO {WORKBOOK_SCHEMA}.quarantine ({cols}) SELECT {cols} FROM vespa_quarantine_in")
        con.unregister("vespa_quarantine_in")
        return data.num_rows
    with con.cursor().copy(f"COPY {WORKBOOK_SCHEMA}.quarantine ({cols}) FROM STDIN") as copy:
        for row in zip(*(data.column(c).to_pylist() for c in data.column_names), strict=True):
            copy.write_row(row)
    return data.num_rows


def _hook(quarantine: pa.Table, run_id: str) -> Callable:
    """Inside the guard's transaction: statistics of the touched benchmark years, then the quarantine."""
    def hook(con: Any, dialect: str, labels: list[str], establishment_ids: list[str] | None) -> None:
        benchmark = sorted({years.benchmark_year(y) if years.is_calendar_label(y) else y for y in labels})
        stats.recompute_statistics(con, benchmark, establishment_ids)
        write_quarantine(con, quarantine, run_id)
    return hook


def _guarded(call: Callable[[], guard.ApplyResult]) -> tuple[guard.ApplyResult | None, str]:
    try:
        return call(), ""
    except (GuardRefused, VespaError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def apply_import(con: Any, desired: planmod.Desired, rows: rowsmod.ImportRows, *, approve: str, run_id: str,
                 target_kind: str, archive: list[str], parameters: dict | None = None,
                 backup_dir: Path | str | None = None, planned: planmod.Plan | None = None) -> ImportOutcome:
    """Migrations first (own guarded run), then the data plan, both approved (SPEC.md §7.2-7.3). Writes.

    ``approve`` is the fingerprint of the plan the operator reviewed, or ``auto`` (DuckDB only). A
    fingerprint that approved pending migrations does not approve the data plan computed after them:
    the outcome is ``migrated`` and names the new plan for review. ``planned``: the plan the caller just
    computed (saves planning twice; the guard re-plans inside its transaction regardless)."""
    common = {"runbook": RUNBOOK, "actor": actor(), "parameters": parameters, "target_kind": target_kind}
    migrations: list[dict] = []
    current = planned if planned is not None and not planned.is_empty else plan_import(con, desired, archive)
    if current.migrations:
        result, reason = _guarded(lambda: guard.apply_plan(con, desired, approve=approve, run_id=f"{run_id}-m",
                                                           recompute=False, archive_years=archive, **common))
        if result is None:
            return ImportOutcome("refused", reason)
        migrations = result.migrations
        if approve != "auto":
            return ImportOutcome("migrated", "migrations applied; review the data plan and approve its fingerprint",
                                 migrations=migrations, plan=plan_import(con, desired, archive))
        current = plan_import(con, desired, archive)
    if current.is_empty:  # SPEC.md §9: a repeated apply changes nothing (and leaves no ledger row)
        if approve not in ("auto", current.fingerprint):
            return ImportOutcome("refused", f"GuardRefused: approval {approve[:12]}… does not name the current plan "
                                 f"{current.fingerprint[:12]}…: nothing was written. Re-plan, review, approve again.")
        return ImportOutcome("nothing", "the target already holds every planned row", migrations=migrations,
                             plan=current)
    result, reason = _guarded(lambda: guard.apply_plan(
        con, desired, approve=approve, run_id=run_id, recompute=_hook(rows.quarantine, run_id),
        archive_years=archive, backup_dir=backup_dir, **common))
    if result is None:
        return ImportOutcome("refused", reason, migrations=migrations)
    return ImportOutcome("applied" if result.applied else "nothing", result=result, migrations=migrations,
                         plan=result.plan)


def applied_matches_plan(outcome: ImportOutcome) -> bool:
    """The guard's written counts equal the approved plan's, per table and operation."""
    if outcome.result is None or not outcome.result.applied:
        return False
    planned = totals(outcome.result.plan.counts())
    written = outcome.result.applied["applied"]
    return all(int(written.get(t, {}).get(op, 0)) == planned[t][op] for t in planned for op in CHANGING)


# --- rehearsal -----------------------------------------------------------------------------------


def rehearse(target: targets.Target, rows: rowsmod.ImportRows, academic_year: str, students: int, *,
             establishment_scope: list[str] | None, archive: bool) -> Rehearsal:
    """Plan a sample of ``students`` with all their rows; on DuckDB also apply it (migrations first) to a
    throw-away copy of the target file and re-plan. Writes nothing to the target."""
    sample = sample_rows(rows, students)
    n = sample.students.num_rows
    if target.kind != "duckdb":
        desired = desired_for(sample, target.con, academic_year, establishment_scope)
        plan = plan_import(target.con, desired, archive_labels(desired, archive))
        note = ("PostgreSQL: the sample is planned (rolled back), not applied; migrations pending"
                if plan.migrations else "PostgreSQL: the sample is planned (rolled back), not applied")
        return Rehearsal(n, plan_frame(plan), False, None, note)
    target.con.execute("CHECKPOINT")  # the file on disk is complete before it is copied
    with tempfile.TemporaryDirectory(prefix="vespa-rehearsal-") as tmp:
        copy = Path(tmp) / "rehearsal.duckdb"
        shutil.copyfile(target.spec.path, copy)
        con = duckdb.connect(str(copy))
        try:
            desired = desired_for(sample, con, academic_year, establishment_scope)
            labels = archive_labels(desired, archive)
            outcome = apply_import(con, desired, sample, approve="auto", run_id="rehearsal", target_kind="duckdb",
                                   archive=labels)
            if outcome.status == "refused":
                return Rehearsal(n, pd.DataFrame(), False, False, outcome.reason)
            counts = plan_frame(outcome.result.plan)
            verified = guard.verify(con, desired).is_empty
        finally:
            con.close()
    return Rehearsal(n, counts, True, verified, "DuckDB: applied to a throw-away copy of the target, then re-planned")


# --- verification --------------------------------------------------------------------------------


def verify_frame(con: Any, desired: planmod.Desired) -> tuple[planmod.Plan, pd.DataFrame]:
    """SPEC.md §7.4: re-plan after commit; every count but ``unchanged`` should be zero. Read-only."""
    plan = guard.verify(con, desired)
    return plan, plan_frame(plan)


def reconcile(con: Any, desired: planmod.Desired) -> pd.DataFrame:
    """Source against target key by key, per table × year: rows in the source, found with equal values,
    missing, different, and rows of the year in the target the source lacks (kept, not deleted).
    Read-only (the staging is rolled back)."""
    plan = guard.verify(con, desired)
    out = []
    for spec in planmod.SPECS:
        if spec.name not in desired.tables:
            continue
        table = desired.tables[spec.name]
        source = pc.value_counts(table.column("academic_year")).to_pylist() if table.num_rows else []
        live = dict(planmod.run(con, _live_count_sql(spec, desired), _live_params(desired)))
        for item in source:
            year, n = item["values"], int(item["counts"])
            cell = plan.counts().get(spec.name, {}).get(year, dict.fromkeys(planmod.OPS, 0))
            out.append({"table": spec.name, "academic_year": year, "source_rows": n, "matched": cell["unchanged"],
                        "missing": cell["insert"], "different": cell["update"], "refused": cell["refused"],
                        "target_only": int(live.get(year, 0)) - cell["unchanged"] - cell["update"]})
    return pd.DataFrame(out, columns=["table", "academic_year", "source_rows", "matched", "missing", "different",
                                      "refused", "target_only"])


def _live_count_sql(spec: planmod.TableSpec, desired: planmod.Desired) -> str:
    where = f"l.academic_year IN {planmod.in_list(desired.years)}"
    if desired.establishment_ids is not None:
        where += f" AND CAST(l.l_est AS TEXT) IN {planmod.in_list(desired.establishment_ids)}"
    return f"SELECT l.academic_year, count(*) FROM ({planmod.live_sql(spec, list(spec.keys))}) l WHERE {where} GROUP BY 1"


def _live_params(desired: planmod.Desired) -> list:
    return [*desired.years, *(desired.establishment_ids or [])]


def reconciled(frame: pd.DataFrame) -> bool:
    """Every source row found in the target with equal values."""
    return bool(len(frame)) and bool((frame["matched"] == frame["source_rows"]).all())
