"""Crash safety on real PostgreSQL (SPEC.md §9 reliability; issue 4 "What it must show").

An apply runs in a subprocess; ``VESPA_CRASH_AT`` makes it announce and sleep at a point (during
COPY, during the merge, just before COMMIT), where the test kills it with SIGKILL. Every table,
production and ``vespa_ops``, must then equal its pre-run checksum; a normal apply then succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from test_plan import EST_A, OLD, apply, connect, migrate, students

from vespa_lib.guard import table_checksums

pytestmark = pytest.mark.postgres
TESTS = Path(__file__).parent
PRODUCTION = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
              "national_statistics"]
OPS = ["ledger", "archive_grants", "schema_migrations", "backup_students", "backup_vespa_scores",
       "backup_question_responses", "backup_academic_years"]
N_STUDENTS = 1000

CHILD = f"""
import sys, psycopg
sys.path.insert(0, {str(TESTS)!r})
from test_plan import desired, students, EST_A, OLD
from vespa_lib.plan import plan_changes
from vespa_lib.guard import apply_plan
import os
from vespa_lib import bulkload
if os.environ.get("VESPA_TEST_BULK"):  # load the answers with their keys dropped and rebuilt
    bulkload.MIN_ROWS, bulkload.MIN_SHARE = 1, 0.0
con = psycopg.connect(sys.argv[1], autocommit=True)
rows = students(OLD, EST_A, {N_STUDENTS}, name="Crash")
want = desired(rows, cycles=(1, 2, 3), score=6)
plan = plan_changes(con, want, archive_years=[OLD])
apply_plan(con, want, approve=plan.fingerprint, run_id="crash", runbook="import", actor="pytest",
           recompute=False, archive_years=[OLD])
print("VESPA_APPLIED", flush=True)
"""


_DEFINITIONS = """
SELECT r.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
WHERE r.relnamespace = 'public'::regnamespace
UNION ALL SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2, 3
"""


def _checksums(con) -> dict:
    """Every table's content, plus every key, constraint and index definition (bulk mode drops them)."""
    return {**table_checksums(con, PRODUCTION), **{f"ops.{k}": v for k, v in
                                                   table_checksums(con, OPS, "vespa_ops").items()},
            "definitions": con.execute(_DEFINITIONS).fetchall()}


def _wait_for_backends_gone(con, timeout: float = 10.0) -> None:
    """The killed client's server backend notices the closed socket and rolls back; wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND pid <> pg_backend_pid()").fetchone()[0]
        if others == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the killed apply's backend is still connected")


def _run_child(dsn: str, crash_at: str | None, bulk: bool = False) -> subprocess.Popen:
    env = {**os.environ, "VESPA_CRASH_AT": crash_at or "", "VESPA_TEST_BULK": "1" if bulk else ""}
    return subprocess.Popen([sys.executable, "-c", CHILD, dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture
def prepared(pg_dsn):
    con = connect("postgres", pg_dsn)
    migrate(con)
    apply(con, __import__("test_plan").desired(students(OLD, EST_A, 50)), "earlier")
    yield con
    con.close()


@pytest.mark.parametrize(("crash_at", "bulk"), [
    ("copy", False), ("merge", False), ("before_commit", False),
    ("merge", True),  # killed while the answers' keys and foreign key are dropped (vespa_lib.bulkload)
    ("before_commit", True),
])
def test_sigkill_leaves_database_exactly_as_before(prepared, pg_dsn, crash_at, bulk):
    before = _checksums(prepared)
    child = _run_child(pg_dsn, crash_at, bulk)
    line = child.stdout.readline()
    assert line.startswith(f"VESPA_CRASH_READY {crash_at}"), child.stderr.read()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    _wait_for_backends_gone(prepared)
    assert _checksums(prepared) == before
    done = _run_child(pg_dsn, None, bulk)
    out, err = done.communicate(timeout=60)
    assert "VESPA_APPLIED" in out, err
    assert _checksums(prepared)["definitions"] == before["definitions"]  # keys rebuilt exactly
    assert prepared.execute("SELECT count(*) FROM students WHERE is_archived").fetchone()[0] == N_STUDENTS
    assert prepared.execute("SELECT status FROM vespa_ops.ledger WHERE run_id = 'crash'").fetchone()[0] == "applied"


def test_plain_connection_cannot_see_uncommitted_apply(prepared, pg_dsn):
    """While the apply sleeps before COMMIT, another session sees the old state (one transaction)."""
    before = _checksums(prepared)
    child = _run_child(pg_dsn, "before_commit")
    try:
        assert child.stdout.readline().startswith("VESPA_CRASH_READY")
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            assert _checksums(other) == before
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
