"""A plan kept in its connection and reused by the guard (vespa_lib.write.plan.reuse_kept). Real PostgreSQL.

Reuse saves planning twice, and must never apply anything but the approved plan against the state it
was made from: a change behind the plan's back, another plan made in between, or other desired rows
each make the guard re-plan (and then refuse a stale approval), never reuse.
"""

from __future__ import annotations

import psycopg
import pytest
from test_plan import EST_A, EST_B, OLD, connect, desired, migrate, students

from vespa_lib.errors import GuardRefused
from vespa_lib.write.guard import apply_plan, table_checksums
from vespa_lib.write.plan import plan_changes

pytestmark = pytest.mark.postgres
TABLES = ["students", "vespa_scores", "question_responses", "academic_years"]


@pytest.fixture
def pg(pg_dsn):
    con = connect("postgres", pg_dsn)
    migrate(con)
    yield con
    con.close()


def _apply(con, want, plan, run_id, approve=None):
    return apply_plan(con, want, approve=approve or plan.fingerprint, run_id=run_id, runbook="test", actor="pytest",
                      recompute=False, planned=plan)


def test_a_kept_plan_is_reused_and_applies_what_a_fresh_plan_applies(pg):
    want = desired(students(OLD, EST_A, 20), cycles=(1, 2))
    before = table_checksums(pg, TABLES)
    plan = plan_changes(pg, want, keep=True)
    assert plan.session and table_checksums(pg, TABLES) == before  # keeping the plan wrote nothing
    result = _apply(pg, want, plan, "kept")
    assert "plan.reused" in result.timings and not any(k.startswith("plan.stage") for k in result.timings)
    assert result.applied["applied"]["question_responses"]["insert"] == 20 * 2 * len(want.tables[
        "question_responses"].column("question_id").unique())
    assert plan_changes(pg, want).is_empty


def test_the_same_plan_object_is_not_reused_twice(pg):
    want = desired(students(OLD, EST_A, 5))
    plan = plan_changes(pg, want, keep=True)
    _apply(pg, want, plan, "first")
    with pytest.raises(GuardRefused):  # the state moved on: re-planned, and the old approval is stale
        _apply(pg, want, plan, "second")


def test_a_change_behind_the_plans_back_is_refused_not_reused(pg, pg_dsn):
    _apply(pg, desired(students(OLD, EST_A, 5)), plan_changes(pg, desired(students(OLD, EST_A, 5))), "seed")
    want = desired(students(OLD, EST_A, 5), score=4)
    plan = plan_changes(pg, want, keep=True)
    with psycopg.connect(pg_dsn, autocommit=True) as other:  # another session edits a planned row's student
        other.execute("SELECT set_config('vespa.allowed_years', %s, false)", [OLD])
        other.execute("UPDATE students SET name = 'Edited' WHERE email = %s", [students(OLD, EST_A, 1)[0]["email"]])
    before = table_checksums(pg, TABLES)
    with pytest.raises(GuardRefused, match="changed"):
        _apply(pg, want, plan, "stale")
    assert table_checksums(pg, TABLES) == before


def test_a_plan_made_in_between_replaces_the_kept_tables(pg):
    want_a = desired(students(OLD, EST_A, 6))
    want_b = desired(students(OLD, EST_B, 9, prefix="b"), ests=None)
    plan_a = plan_changes(pg, want_a, keep=True)
    plan_changes(pg, want_b, keep=True)  # the session's plan tables now hold B
    result = _apply(pg, want_a, plan_a, "a")
    assert "plan.reused" not in result.timings  # re-planned A under the lock, same fingerprint
    assert result.applied["applied"]["students"]["insert"] == 6
    assert pg.execute("SELECT count(*) FROM students WHERE establishment_id = %s", [EST_B]).fetchone()[0] == 0


def test_other_desired_rows_with_the_kept_plans_approval_are_refused(pg):
    want = desired(students(OLD, EST_A, 6))
    plan = plan_changes(pg, want, keep=True)
    other = desired(students(OLD, EST_A, 7))
    before = table_checksums(pg, TABLES)
    with pytest.raises(GuardRefused):
        _apply(pg, other, plan, "other")
    assert table_checksums(pg, TABLES) == before


def test_a_rolled_back_plan_in_between_leaves_the_kept_plan_reusable(pg):
    want = desired(students(OLD, EST_A, 6))
    plan = plan_changes(pg, want, keep=True)
    plan_changes(pg, desired(students(OLD, EST_B, 3, prefix="b")))  # ordinary plan: rolled back, restores ours
    assert "plan.reused" in _apply(pg, want, plan, "kept").timings


def test_keeping_a_plan_that_wrote_to_a_real_table_rolls_it_back(pg, monkeypatch):
    """The commit that keeps the plan tables is guarded: a planner bug that wrote is caught, undone."""
    from vespa_lib.errors import VespaError
    from vespa_lib.write import plan as planmod

    real = planmod.stage_and_classify

    def writing(con, want, **kw):
        out = real(con, want, **kw)
        con.execute("UPDATE academic_years SET is_current = is_current")  # a write, however harmless
        return out

    monkeypatch.setattr(planmod, "stage_and_classify", writing)
    before = table_checksums(pg, TABLES)
    xmins = pg.execute("SELECT array_agg(xmin::text ORDER BY id) FROM academic_years").fetchone()
    with pytest.raises(VespaError, match="academic_years"):
        plan_changes(pg, desired(students(OLD, EST_A, 3)), keep=True)
    assert table_checksums(pg, TABLES) == before
    assert pg.execute("SELECT array_agg(xmin::text ORDER BY id) FROM academic_years").fetchone() == xmins
