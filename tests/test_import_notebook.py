"""The import runbook end to end through ``vespa-ops run`` (cli.main → papermill): DuckDB and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest
from test_audit import load_into_postgres

from vespa_lib import importer
from vespa_lib.ops import cli
from vespa_lib.sandbox import synth
from vespa_lib.write.guard import apply_plan, table_checksums

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics", "national_statistics"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("import_nb")
    synth.generate(folder)
    return folder


def run_import(outputs: Path, capsys, **params) -> tuple[int, dict]:
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs), "run", "import",
            "-f", str(REPO / "params" / "demo" / "import.yaml")]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in params.items()]
    code = cli.main(argv)
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    return code, json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def checksums(path: Path) -> dict:
    with importer.open_import(f"duckdb:{path}") as target:
        return table_checksums(target.con, DATA)


def test_duckdb_plan_then_wrong_fingerprint_then_auto(generated, tmp_path, capsys):
    db = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", db)
    common = {"snapshot_dir": str(generated / "snapshot"), "target": f"duckdb:{db}",
              "backup_dir": str(tmp_path / "bk"), "sample_students": 20}
    code, plan = run_import(tmp_path / "out", capsys, **common)
    assert code == 0 and plan["status"] == "passed"
    assert len(plan["plan_fingerprint"]) == 64 and "counts" in plan
    assert [m["version"] for m in plan["migrations_pending"]] == [1, 2, 3]  # F2 key shown before any data
    before = checksums(db)
    code, wrong = run_import(tmp_path / "out", capsys, **common, mode="apply", approve="0" * 64)
    assert code == 1 and wrong["status"] == "failed"
    assert not next(c for c in wrong["checks"] if c["name"] == "approved")["passed"]
    assert checksums(db) == before
    code, applied = run_import(tmp_path / "out", capsys, **common, mode="apply", approve="auto")
    assert code == 0, applied.get("error") or applied["checks"]
    assert applied["verify"]["zero_changes"] and applied["apply_status"] == "applied"
    planned = sum(cell["insert"] for cell in applied["counts"]["students"].values())
    assert planned == applied["applied_counts"]["applied"]["students"]["insert"] > 0
    assert {c["name"] for c in applied["checks"]} >= {"applied_counts_match_plan", "verify_zero_changes", "reconciled"}


def test_the_reviewed_fingerprint_of_pending_migrations_applies_them(generated, tmp_path, capsys):
    """An archiving import on a database the workbook never migrated: the plan shows the pending
    migrations and its fingerprint; approving that fingerprint applies them (``migrated``) and shows
    the data plan's fingerprint. The guard's re-plan must bind the same scope as the reviewed plan."""
    db = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", db)
    common = {"snapshot_dir": str(generated / "snapshot"), "target": f"duckdb:{db}",
              "backup_dir": str(tmp_path / "bk"), "sample_students": 20}
    code, plan = run_import(tmp_path / "out", capsys, **common)
    assert code == 0 and plan["migrations_pending"] and plan["parameters"]["archive"]
    code, migrated = run_import(tmp_path / "out", capsys, **common, mode="apply", approve=plan["plan_fingerprint"])
    assert code == 0, migrated.get("error") or migrated["checks"]
    assert migrated["apply_status"] == "migrated" and migrated["plan_fingerprint"] != plan["plan_fingerprint"]


def test_auto_approval_of_a_postgres_target_is_refused(generated, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VESPA_TEST_IMPORT_DSN", "postgresql://nobody@127.0.0.1:1/none")
    code, manifest = run_import(tmp_path / "out", capsys, snapshot_dir=str(generated / "snapshot"),
                                target="postgres:VESPA_TEST_IMPORT_DSN", mode="apply", approve="auto")
    assert code == 1 and "auto" in manifest["error"] and "DuckDB" in manifest["error"]


@pytest.mark.postgres
def test_postgres_plan_then_apply_with_the_reviewed_fingerprint(generated, tmp_path, capsys, monkeypatch, pg_dsn):
    load_into_postgres(generated / "production.duckdb", pg_dsn)
    monkeypatch.setenv("VESPA_TEST_IMPORT_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("SELECT setval(pg_get_serial_sequence('academic_years', 'id'), max(id)) FROM academic_years")
        target = importer.open_import("postgres:VESPA_TEST_IMPORT_DSN")
        snap, _ = importer.preflight(generated / "snapshot", target)
        rows = importer.import_rows(snap, "2024/2025", target, convert_q29_percentage=True, establishment_scope=[])
        desired = importer.desired_for(rows, target.con, "2024/2025")
        migrations = importer.plan_import(target.con, desired, [])  # migrations reviewed and applied beforehand
        apply_plan(target.con, desired, approve=migrations.fingerprint, run_id="m0", runbook="import", actor="t",
                   recompute=False, target_kind="postgres")
        target.close()
    common = {"snapshot_dir": str(generated / "snapshot"), "target": "postgres:VESPA_TEST_IMPORT_DSN",
              "backup_dir": str(tmp_path / "bk"), "sample_students": 10}
    code, plan = run_import(tmp_path / "out", capsys, **common)
    assert code == 0
    if any(plan["repairs"]["f8_cross_year_duplicates"].values()):
        # the damaged database holds F8 cross-year duplicates: their repair is planned first and
        # approved on its own; its apply run shows the data plan to approve next (docs/ARCHITECTURE.md)
        code, repaired = run_import(tmp_path / "out", capsys, **common, mode="apply", approve=plan["plan_fingerprint"])
        assert code == 0 and repaired["apply_status"] == "repaired", repaired.get("error")
        assert repaired["plan_fingerprint"] != plan["plan_fingerprint"]
        plan = repaired
    assert plan["counts"]["students"]["2024/2025"]["insert"] > 0
    code, applied = run_import(tmp_path / "out", capsys, **common, mode="apply", approve=plan["plan_fingerprint"])
    assert code == 0, applied.get("error") or applied["checks"]
    assert applied["plan_fingerprint"] == plan["plan_fingerprint"] and applied["verify"]["zero_changes"]
