"""No secret and no raw personal data in anything a real runbook run writes (docs/ARCHITECTURE.md, “Evidence and privacy”).

Runs the real audit (on a real PostgreSQL reached through a DSN with a password), csv_profile and
import plan on generated data, then reads every byte of every file the runs wrote and looks for the
DSN password, the Supabase key, the Knack key, and every email and full name of the snapshot.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import psycopg
import pytest
from test_audit import load_into_postgres

from vespa_lib.ops import cli
from vespa_lib.sandbox import synth

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pw-7f3a9c!leakcheck"
SUPABASE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLWxlYWstY2hlY2s"
KNACK_KEY = "knack-rest-key-5d2e8b41-leakcheck"

pytestmark = [pytest.mark.postgres, pytest.mark.notebook, pytest.mark.slow]


def _snapshot_people(snapshot: Path) -> tuple[set[str], set[str]]:
    """Every email address and full name written into the snapshot CSVs, read independently."""
    emails: set[str] = set()
    names: set[str] = set()
    for path in snapshot.glob("FullObject_*.csv"):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                for key, value in row.items():
                    if not value:
                        continue
                    if key.endswith("_email"):
                        emails.update(part.lower() for part in value.replace('"', " ").replace(">", " ")
                                      .replace("<", " ").replace(":", " ").split() if "@" in part)
                    if key.endswith("_full") and len(value.strip()) > 5:
                        names.add(value.strip().lower())
    return emails, names


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pg_server):
    base = tmp_path_factory.mktemp("privacy")
    result = synth.generate(base / "gen", students=150, seed=7)
    db = base / "work.duckdb"
    shutil.copy(result.database, db)
    # a real role with a password, reached through a DSN that carries it
    dbname = "vespa_privacy_check"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {dbname}")
        admin.execute(f"CREATE DATABASE {dbname}")
        admin.execute("DROP ROLE IF EXISTS vespa_leakcheck")
        admin.execute(f"CREATE ROLE vespa_leakcheck LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    server = psycopg.conninfo.conninfo_to_dict(pg_server)
    dsn = (f"postgresql://vespa_leakcheck:{PASSWORD.replace('!', '%21')}@{server.get('host', '127.0.0.1')}:"
           f"{server.get('port', 5432)}/{dbname}")
    load_into_postgres(result.database, dsn)
    env = {"VESPA_PRIVACY_DSN": dsn, "SUPABASE_SERVICE_KEY": SUPABASE_KEY, "KNACK_API_KEY": KNACK_KEY}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    outputs = base / "outputs"
    snap = result.out_dir / "snapshot"
    common = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs)]
    codes = {
        "audit": cli.main([*common, "run", "audit", "-p", "target=postgres:VESPA_PRIVACY_DSN",
                           "-p", f"backup_dir={base / 'backups'}"]),
        "csv_profile": cli.main([*common, "run", "csv_profile", "-p", f"snapshot_dir={snap}",
                                 "-p", f"target=duckdb:{db}"]),
        "import": cli.main([*common, "run", "import", "-p", f"snapshot_dir={snap}",
                            "-p", f"target=duckdb:{db}", "-p", "mode=plan", "-p", f"backup_dir={base / 'backups'}"]),
    }
    yield outputs, codes, result
    mp.undo()
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        admin.execute("DROP ROLE IF EXISTS vespa_leakcheck")


def test_the_runs_passed_and_wrote_evidence(runs):
    outputs, codes, _ = runs
    assert codes == {"audit": 0, "csv_profile": 0, "import": 0}
    manifests = [json.loads(p.read_text()) for p in outputs.rglob("manifest.json")]
    assert sorted(m["runbook"] for m in manifests) == ["audit", "csv_profile", "import"]
    audit = next(m for m in manifests if m["runbook"] == "audit")
    assert "VESPA_PRIVACY_DSN" in audit["target"] and "password removed" in audit["target"]


def test_no_secret_in_any_file_written(runs):
    outputs, _, _ = runs
    files = [p for p in outputs.rglob("*") if p.is_file()]
    assert len(files) >= 12
    for path in files:
        data = path.read_bytes()
        for secret in (PASSWORD, PASSWORD.replace("!", "%21"), SUPABASE_KEY, KNACK_KEY):
            assert secret.encode() not in data, f"{secret[:6]}... leaked into {path.relative_to(outputs)}"


def test_no_snapshot_email_or_name_in_any_file_written(runs):
    outputs, _, result = runs
    emails, names = _snapshot_people(result.out_dir / "snapshot")
    assert len(emails) > 100 and len(names) > 50  # the scan has something to find
    for path in (p for p in outputs.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", errors="ignore").lower()
        leaked_emails = [e for e in emails if e in text]
        leaked_names = [n for n in names if n in text]
        assert not leaked_emails, f"{len(leaked_emails)} raw email(s) in {path.relative_to(outputs)}"
        assert not leaked_names, f"{len(leaked_names)} full name(s) in {path.relative_to(outputs)}"
