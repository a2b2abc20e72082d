"""The path matrix: every runbook × every mode it has × every target, through ``vespa-ops`` as a person runs it.

A person plans, reads ``plan_fingerprint`` from the plan run's ``manifest.json`` (the last line vespa-ops
prints is the evidence folder), and approves with ``-p mode=apply -p approve=<fingerprint>``; ``approve:
auto`` only on the DuckDB rehearsal row. Every row asserts the exit code and the run's status; plan
and read-only modes assert that nothing was written (checksums of every table before and after);
applies assert the re-plan is empty; undo asserts every checksum is back.

One scenario per target, module-scoped, its rows run in order (each a test with an id such as
``test_postgres_legacy[import-apply]``); a row whose prerequisite row did not pass is skipped and names
it. Targets: a DuckDB copy of the damaged synthetic production, the production-shaped PostgreSQL
(``vespa_lib.sandbox.prodshape``: owner role not a superuser, decimal(4,2) statistics, row level security) with
the legacy key unique(email) and with unique(email, academic_year), and ``supabase:URL_VAR,KEY_VAR``
against the loopback PostgREST (tests/postgrest_server.py), where the runbooks that need a database
connection are refused with a TargetError. Most rows start ``vespa-ops`` as a subprocess (the
installed entry point); rows marked ``inproc`` call ``vespa_lib.ops.cli.main``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paths_support import (
    Ops,
    Run,
    changed_columns,
    checksums,
    column_checksums,
    differing,
    plan_changes,
    undo_fingerprint,
)

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

YEAR = "2024/2025"  # the archive the import brings in
CURRENT = "2025/2026"
SYNC_DAY = "2026-03-15"  # the fresh export's date (prodshape_world)
ROLL_DAY = "2026-08-01"
POLICY = {"max_deletes": 50, "max_change_ratio": 0.2, "max_count_change": 0.2, "require_current_year_only": True,
          "require_no_refused": True}  # params/production/sync_check.yaml
# Three dated current-year scores: an undated one is the set-aside F1 copy of a record still in Knack, which
# the sync keeps as it is (so it would keep the drift too); ids are random, so which rows are picked varies.
DRIFT_SQL = ("UPDATE vespa_scores SET vision = CASE WHEN vision >= 5 THEN vision - 1 ELSE vision + 1 END WHERE id IN "
             f"(SELECT id FROM vespa_scores WHERE academic_year = '{CURRENT}' AND vision IS NOT NULL "
             "AND completion_date IS NOT NULL ORDER BY id LIMIT 3)")
DATA_ONLY = ("public",)  # a sync plan records a "planned" ledger row: its data tables must not change
STATS = ("school_statistics", "national_statistics")
RECOMPUTED = {"id", "calculated_at"}  # what recomputing equal statistics may renew (production's DDL)


class Scenario:
    """One target's rows, run in order; each row records what later rows need."""

    def __init__(self, kind: str, where: str, target: str, ops: Ops, world: Path):
        self.kind, self.where, self.target, self.ops, self.world = kind, where, target, ops, world
        self.passed: set[str] = set()
        self.state: dict = {}

    # --- plumbing ---------------------------------------------------------------------------------

    def sums(self, schemas: tuple[str, ...] = ("public", "vespa_ops")) -> dict[str, str]:
        return checksums(self.kind, self.where, schemas=schemas)

    def columns(self, tables=STATS) -> dict[str, dict[str, str]]:
        return {t: column_checksums(self.kind, self.where, t) for t in tables}

    def needs(self, *rows: str) -> None:
        missing = [r for r in rows if r not in self.passed]
        if missing:
            pytest.skip(f"needs row(s) {missing}, which did not pass")

    def step(self, row: str) -> None:
        getattr(self, "row_" + row.replace("-", "_"))()
        self.passed.add(row)

    def run(self, runbook: str, **params) -> Run:
        return self.ops.run(runbook, target=self.target, **params)

    def write_sql(self, sql: str) -> None:
        """What the old nightly scripts did: plain SQL on the target, outside the workbook."""
        if self.kind == "duckdb":
            import duckdb

            with duckdb.connect(self.where) as con:
                con.execute(sql)
        else:
            import psycopg

            with psycopg.connect(self.where, autocommit=True) as con:
                con.execute(sql)

    def read_only(self, runbook: str, schemas=("public", "vespa_ops"), **params) -> Run:
        before = self.sums(schemas)
        done = self.run(runbook, **params)
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert differing(before, self.sums(schemas)) == [], f"{runbook} wrote to the target"
        return done

    # --- audit, csv_profile (read-only) -----------------------------------------------------------

    def row_audit(self) -> None:
        self.read_only("audit", backup=True, backup_dir=str(self.ops.tmp / "backups"))

    def row_csv_profile(self) -> None:
        done = self.read_only("csv_profile", snapshot_dir=str(self.world / "snapshot"))
        assert done.manifest.get("inputs"), "csv_profile recorded no input file"

    # --- import -----------------------------------------------------------------------------------

    def import_params(self, **extra) -> dict:
        return {"snapshot_dir": str(self.world / "snapshot"), "academic_year": YEAR,
                "backup_dir": str(self.ops.tmp / "backups"), **extra}

    def row_import_plan(self) -> None:
        before = self.sums()
        plan = self.run("import", **self.import_params())
        assert plan.code == 0 and plan.manifest["status"] == "passed", plan.why()
        assert len(plan.fingerprint) == 64
        assert differing(before, self.sums()) == [], "import mode=plan wrote to the target"
        self.state["import_plan"] = plan

    def row_import_migrate(self) -> None:
        """The plan shows the pending migrations (and the F8 repair) first; each is approved by the
        fingerprint of the run before it, until the run shows the data plan."""
        self.needs("import-plan")
        current: Run = self.state["import_plan"]
        assert current.manifest["migrations_pending"], "the damaged target has no pending migration"
        steps = []
        for _ in range(3):
            done = self.run("import", **self.import_params(mode="apply", approve=current.fingerprint))
            assert done.code == 0 and done.manifest["status"] == "passed", done.why()
            status = done.manifest["apply_status"]
            steps.append(status)
            assert status in ("migrated", "repaired"), steps
            assert done.fingerprint and done.fingerprint != current.fingerprint
            current = done
            f8 = done.manifest["repairs"]["f8_cross_year_duplicates"]
            if status == "repaired" or not any(f8.values()):
                break  # this run shows the data plan
        assert steps[0] == "migrated" and steps[-1] in ("migrated", "repaired"), steps
        assert plan_changes(current.manifest["counts"]), "the data plan after the migrations has no change"
        self.state["data_plan"] = current

    def row_import_apply(self) -> None:
        self.needs("import-migrate")
        data_plan: Run = self.state["data_plan"]
        before = self.sums()
        done = self.run("import", **self.import_params(mode="apply", approve=data_plan.fingerprint))
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert done.manifest["apply_status"] == "applied" and done.fingerprint == data_plan.fingerprint
        assert done.manifest["verify"]["zero_changes"]
        assert done.checks["applied_counts_match_plan"]["passed"] and done.checks["reconciled"]["passed"]
        assert differing(before, self.sums()), "the apply changed nothing"
        self.state.update(import_apply=done, before_import_apply=before, after_import=self.sums())

    def row_import_replan(self) -> None:
        self.needs("import-apply")
        before = self.sums()
        again = self.ops.run("import", target=self.target, inproc=True, **self.import_params())
        assert again.code == 0 and again.manifest["status"] == "passed", again.why()
        assert plan_changes(again.manifest["counts"]) == {}
        assert not again.manifest["migrations_pending"]
        assert differing(before, self.sums()) == []

    def row_import_undo(self) -> None:
        """PostgreSQL: plan the undo (read-only), approve its fingerprint, every checksum is back."""
        self.needs("import-apply")
        applied: Run = self.state["import_apply"]
        before = self.sums()
        code, out, err = self.ops.undo(applied.run_id, self.target)
        assert code == 0, err
        assert differing(before, self.sums()) == [], "the undo plan wrote to the target"
        code, out, err = self.ops.undo(applied.run_id, self.target, undo_fingerprint(out))
        assert code == 0, err
        assert f"Run {applied.run_id} undone" in out
        after = self.sums(("public",))
        wanted = {k: v for k, v in self.state["before_import_apply"].items() if k.startswith("public.")}
        assert differing(wanted, after) == [], "the undo did not restore every table"

    def row_import_undo_refused(self) -> None:
        """DuckDB cannot delete inserted students with their scores in one transaction: a clear refusal."""
        self.needs("import-apply")
        applied: Run = self.state["import_apply"]
        before = self.sums()
        code, out, err = self.ops.undo(applied.run_id, self.target)
        if code == 0:
            code, out, err = self.ops.undo(applied.run_id, self.target, undo_fingerprint(out))
        assert code == 2, (code, out, err)
        assert "GuardRefused" in err and "DuckDB cannot" in err and "nothing was written" in err, err
        assert differing(before, self.sums()) == []

    def row_import_reapply(self) -> None:
        """After the undo, the same plan again, applied: the year is back for the sync. (The fingerprint
        is new: on PostgreSQL it binds the rows' versions, and the undo wrote new ones.)"""
        self.needs("import-undo")
        plan = self.run("import", **self.import_params())
        assert plan.code == 0 and plan.manifest["status"] == "passed", plan.why()
        assert plan.manifest["counts"] == self.state["data_plan"].manifest["counts"], "the undone state plans differently"
        done = self.run("import", **self.import_params(mode="apply", approve=plan.fingerprint))
        assert done.code == 0 and done.manifest["apply_status"] == "applied", done.why()
        assert done.manifest["verify"]["zero_changes"]

    def row_import_rehearsal_auto(self) -> None:
        """The DuckDB rehearsal: approve=auto on a fresh copy, migrations, repair and data in one run."""
        copy = self.ops.tmp / "rehearsal.duckdb"
        shutil.copyfile(self.world / "production.duckdb", copy)
        done = self.ops.run("import", target=f"duckdb:{copy}", inproc=True,
                            **self.import_params(mode="apply", approve="auto"))
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert done.manifest["apply_status"] == "applied" and done.manifest["verify"]["zero_changes"]

    # --- sync_check -------------------------------------------------------------------------------

    def sync_params(self, **extra) -> dict:
        return {"source": f"csv:{self.world / 'fresh_export'}", "as_of": SYNC_DAY, **extra}

    def sync_plan(self, *, inproc: bool = False) -> Run:
        before = self.sums(DATA_ONLY)
        plan = self.ops.run("sync_check", target=self.target, inproc=inproc, **self.sync_params(mode="plan"))
        assert plan.code == 0 and plan.manifest["status"] == "passed", plan.why()
        assert plan.manifest["sync_status"] == "planned" and len(plan.fingerprint) == 64
        assert differing(before, self.sums(DATA_ONLY)) == [], "sync_check mode=plan wrote data"
        return plan

    def row_sync_check_plan(self) -> None:
        self.needs("import-apply")
        plan = self.sync_plan()
        assert plan_changes(plan.json("plan").get("counts")), "the fresh export plans no change"
        self.state["sync_plan"] = plan

    def row_sync_check_apply(self) -> None:
        self.needs("sync_check-plan")
        done = self.run("sync_check", **self.sync_params(mode="apply", approve=self.state["sync_plan"].fingerprint))
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert done.manifest["sync_status"] == "applied" and done.checks["replan_is_empty"]["passed"]
        self.state.update(after_sync=self.sums(DATA_ONLY), after_sync_stats=self.columns())

    def row_sync_check_policy(self) -> None:
        """The next night, unattended: the old scripts changed three current-year scores; the policy run
        (params/production/sync_check.yaml bounds) puts them back."""
        self.needs("sync_check-apply")
        self.write_sql(DRIFT_SQL)
        assert differing(self.state["after_sync"], self.sums(DATA_ONLY)) == ["public.vespa_scores"]
        done = self.run("sync_check", **self.sync_params(mode="apply", approve="policy", policy=POLICY))
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert done.manifest["sync_status"] == "applied" and done.checks["replan_is_empty"]["passed"]
        changed = differing(self.state["after_sync"], self.sums(DATA_ONLY))
        assert not set(changed) - {f"public.{t}" for t in STATS}, f"the policy run did not restore {changed}"
        stats = changed_columns(self.state["after_sync_stats"], self.columns())
        assert all(set(cols) <= RECOMPUTED for cols in stats.values()), f"statistics values changed: {stats}"

    def row_sync_check_replan(self) -> None:
        self.needs("sync_check-apply")
        plan = self.sync_plan(inproc=True)
        assert plan_changes(plan.json("plan").get("counts")) == {}

    # --- year_transition --------------------------------------------------------------------------

    def row_year_transition_validate(self) -> None:
        self.needs("sync_check-apply")
        done = self.read_only("year_transition", mode="validate", as_of=SYNC_DAY, sync_window_days=1)
        assert all(c["passed"] for c in done.manifest["checks"])

    def row_year_transition_rollover_plan(self) -> None:
        """mode=rollover without approve: a plan, like sync_check's and the import's: its fingerprint,
        nothing written, and the run passes (rollover_planned: "review the plan and pass approve=...")."""
        self.needs("sync_check-apply")
        before = self.sums()
        plan = self.run("year_transition", mode="rollover", as_of=ROLL_DAY)
        assert plan.code == 0 and plan.manifest["status"] == "passed", plan.why()
        assert "rollover_applied" not in plan.checks and plan.manifest["write_committed"] is False
        assert plan.checks["rollover_ready"]["passed"] and len(plan.fingerprint) == 64
        assert f"approve={plan.fingerprint}" in plan.checks["rollover_planned"]["detail"]
        assert differing(before, self.sums()) == []
        self.state["rollover_plan"] = plan

    def row_year_transition_rollover_apply(self) -> None:
        self.needs("year_transition-rollover-plan")
        before, before_stats = self.sums(), self.columns()
        done = self.run("year_transition", mode="rollover", as_of=ROLL_DAY,
                        approve=self.state["rollover_plan"].fingerprint)
        assert done.code == 0 and done.manifest["status"] == "passed", done.why()
        assert done.manifest["rollover"]["rollover"] == {"close": CURRENT, "open": "2026/2027"}
        changed = differing(before, self.sums())
        if self.kind == "duckdb":  # rehearsal_copy: the rollover ran on a copy
            assert done.manifest["rehearsal_copy"] and changed == []
        else:
            assert "public.academic_years" in changed
        self.state.update(rollover=done, before_rollover=before, before_rollover_stats=before_stats)

    def row_year_transition_undo(self) -> None:
        self.needs("year_transition-rollover-apply")
        rolled: Run = self.state["rollover"]
        code, out, err = self.ops.undo(rolled.run_id, self.target)
        assert code == 0, err
        code, out, err = self.ops.undo(rolled.run_id, self.target, undo_fingerprint(out))
        assert code == 0 and f"Run {rolled.run_id} undone" in out, (out, err)
        wanted = {k: v for k, v in self.state["before_rollover"].items() if k.startswith("public.")}
        changed = differing(wanted, self.sums(("public",)))
        columns = changed_columns(self.state["before_rollover_stats"], self.columns()) if changed else {}
        assert changed == [], f"the undo did not restore {changed}; columns that differ: {columns}"

    # --- supabase: read-only runbooks work, the others are refused --------------------------------

    def refused(self, runbook: str, **params) -> None:
        before = self.sums()
        done = self.run(runbook, **params)
        assert done.code in (1, 2) and done.manifest["status"] == "failed", done.why()
        assert done.manifest["error"].startswith("TargetError: ") and "postgres:ENV_VAR" in done.manifest["error"]
        assert differing(before, self.sums()) == []

    def row_sync_check_refused(self) -> None:
        self.refused("sync_check", **self.sync_params(mode="plan"))

    def row_year_transition_refused(self) -> None:
        self.refused("year_transition", mode="validate", as_of=SYNC_DAY)


IMPORT_ROWS = ["import-plan", "import-migrate", "import-apply", "import-replan"]
SYNC_ROWS = ["sync_check-plan", "sync_check-apply", "sync_check-policy", "sync_check-replan"]
DUCKDB_ROWS = ["audit", "csv_profile", *IMPORT_ROWS, "import-undo-refused", "import-rehearsal-auto", *SYNC_ROWS,
               "year_transition-validate", "year_transition-rollover-plan", "year_transition-rollover-apply"]
LEGACY_ROWS = ["audit", "csv_profile", *IMPORT_ROWS, "import-undo", "import-reapply", *SYNC_ROWS,
               "year_transition-validate", "year_transition-rollover-plan", "year_transition-rollover-apply",
               "year_transition-undo"]
YEARKEY_ROWS = ["audit", *IMPORT_ROWS, "import-undo"]
SUPABASE_ROWS = ["audit", "csv_profile", "sync_check-refused", "year_transition-refused"]


# --- the targets --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duck(prodshape_world, tmp_path_factory) -> Scenario:
    tmp = tmp_path_factory.mktemp("paths_duckdb")
    db = tmp / "production.duckdb"
    shutil.copyfile(prodshape_world / "production.duckdb", db)
    return Scenario("duckdb", str(db), f"duckdb:{db}", Ops(tmp), prodshape_world)


def _prod_clone(pg_server: str, template: str) -> Iterator[tuple[str, str]]:
    from vespa_lib.sandbox import prodshape
    from vespa_lib.sandbox.localpg import drop_database_on

    name = f"vespa_paths_{uuid.uuid4().hex[:10]}"
    owner = prodshape.clone(pg_server, template, name)
    try:
        yield name, owner
    finally:
        drop_database_on(pg_server, name)


def _pg_scenario(pg_server, prodshape_template, prodshape_world, tmp_path_factory, legacy: bool):
    tmp = tmp_path_factory.mktemp("paths_legacy" if legacy else "paths_yearkey")
    for _, owner in _prod_clone(pg_server, prodshape_template(legacy)):
        yield Scenario("postgres", owner, "postgres:PATHS_PROD_DB_URL", Ops(tmp, {"PATHS_PROD_DB_URL": owner}),
                       prodshape_world)


@pytest.fixture(scope="module")
def pg_legacy(pg_server, prodshape_template, prodshape_world, tmp_path_factory) -> Iterator[Scenario]:
    yield from _pg_scenario(pg_server, prodshape_template, prodshape_world, tmp_path_factory, legacy=True)


@pytest.fixture(scope="module")
def pg_yearkey(pg_server, prodshape_template, prodshape_world, tmp_path_factory) -> Iterator[Scenario]:
    yield from _pg_scenario(pg_server, prodshape_template, prodshape_world, tmp_path_factory, legacy=False)


@pytest.fixture(scope="module")
def rest(pg_server, prodshape_template, prodshape_world, tmp_path_factory) -> Iterator[Scenario]:
    from postgrest_server import PostgRESTServer

    tmp = tmp_path_factory.mktemp("paths_supabase")
    for _, owner in _prod_clone(pg_server, prodshape_template(True)):
        with PostgRESTServer(owner) as server:
            ops = Ops(tmp, {"PATHS_SB_URL": server.url, "PATHS_SB_KEY": server.key})
            scenario = Scenario("postgres", owner, "supabase:PATHS_SB_URL,PATHS_SB_KEY", ops, prodshape_world)
            yield scenario


def _rows(rows: list[str]) -> Callable:
    return pytest.mark.parametrize("row", rows, ids=rows)


@_rows(DUCKDB_ROWS)
def test_duckdb(duck, row):
    duck.step(row)


@pytest.mark.postgres
@_rows(LEGACY_ROWS)
def test_postgres_legacy(pg_legacy, row):
    pg_legacy.step(row)


@pytest.mark.postgres
@_rows(YEARKEY_ROWS)
def test_postgres_yearkey(pg_yearkey, row):
    pg_yearkey.step(row)


@pytest.mark.postgres
@_rows(SUPABASE_ROWS)
def test_supabase(rest, row):
    rest.step(row)
