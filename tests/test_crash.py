"""Crash safety on real PostgreSQL (docs/ARCHITECTURE.md, “Quality bars” reliability).

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

from vespa_lib.write.guard import table_checksums

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
from vespa_lib.write.plan import plan_changes
from vespa_lib.write.guard import apply_plan
import os
from vespa_lib.write import bulkload
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
    ("merge", True),  # killed while the answers' keys and foreign key are dropped (vespa_lib.write.bulkload)
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


# --- kills and crashes where nobody chose (scripts/chaos.py runs the heavy variants: make chaos) ----


def _in_guarded_transaction(con) -> bool:
    """A guarded run is inside its transaction: it holds the writers' lock exclusively."""
    from vespa_lib.write.protect import WRITERS_LOCK_KEY

    return bool(con.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND "
                            "objid = %s AND objsubid = 1 AND mode = 'ExclusiveLock' AND granted",
                            [WRITERS_LOCK_KEY >> 32, WRITERS_LOCK_KEY & 0xFFFFFFFF]).fetchone()[0])


def _kill_at_random_moment(con, child: subprocess.Popen, delay: float) -> bool:
    """Wait until the child's guard holds its lock, then ``delay`` seconds; SIGKILL. Whether it was inside."""
    deadline = time.monotonic() + 60
    while child.poll() is None and not _in_guarded_transaction(con) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    inside = _in_guarded_transaction(con)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    return inside


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_of_the_guarded_transaction(prepared, pg_dsn, seed):
    """Not at a crash hook: a random moment after the guard took its lock. The database is as before,
    or (killed after the commit) fully applied; the next apply then succeeds or has nothing to do."""
    import random

    before = _checksums(prepared)
    delay = random.Random(seed).uniform(0, 1.5)
    inside = _kill_at_random_moment(prepared, _run_child(pg_dsn, None), delay)
    _wait_for_backends_gone(prepared)
    committed = prepared.execute("SELECT count(*) FROM vespa_ops.ledger WHERE run_id = 'crash'").fetchone()[0]
    print(f"seed {seed}: killed {delay:.2f} s after the lock, inside the transaction: {inside}, committed: {committed}")
    if not committed:
        assert _checksums(prepared) == before
        done = _run_child(pg_dsn, None)
        out, err = done.communicate(timeout=120)
        assert "VESPA_APPLIED" in out, err
    assert prepared.execute("SELECT count(*) FROM students WHERE is_archived").fetchone()[0] == N_STUDENTS
    assert _checksums(prepared)["definitions"] == before["definitions"]


def test_immediate_restart_of_the_server_during_the_apply(tmp_path):
    """``pg_ctl restart -m immediate`` (a crash, then recovery) while the guard's transaction is open:
    after recovery the database equals its checksums from before, and the next apply succeeds."""
    from vespa_lib.sandbox.localpg import LocalPostgres, create_database_on, dsn_with_dbname, find_binaries

    if find_binaries() is None:
        pytest.skip("no PostgreSQL server binaries to start and crash a server of this test's own")
    with LocalPostgres() as server:
        create_database_on(server.dsn(), "crash")
        dsn = dsn_with_dbname(server.dsn(), "crash")
        con = connect("postgres", dsn)
        migrate(con)
        apply(con, __import__("test_plan").desired(students(OLD, EST_A, 50)), "earlier")
        before = _checksums(con)
        child = _run_child(dsn, None)
        while child.poll() is None and not _in_guarded_transaction(con):
            time.sleep(0.005)
        time.sleep(0.3)
        assert _in_guarded_transaction(con), "the apply ended before the restart"
        con.close()
        server._run("pg_ctl", "-w", "-t", "120", "-D", str(server.data_dir), "-l", str(server.folder / "server.log"),
                    "-m", "immediate", "restart")
        out, err = child.communicate(timeout=60)
        assert child.returncode != 0 and "VESPA_APPLIED" not in out  # its connection was cut
        con = psycopg.connect(dsn, autocommit=True)
        assert _checksums(con) == before
        done = _run_child(dsn, None)
        out, err = done.communicate(timeout=120)
        assert "VESPA_APPLIED" in out, err
        assert con.execute("SELECT status FROM vespa_ops.ledger WHERE run_id = 'crash'").fetchone()[0] == "applied"
        con.close()
