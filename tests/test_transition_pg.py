"""year_transition on a real PostgreSQL: the checks with the archive triggers, the rollover
applied, idempotent, crash-safe (SIGKILL mid-way), undone exactly, and the old sync's plain SQL refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
from test_plan import EST_A, connect, students
from transition_data import AS_OF, CUR, DATA, NEXT, OLD, build, guarded, history

from vespa_lib import transition
from vespa_lib.errors import ParameterError
from vespa_lib.write.guard import apply_undo, plan_undo, table_checksums
from vespa_lib.write.plan import Desired

pytestmark = pytest.mark.postgres
TESTS = Path(__file__).parent
ROLL_DAY = date(2026, 8, 1)
CHILD = f"""
import sys, psycopg
sys.path.insert(0, {str(TESTS)!r})
from datetime import date
from vespa_lib import transition
con = psycopg.connect(sys.argv[1], autocommit=True)
plan = transition.plan_rollover(con, date(2026, 8, 1))
transition.apply_rollover(con, date(2026, 8, 1), approve=plan.fingerprint, run_id="crash", actor="pytest")
print("VESPA_APPLIED", flush=True)
"""


@pytest.fixture
def pg(pg_dsn):
    con = connect("postgres", pg_dsn)
    con.execute("DROP TABLE establishments CASCADE; DROP TABLE students CASCADE; DROP TABLE vespa_scores; "
                "DROP TABLE question_responses; DROP TABLE school_statistics; DROP TABLE national_statistics; "
                "DROP TABLE academic_years; DROP SCHEMA vespa_ops CASCADE")  # build() seeds from scratch
    build(con)
    yield con
    con.close()


def _ops(con):
    return table_checksums(con, ["ledger", "archive_grants", "backup_students", "backup_academic_years"], "vespa_ops")


def _roll(con, run_id="roll"):
    plan = transition.plan_rollover(con, ROLL_DAY)
    return transition.apply_rollover(con, ROLL_DAY, approve=plan.fingerprint, run_id=run_id, actor="pytest",
                                     target_kind="postgres")


def test_checks_pass_and_the_protection_probe_is_refused_then_a_disabled_trigger_fails(pg):
    results = {r.name: r for r in transition.validate_all(pg, AS_OF, window_days=3)}
    assert all(r.passed for r in results.values()), {n: r.detail for n, r in results.items() if not r.passed}
    protection = results["archived_rows_marked_and_protected"].details["protection"]
    assert protection.set_index("table").loc["students", "protection"].endswith("probe: refused")
    pg.execute("ALTER TABLE vespa_scores DISABLE TRIGGER vespa_archive_row_vespa_scores")
    assert not transition.archived_rows_marked_and_protected(pg).passed


def test_rollover_applies_once_and_freezes_the_closed_year_against_the_old_sync(pg, pg_dsn):
    counts = _roll(pg)
    assert counts["academic_years"]["open_insert"] == 1
    assert transition.plan_rollover(pg, ROLL_DAY).is_empty
    frozen = transition.frozen_checksums(pg, [CUR, "2025/2025"])
    assert frozen == counts["frozen_checksums"]
    old_sync = [  # the old scripts' plain SQL, from another connection (F1, F2, F9)
        f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{CUR}'",
        f"UPDATE students SET academic_year = '{NEXT}' WHERE email = 'c0@aa.school.uk'",
        "INSERT INTO students (knack_id, email, academic_year) VALUES ('k', 'c0@aa.school.uk', '2025/2026') "
        f"ON CONFLICT (email, academic_year) DO UPDATE SET academic_year = '{NEXT}'",
        "DELETE FROM national_statistics",
    ]
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        for sql in old_sync:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="archive protection"):
                other.execute(sql)
    late = students(CUR, EST_A, 4, prefix="c") + students(NEXT, EST_A, 2, prefix="n")  # a following sync
    result = guarded(pg, Desired(history(late, cycles=(1, 2)), years=[CUR, NEXT]), "sync-next", "sync_check")
    assert result.plan.counts()["vespa_scores"][CUR]["refused"] == 4  # cycle 2 of the closed year: refused
    assert result.plan.counts()["students"][NEXT]["insert"] == 2
    assert transition.frozen_checksums(pg, [CUR, "2025/2025"]) == frozen
    assert transition.archived_counts_match_ledger(pg).passed


def test_undo_restores_every_checksum(pg):
    before = table_checksums(pg, DATA)
    _roll(pg)
    undo = plan_undo(pg, "roll")
    apply_undo(pg, "roll", approve=undo.fingerprint, undo_run_id="undo", actor="pytest", target_kind="postgres")
    assert table_checksums(pg, DATA) == before


def test_waiving_the_clean_sync_rule_is_refused_on_postgres(pg):
    with pytest.raises(ParameterError, match="DuckDB rehearsals only"):
        transition.plan_rollover(pg, ROLL_DAY, require_clean_sync=False)


@pytest.mark.parametrize("crash_at", ["merge", "before_commit"])
def test_sigkill_mid_rollover_leaves_the_database_as_before(pg, pg_dsn, crash_at):
    before = {**table_checksums(pg, DATA), **_ops(pg)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "VESPA_CRASH_AT": crash_at})
    line = child.stdout.readline()
    assert line.startswith("VESPA_CRASH_READY"), child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
               "AND pid <> pg_backend_pid()")
    assert {**table_checksums(pg, DATA), **_ops(pg)} == before
    assert pg.execute(f"SELECT is_archived FROM academic_years WHERE academic_year = '{CUR}'").fetchone()[0] is False
    _roll(pg, "after-crash")  # and a normal rollover then succeeds
    assert transition.plan_rollover(pg, ROLL_DAY).is_empty
    assert OLD in transition.archived_rows_marked_and_protected(pg).figures["archived_years"]
