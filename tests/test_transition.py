"""year_transition on DuckDB: each success-criterion check passes on a clean history and fails where
its defect was planted; the rollover, its idempotence and undo; the runbook end to end."""

from __future__ import annotations

import json
import shutil
from datetime import date

import duckdb
import pytest
from test_plan import EST_B, students
from transition_data import AS_OF, CUR, DATA, NEXT, OLD, build, history

from vespa_lib import transition
from vespa_lib.errors import GuardRefused, ParameterError
from vespa_lib.ops import cli
from vespa_lib.rules import stats
from vespa_lib.write.guard import apply_undo, plan_undo, table_checksums
from vespa_lib.write.plan import Desired, plan_changes

NOTEBOOKS = __import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks"
CHECKS = ["archived_counts_match_ledger", "current_year_matches_last_sync", "archived_rows_marked_and_protected",
          "sync_ran_every_night", "dashboard_year_switching", "national_benchmarks_complete", "canonical_year_labels",
          "cohort_in_one_year"]
ROLL_DAY = date(2026, 8, 1)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("transition") / "clean.duckdb"
    con = duckdb.connect(str(path))
    build(con)
    con.close()
    return path


@pytest.fixture
def db(template, tmp_path):
    path = tmp_path / "t.duckdb"
    shutil.copy(template, path)
    con = duckdb.connect(str(path))
    yield con
    con.close()


def _results(con, **kw):
    return {r.name: r for r in transition.validate_all(con, AS_OF, window_days=3, **kw)}


def test_every_check_passes_on_the_clean_history(db):
    results = _results(db)
    assert list(results) == CHECKS
    assert {n: r.passed for n, r in results.items()} == dict.fromkeys(CHECKS, True), \
        {n: r.detail for n, r in results.items() if not r.passed}
    assert results["archived_counts_match_ledger"].figures["years"][OLD]["students"] == 6
    assert results["dashboard_year_switching"].figures["year_list"] == [OLD, CUR]


def _recompute(con, year):
    con.begin()
    stats.recompute_statistics(con, [year])
    con.commit()


def _plant(con, defect):
    one = "(SELECT id FROM {t} WHERE academic_year = '{y}' ORDER BY id LIMIT 1)"
    if defect == "missing_national_year":
        con.execute(f"DELETE FROM national_statistics WHERE academic_year = '{CUR}'")
    elif defect == "mixed_year_statistic":  # a 2024/2025 student's score counted in 2025/2026 (F8/F13)
        con.execute("INSERT INTO vespa_scores (student_id, cycle, vision, effort, systems, practice, attitude, overall, "
                    f"academic_year) SELECT id, 3, 9, 9, 9, 9, 9, 9, '{CUR}' FROM students WHERE academic_year = "
                    f"'{OLD}' AND email LIKE 's1@%'")
        _recompute(con, CUR)
    elif defect == "unarchived_row":
        con.execute(f"UPDATE question_responses SET is_archived = false WHERE id = {one.format(t='question_responses', y=OLD)}")
    elif defect == "sync_ledger_gap":
        con.execute("DELETE FROM vespa_ops.ledger WHERE run_id = 'sync-1'")
    elif defect == "failed_sync_in_window":
        con.execute("INSERT INTO vespa_ops.ledger (run_id, runbook, actor, status, counts) VALUES "
                    "('sync-x', 'sync_check', 'cron', 'failed', '{\"as_of\": \"2026-03-14\"}')")
    elif defect == "noncanonical_label":
        con.execute("INSERT INTO students (knack_id, email, academic_year) VALUES ('kx', 'x@aa.school.uk', '2023/2025')")
    elif defect == "counts_differ_from_ledger":
        con.execute(f"DELETE FROM question_responses WHERE id = {one.format(t='question_responses', y=OLD)}")
    elif defect == "current_year_drifted_from_sync":
        con.execute(f"INSERT INTO students (knack_id, email, academic_year) VALUES ('ky', 'y@aa.school.uk', '{CUR}')")


@pytest.mark.parametrize(("defect", "check"), [
    ("missing_national_year", "national_benchmarks_complete"),
    ("missing_national_year", "dashboard_year_switching"),
    ("mixed_year_statistic", "dashboard_year_switching"),
    ("unarchived_row", "archived_rows_marked_and_protected"),
    ("sync_ledger_gap", "sync_ran_every_night"),
    ("failed_sync_in_window", "sync_ran_every_night"),
    ("noncanonical_label", "canonical_year_labels"),
    ("counts_differ_from_ledger", "archived_counts_match_ledger"),
    ("current_year_drifted_from_sync", "current_year_matches_last_sync"),
])
def test_each_planted_defect_fails_its_check(db, defect, check):
    _plant(db, defect)
    result = _results(db)[check]
    assert not result.passed, result.detail
    assert not result.frame.empty and not result.frame["passed"].astype(bool).all()


def test_expected_figures_that_differ_fail_and_matching_ones_pass(db):
    assert not _results(db, expected={OLD: {"students": 99}})["archived_counts_match_ledger"].passed
    assert _results(db, expected={OLD: {"students": 6, "vespa_scores": 12}})["archived_counts_match_ledger"].passed


def test_rollover_closes_the_year_is_idempotent_and_undoes_exactly(db):
    before = table_checksums(db, DATA)
    plan = transition.plan_rollover(db, ROLL_DAY)
    assert plan.ready and (plan.close, plan.open, plan.labels) == (CUR, NEXT, [CUR, "2025/2025"])
    counts = transition.apply_rollover(db, ROLL_DAY, approve=plan.fingerprint, run_id="roll", actor="pytest")
    assert counts["marked"]["students"] == 7 and counts["year_counts"][CUR]["students"] == 5
    assert db.execute("SELECT academic_year, is_current, is_archived FROM academic_years WHERE academic_year IN "
                      f"('{CUR}', '{NEXT}') ORDER BY 1").fetchall() == [(CUR, False, True), (NEXT, True, False)]
    assert db.execute(f"SELECT count(*) FROM question_responses WHERE academic_year = '{CUR}' AND NOT is_archived"
                      ).fetchone()[0] == 0
    again = transition.plan_rollover(db, ROLL_DAY)
    assert again.is_empty
    with pytest.raises(GuardRefused, match="nothing to do"):
        transition.apply_rollover(db, ROLL_DAY, approve=again.fingerprint, run_id="roll-2", actor="pytest")
    assert _results(db)["archived_counts_match_ledger"].passed
    undo = plan_undo(db, "roll")
    apply_undo(db, "roll", approve=undo.fingerprint, undo_run_id="undo", actor="pytest")
    assert table_checksums(db, DATA) == before


@pytest.mark.parametrize(("as_of", "ledger_sql", "refusal"), [
    (date(2026, 7, 31), None, "year_has_ended"),
    (ROLL_DAY, "('sync-p', 'sync_check', 'cron', 'planned', '{\"plan\": {\"students\": {\"2025/2026\": "
               "{\"insert\": 2}}}}', '[\"2025/2026\"]')", "sync_clean_for_year"),
    (ROLL_DAY, "('sync-f', 'sync_check', 'cron', 'failed', '{}', '[\"2025/2026\"]')", "sync_clean_for_year"),
])
def test_rollover_refuses_before_year_end_or_with_an_unclean_sync(db, as_of, ledger_sql, refusal):
    if ledger_sql:
        db.execute(f"INSERT INTO vespa_ops.ledger (run_id, runbook, actor, status, counts, years) VALUES {ledger_sql}")
    before = table_checksums(db, DATA)
    plan = transition.plan_rollover(db, as_of, CUR)
    assert not plan.ready and refusal in set(plan.readiness.loc[~plan.readiness["passed"], "check"])
    with pytest.raises(GuardRefused, match=refusal):
        transition.apply_rollover(db, as_of, CUR, approve=plan.fingerprint, run_id="r", actor="pytest")
    assert table_checksums(db, DATA) == before
    if refusal == "sync_clean_for_year":  # waived on a DuckDB rehearsal only
        assert transition.plan_rollover(db, as_of, CUR, require_clean_sync=False).ready


@pytest.mark.parametrize(("text", "mode", "ok"), [("", "validate", True), ("2026-08-01", "rollover", True),
                                                   ("01/08/2026", "validate", False), ("", "apply", False)])
def test_parameters(text, mode, ok):
    if ok:
        assert transition.parse_as_of(text, date(2026, 1, 2), mode) == (date.fromisoformat(text) if text else
                                                                         date(2026, 1, 2))
    else:
        with pytest.raises(ParameterError):
            transition.parse_as_of(text, date(2026, 1, 2), mode)


def test_runbook_validates_then_rehearses_the_rollover_on_a_copy(template, tmp_path):
    path = tmp_path / "demo.duckdb"
    shutil.copy(template, path)
    base = ["--notebooks", str(NOTEBOOKS), "--outputs", str(tmp_path / "out"), "run", "year_transition",
            "-p", f"target=duckdb:{path}", "-p", "sync_window_days=3", "-p", f"as_of='{AS_OF}'"]
    assert cli.main(base) == 0
    untouched = path.read_bytes()
    assert cli.main([*base, "-p", "mode=rollover", "-p", "as_of='2026-08-01'", "-p", "approve=auto"]) == 0
    assert path.read_bytes() == untouched  # rehearsal_copy: the target file is never written
    runs = sorted((tmp_path / "out").rglob("checks.json"))
    names = {c["name"]: c["passed"] for c in json.loads(runs[-1].read_text())}
    assert names["rollover_applied"] and names["rollover_verified_empty"] and names["closed_year_frozen"]
    assert cli.main([*base, "-p", "mode=rollover", "-p", "as_of='2026-08-01'"]) == 0  # no approval: a plan
    assert path.read_bytes() == untouched
    plan = json.loads(sorted((tmp_path / "out").rglob("checks.json"))[-1].read_text())
    assert {c["name"] for c in plan} >= {"rollover_ready", "rollover_planned"}
    assert "rollover_applied" not in {c["name"] for c in plan}


# --- calendar-year schools: the 1 January close (docs/YEARLY_PROCEDURE.md) ---------------------------

JAN = date(2026, 1, 1)  # closes 2025/2025 (the history's calendar year of EST_B) and nothing else


def test_1_january_closes_only_the_calendar_year_and_opens_nothing(db):
    before = table_checksums(db, DATA)
    current = db.execute("SELECT academic_year FROM academic_years WHERE is_current").fetchall()
    plan = transition.plan_rollover(db, JAN, require_clean_sync=False)
    assert plan.ready and (plan.close, plan.open, plan.labels) == ("2025/2025", None, ["2025/2025"])
    assert plan.counts["academic_years"] == {"archive": 1, "open_insert": 0, "open_update": 0, "uncurrent": 0}
    counts = transition.apply_rollover(db, JAN, approve=plan.fingerprint, run_id="jan", actor="pytest",
                                       require_clean_sync=False)
    assert counts["marked"]["students"] == 2 and counts["statistics_years"] == ["2025/2025", CUR]
    marked = dict(db.execute("SELECT academic_year, bool_and(is_archived) FROM students GROUP BY 1").fetchall())
    assert marked["2025/2025"] is True and marked[CUR] is False
    assert db.execute("SELECT academic_year FROM academic_years WHERE is_current").fetchall() == current
    assert db.execute("SELECT is_archived, is_current FROM academic_years WHERE academic_year = '2025/2025'"
                      ).fetchall() == [(True, False)]
    assert transition.plan_rollover(db, JAN, require_clean_sync=False).is_empty
    # the closed calendar year is refused to the next sync by the guard's planner
    rows = [{**r, "name": "Overwritten"} for r in students("2025/2025", EST_B, 1, prefix="auc")]
    want = Desired(history(rows, cycles=(1,)), years=["2025/2025"])
    assert plan_changes(db, want).refused_reasons["students"].get("archived_year") == 1
    undo = plan_undo(db, "jan")
    apply_undo(db, "jan", approve=undo.fingerprint, undo_run_id="undo-jan", actor="pytest")
    assert table_checksums(db, DATA) == before


def test_1_august_after_a_1_january_close_archives_the_uk_year_and_not_the_running_calendar_year(db):
    db.execute("INSERT INTO students (knack_id, email, academic_year, establishment_id) SELECT 'k26', "
               "'au26@x.edu.au', '2026/2026', establishment_id FROM students WHERE academic_year = '2025/2025' LIMIT 1")
    jan = transition.plan_rollover(db, JAN, require_clean_sync=False)
    transition.apply_rollover(db, JAN, approve=jan.fingerprint, run_id="jan", actor="pytest", require_clean_sync=False)
    aug = transition.plan_rollover(db, ROLL_DAY, require_clean_sync=False)
    assert (aug.close, aug.open, aug.labels) == (CUR, NEXT, [CUR, "2025/2025"])
    assert aug.counts["mark"]["students"] == 5  # 2025/2025 is marked already: only the UK year's rows
    transition.apply_rollover(db, ROLL_DAY, approve=aug.fingerprint, run_id="aug", actor="pytest",
                              require_clean_sync=False)
    running = db.execute("SELECT is_archived FROM students WHERE academic_year = '2026/2026'").fetchall()
    assert running == [(False,)]


@pytest.mark.parametrize(("as_of", "close"), [(date(2027, 1, 1), "2026/2026"), (date(2027, 3, 1), "2026/2026"),
                                              (ROLL_DAY, CUR), (date(2026, 10, 1), CUR)])
def test_the_default_close_year_is_the_year_that_ended_last(as_of, close):
    assert transition.close_year_for(as_of) == close
    assert transition.close_year_for(as_of, "2026-27") == NEXT


@pytest.mark.parametrize(("statuses", "passes"), [(("refused", "applied"), True), (("failed", "no changes"), True),
                                                  (("applied", "refused"), False)])
def test_a_night_is_judged_by_its_last_sync_run(db, statuses, passes):
    """The data lead applying a refused night's reviewed plan the same night leaves the night synced;
    a refusal after the night's apply does not."""
    for i, status in enumerate(statuses):
        db.execute("INSERT INTO vespa_ops.ledger (run_id, runbook, actor, status, started_at, counts) VALUES "
                   f"('sync-late-{i}', 'sync_check', 'x', '{status}', now() + INTERVAL {i + 1} MINUTE, "
                   "'{\"as_of\": \"2026-03-14\"}')")
    result = _results(db)["sync_ran_every_night"]
    night = result.frame[result.frame["night"].astype(str) == "2026-03-14"].iloc[0]
    assert result.passed is passes, result.detail
    assert night["statuses"].endswith(", ".join(statuses)) and night["overruled"] == (1 if passes else 0)
    assert result.figures["overruled_nights"] == (["2026-03-14"] if passes else [])
