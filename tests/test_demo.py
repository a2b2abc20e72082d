"""``make demo`` (vespa_lib.sandbox.demo): pristine reset, parameters, and a small end-to-end run of the runbooks."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from vespa_lib.ops import evidence
from vespa_lib.sandbox import demo

REPO = Path(__file__).resolve().parent.parent
SMALL = 100  # the generator's minimum (vespa_lib.sandbox.synth refuses fewer)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.step_generate(out, students=SMALL)
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
    assert not demo.step_generate(small, students=SMALL)  # idempotent: nothing regenerated


def test_parameters_point_at_the_demo_folder(small):
    values = demo.run_parameters(REPO / "params" / "demo" / "import.yaml", small)
    assert values["target"] == f"duckdb:{small}/production.duckdb"
    assert values["snapshot_dir"] == f"{small}/snapshot" and values["mode"] == "plan"


@pytest.mark.slow
@pytest.mark.notebook
def test_demo_runs_every_runbook_and_the_rollover_rehearsal(small, tmp_path, capsys):
    """The whole chain at the generator's minimum scale: every run passes, the planted F8/F11 damage
    is repaired (not hidden), the validation's checks all pass, the rehearsal leaves the target as is."""
    code = demo.main(["--out", str(small), "--outputs", str(tmp_path / "outputs"), "--students", str(SMALL)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    manifests = [m for _, m in evidence.read_manifests(tmp_path / "outputs")]
    assert sorted(m["runbook"] for m in manifests) == ["audit", "audit", "csv_profile", "import", "import",
                                                        "sync_check", "year_transition", "year_transition"]
    assert all(m["status"] == "passed" for m in manifests), [(m["runbook"], m["error"]) for m in manifests]
    # the first audit observes the planted damage before anything is written; the second, after the
    # import, sees the F2 key replaced and every year with scores on the dashboard's year list (F9)
    first, second = sorted((m for m in manifests if m["runbook"] == "audit"), key=lambda m: m["started_at"])
    before = {c["name"]: c["figures"]["count"] for c in first["checks"] if "count" in (c.get("figures") or {})}
    after = {c["name"]: c["figures"]["count"] for c in second["checks"] if "count" in (c.get("figures") or {})}
    for planted in ("single_year_keys", "f10_cycle_copies", "f8_answer_year_mismatch", "noncanonical_year_labels"):
        assert before[planted] > 0, planted
    assert after["single_year_keys"] == 0 and after["f9_years_missing_from_dashboard"] == 0
    applied = next(m for m in manifests if m.get("apply_status") == "applied")
    assert applied["verify"]["zero_changes"]
    assert applied["f8_repair"]["applied"]["question_responses"]["delete"] == \
        applied["repairs"]["f8_cross_year_duplicates"]["question_responses"] > 0
    validate = next(m for m in manifests if m["runbook"] == "year_transition" and m["parameters"]["mode"] == "validate")
    checks = {c["name"]: c for c in validate["checks"]}
    for name in ("archived_counts_match_ledger", "dashboard_year_switching", "canonical_year_labels",
                 "current_year_matches_last_sync", "archived_rows_marked_and_protected"):
        assert checks[name]["passed"], checks[name]["detail"]
    assert checks["canonical_year_labels"]["figures"]["noncanonical_rows"] == 0
    with duckdb.connect(str(small / "production.duckdb"), read_only=True) as con:
        cross = con.execute("SELECT count(*) FROM question_responses q JOIN students s ON s.id = q.student_id "
                            "WHERE q.academic_year <> s.academic_year").fetchone()[0]
        assert cross == 0  # F8 and F11 rows are gone from the target, not only from the report
        assert con.execute("SELECT count(*) FROM academic_years WHERE academic_year = '2026/2027'").fetchone()[0] == 0
    assert "byte-identical" in printed and "2026/2027" in printed
    index = (tmp_path / "outputs" / "index.html").read_text(encoding="utf-8")
    assert index.count("passed") >= 8 and "year_transition" in index
    assert f"Evidence index: {tmp_path / 'outputs' / 'index.html'}" in printed
    assert json.loads((small / demo.STAMP_FILE).read_text())["students"] == SMALL
