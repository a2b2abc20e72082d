"""``make demo-pg``: the demo on a production-shaped PostgreSQL, every runbook through ``vespa-ops``,
every write planned and approved by the fingerprint its evidence shows (never ``auto``)."""

from __future__ import annotations

import pytest

from vespa_lib.sandbox.demo_pg import failures, run_demo

pytestmark = [pytest.mark.heavy, pytest.mark.postgres, pytest.mark.notebook, pytest.mark.slow]


def test_demo_pg_passes_every_run_without_auto_approval(pg_server, tmp_path):
    lines = []
    results = run_demo(tmp_path / "demo", tmp_path / "outputs", pg_server, print_=lines.append)
    assert failures(results) == [], "\n".join(lines)
    assert not [r for r in results if r.params.get("approve") == "auto"]
    approved = [r for r in results if r.params.get("approve")]
    assert {r.runbook for r in approved} >= {"import", "sync_check", "year_transition"}
    assert all(r.manifest.get("plan_fingerprint") for r in approved)
    assert lines[-1].startswith("Evidence index: ") and (tmp_path / "outputs" / "index.html").is_file()
