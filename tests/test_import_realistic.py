"""The import runbook through ``vespa-ops run`` (cli.main → papermill) on the paths a user takes:
live rows read in several batches (PostgreSQL COPY is read in blocks; DuckDB returns row groups),
re-planning after an applied import with the default rehearsal, and the realistic scale end to end
(plan, apply with the fingerprint the plan run recorded, re-plan)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import psycopg
import pytest

from vespa_lib.ops import cli
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.postgres import load_into_postgres

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ENV = "VESPA_TEST_IMPORT_SCALE_DSN"


def run_import(outputs: Path, capsys, **params) -> tuple[int, dict]:
    """``vespa-ops run import`` with the demo parameters file and ``params``; (exit code, manifest)."""
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs), "run", "import",
            "-f", str(REPO / "params" / "demo" / "import.yaml")]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in params.items()]
    code = cli.main(argv)
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return code, json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def failure(manifest: dict) -> str:
    return manifest.get("error") or str([c for c in manifest.get("checks", []) if not c["passed"]])


@pytest.fixture(scope="module")
def default_scale(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("import_default")
    synth.generate(folder)
    return folder


@pytest.fixture(scope="module")
def three_thousand(tmp_path_factory) -> Path:
    """3,000 students: the live answers of the year are ~2 MB of COPY text, more than one CSV block."""
    folder = tmp_path_factory.mktemp("import_3000")
    synth.generate(folder, students=3000)
    return folder


def test_replan_after_an_applied_import_passes_with_the_default_rehearsal(default_scale, tmp_path, capsys):
    db = tmp_path / "p.duckdb"
    shutil.copyfile(default_scale / "production.duckdb", db)
    common = {"snapshot_dir": str(default_scale / "snapshot"), "target": f"duckdb:{db}",
              "backup_dir": str(tmp_path / "bk")}  # sample_students: the parameters file's 100
    code, applied = run_import(tmp_path / "out", capsys, **common, mode="apply", approve="auto")
    assert code == 0 and applied["apply_status"] == "applied", failure(applied)
    code, again = run_import(tmp_path / "out", capsys, **common)
    assert code == 0 and again["status"] == "passed", failure(again)
    assert again["rehearsal"]["students"] == 100 and again["rehearsal"]["verified"] is True
    assert all(cell[op] == 0 for cells in again["counts"].values() for cell in cells.values()
               for op in ("insert", "update", "delete"))


@pytest.mark.postgres
def test_postgres_plan_with_live_rows_read_in_several_blocks(three_thousand, tmp_path, capsys, monkeypatch, pg_dsn):
    load_into_postgres(three_thousand / "production.duckdb", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as con:  # ids copied explicitly: move the serial on
        con.execute("SELECT setval(pg_get_serial_sequence('academic_years', 'id'), max(id)) FROM academic_years")
    monkeypatch.setenv(ENV, pg_dsn)
    code, plan = run_import(tmp_path / "out", capsys, snapshot_dir=str(three_thousand / "snapshot"),
                            target=f"postgres:{ENV}", backup_dir=str(tmp_path / "bk"), sample_students=20)
    assert code == 0 and plan["status"] == "passed", failure(plan)
    assert plan["repairs"]["f8_cross_year_duplicates"]["question_responses"] > 0


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    """The realistic scale (~25,000 students, ~1.1 M answers of the year), generated once (~10 s)."""
    folder = tmp_path_factory.mktemp("import_realistic")
    synth.generate(folder, students=synth.SCALES["realistic"])
    return folder


@pytest.mark.heavy
def test_realistic_scale_plan_apply_replan_through_vespa_ops(realistic, tmp_path, capsys):
    """What a user runs at realistic scale: plan; apply with the fingerprint the previous run's
    manifest.json recorded (pending migrations, then the F8 repair, then the data: one run each);
    re-plan, which plans zero changes. Wall times are printed (``pytest -s``)."""
    db = tmp_path / "p.duckdb"
    shutil.copyfile(realistic / "production.duckdb", db)
    common = {"snapshot_dir": str(realistic / "snapshot"), "target": f"duckdb:{db}", "backup_dir": str(tmp_path / "bk")}
    times = {}
    start = time.perf_counter()
    code, plan = run_import(tmp_path / "out", capsys, **common)
    times["plan"] = time.perf_counter() - start
    assert code == 0 and plan["status"] == "passed", failure(plan)
    fingerprint, statuses = plan["plan_fingerprint"], []
    for _ in range(4):
        start = time.perf_counter()
        code, applied = run_import(tmp_path / "out", capsys, **common, mode="apply", approve=fingerprint)
        statuses.append(applied.get("apply_status"))
        times[f"apply {len(statuses)} ({statuses[-1]})"] = time.perf_counter() - start
        assert code == 0 and applied["status"] == "passed", failure(applied)
        if statuses[-1] not in ("migrated", "repaired"):
            break
        fingerprint = applied["plan_fingerprint"]
    assert statuses == ["migrated", "repaired", "applied"]
    assert applied["verify"]["zero_changes"] and applied["plan_fingerprint"] == fingerprint
    assert applied["applied_counts"]["applied"]["question_responses"]["insert"] > 1_000_000 * 0.9
    start = time.perf_counter()
    code, again = run_import(tmp_path / "out", capsys, **common)
    times["re-plan"] = time.perf_counter() - start
    assert code == 0 and again["status"] == "passed", failure(again)
    assert all(cell[op] == 0 for cells in again["counts"].values() for cell in cells.values()
               for op in ("insert", "update", "delete"))
    with capsys.disabled():
        print("\nrealistic import through vespa-ops: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
