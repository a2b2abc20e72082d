"""``make demo`` (vespa_lib.demo): pristine reset, parameters, and a small end-to-end run of the runbooks."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from vespa_lib import demo, evidence

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.step_generate(out, students=120)
    return out


def test_reset_restores_the_pristine_damaged_database(small):
    working = demo.step_reset(small)
    with duckdb.connect(str(working)) as con:
        before = con.execute("SELECT count(*) FROM students").fetchone()[0]
        con.execute("DELETE FROM question_responses")
    demo.step_reset(small)
    with duckdb.connect(str(working), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM question_responses").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM students").fetchone()[0] == before
    assert not demo.step_generate(small, students=120)  # idempotent: nothing regenerated


def test_parameters_point_at_the_demo_folder(small):
    values = demo.run_parameters(REPO / "params" / "demo" / "import.yaml", small)
    assert values["target"] == f"duckdb:{small}/production.duckdb"
    assert values["snapshot_dir"] == f"{small}/snapshot" and values["mode"] == "plan"


@pytest.mark.slow
@pytest.mark.notebook
def test_demo_runs_every_runbook_and_the_index_lists_them(small, tmp_path, monkeypatch, capsys):
    core = tuple(s for s in demo.RUNS if not s.optional)  # sync_check/year_transition belong to their issues
    monkeypatch.setattr(demo, "RUNS", core)
    code = demo.main(["--out", str(small), "--outputs", str(tmp_path / "outputs"), "--students", "120"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    manifests = [m for _, m in evidence.read_manifests(tmp_path / "outputs")]
    assert sorted(m["runbook"] for m in manifests) == ["audit", "csv_profile", "import", "import"]
    assert all(m["status"] == "passed" for m in manifests)
    applied = next(m for m in manifests if m.get("apply_status") == "applied")
    assert applied["verify"]["zero_changes"]
    index = (tmp_path / "outputs" / "index.html").read_text(encoding="utf-8")
    assert index.count("passed") >= 4 and "import" in index and "audit" in index
    assert f"Evidence index: {tmp_path / 'outputs' / 'index.html'}" in printed
    assert json.loads((small / demo.STAMP_FILE).read_text())["students"] == 120
