"""The import runbook through ``vespa-ops run`` (cli.main → papermill) on the paths a user takes:
live rows read in several batches (PostgreSQL COPY is read in blocks; DuckDB returns row groups),
re-planning after an applied import with the default rehearsal, and the realistic scale end to end
(plan, apply with the fingerprint the plan run recorded, re-plan)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from vespa_lib import cli, synth
from vespa_lib.synth.postgres import load_into_postgres

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
