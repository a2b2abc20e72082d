"""The yearly path on a production-shaped PostgreSQL (vespa_lib.sandbox.prodshape), driven the way an operator
drives it: ``vespa-ops run import`` plan → approve the fingerprint from the run's manifest → apply,
``vespa-ops run sync_check`` with its fingerprint, then ``year_transition`` validation and the 1 August
rollover (plan → approve). The runbooks log in as the non-superuser owner role.

Production stores statistics as decimal(4,2): the dashboard check compares at the column's precision
and reports the largest difference; a rollover whose write committed says so first, even when a
post-check fails afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from vespa_lib.sandbox import prodshape
from vespa_lib.sandbox.localpg import drop_database_on

pytestmark = [pytest.mark.postgres, pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
DSN_VAR = "VESPA_TEST_PRODPG_DSN"
TARGET = f"postgres:{DSN_VAR}"


def vespa_ops(outputs: Path, dsn: str, runbook: str, **params) -> tuple[int, dict, list[str]]:
    """One real ``vespa-ops run`` process; (exit code, manifest, stdout lines)."""
    argv = [sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs),
            "run", runbook, "-f", str(REPO / "params" / "demo" / f"{runbook}.yaml")]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in params.items()]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, DSN_VAR: dsn})
    lines = done.stdout.strip().splitlines()
    assert lines and Path(lines[-1]).is_dir(), done.stdout + done.stderr
    return done.returncode, json.loads((Path(lines[-1]) / "manifest.json").read_text(encoding="utf-8")), lines


def import_year(outputs: Path, dsn: str, world: Path, backups: Path) -> dict:
    """Plan, then apply with each fingerprint the runs show (migrations, F8 repair, data) until applied."""
    common = {"snapshot_dir": str(world / "snapshot"), "target": TARGET, "backup_dir": str(backups),
              "sample_students": 0}
    code, manifest, _ = vespa_ops(outputs, dsn, "import", **common)
    assert code == 0, manifest.get("error")
    for _ in range(4):
        code, manifest, _ = vespa_ops(outputs, dsn, "import", **common, mode="apply",
                                      approve=manifest["plan_fingerprint"])
        if manifest.get("apply_status") == "applied":
            break
        assert manifest.get("apply_status") in ("migrated", "repaired"), manifest.get("error")
    assert code == 0, (manifest.get("error"), [c for c in manifest["checks"] if not c["passed"]])
    return manifest


def sync_year(outputs: Path, dsn: str, world: Path) -> dict:
    """The sync's plan (mode apply without approval records it as planned), then apply its fingerprint."""
    common = {"source": f"csv:{world / 'fresh_export'}", "target": TARGET, "as_of": "2026-03-15", "mode": "apply"}
    _, planned, _ = vespa_ops(outputs, dsn, "sync_check", **common, approve="")
    assert planned["sync_status"] == "planned", planned.get("error")
    code, applied, _ = vespa_ops(outputs, dsn, "sync_check", **common, approve=planned["plan_fingerprint"])
    assert code == 0 and applied["sync_status"] == "applied", (applied.get("error"), applied["checks"])
    return applied


@pytest.fixture(scope="module")
def synced(pg_server, prodshape_template, prodshape_world, tmp_path_factory):
    """A legacy-key production copy after a clean import of 2024/2025 and a sync of 2025/2026 (module-scoped:
    tests that write work on their own TEMPLATE copy of it)."""
    base = tmp_path_factory.mktemp("prodpg")
    name = f"vespa_prodpg_{uuid.uuid4().hex[:10]}"
    dsn = prodshape.clone(pg_server, prodshape_template(True), name)
    try:
        import_year(base / "outputs", dsn, prodshape_world, base / "backups")
        sync_year(base / "outputs", dsn, prodshape_world)
        yield {"server": pg_server, "name": name, "dsn": dsn, "base": base}
    finally:
        drop_database_on(pg_server, name)


def _copy(synced) -> tuple[str, str]:
    name = f"vespa_prodpg_{uuid.uuid4().hex[:10]}"
    return name, prodshape.clone(synced["server"], synced["name"], name)


def _check(manifest: dict, name: str) -> dict:
    found = [c for c in manifest["checks"] if c["name"] == name]
    assert found, (manifest.get("error"), [(c["name"], c["detail"]) for c in manifest["checks"] if not c["passed"]])
    return found[0]


def test_dashboard_statistics_compare_at_the_columns_precision(synced, tmp_path):
    code, manifest, _ = vespa_ops(tmp_path / "out", synced["dsn"], "year_transition", target=TARGET, as_of="2026-03-15",
                                  sync_window_days=1)
    dash = _check(manifest, "dashboard_year_switching")
    assert dash["passed"], dash["detail"]
    figures = dash["figures"]
    assert figures["statistics_precision"]["national_statistics.mean"] == 2
    assert 0 < figures["largest_statistics_difference"] <= 0.005 + 1e-9  # the decimal(4,2) rounding, reported
    assert code == 0, (manifest.get("error"), [c for c in manifest["checks"] if not c["passed"]])


def test_rollover_that_committed_says_applied_first_even_when_a_post_check_fails(synced, tmp_path):
    name, dsn = _copy(synced)
    try:
        common = {"target": TARGET, "mode": "rollover", "as_of": "2026-08-01", "sync_window_days": 1}
        _, plan, _ = vespa_ops(tmp_path / "out", dsn, "year_transition", **common, approve="")
        assert plan.get("write_committed") is False and len(plan["plan_fingerprint"]) == 64
        with psycopg.connect(dsn, autocommit=True) as con:  # a post-check that fails after the commit:
            con.execute("INSERT INTO national_statistics (cycle, academic_year, element, mean, count, distribution) "
                        "VALUES (1, '2023/2024', 'vision', 5, 1, '[0,0,0,0,1,0,0,0,0,0]')")  # an old system's row
        _, plan, _ = vespa_ops(tmp_path / "out", dsn, "year_transition", **common, approve="")
        code, applied, lines = vespa_ops(tmp_path / "out", dsn, "year_transition", **common,
                                         approve=plan["plan_fingerprint"])
        assert applied["write_committed"] is True
        assert applied["written"]["rollover"] == {"close": "2025/2026", "open": "2026/2027"}
        assert applied["written"]["marked"]["students"] > 0 and applied["written"]["run_id"] == applied["run_id"]
        failed = [c["name"] for c in applied["checks"] if not c["passed"]]
        assert failed and "rollover_applied" not in failed
        assert code == 1 and applied["status"] == "failed"
        summary = next(ln for ln in lines if ln.startswith("year_transition:"))
        assert summary.startswith(f"year_transition: APPLIED (write committed), then post-check failed: {failed[0]}")
        with psycopg.connect(dsn, autocommit=True) as con:
            assert con.execute("SELECT is_archived, is_current FROM academic_years WHERE academic_year = "
                               "'2025/2026'").fetchone() == (True, False)
    finally:
        drop_database_on(synced["server"], name)
