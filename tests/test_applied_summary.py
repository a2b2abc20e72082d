"""Fast companions of test_transition_prodpg.py: the CLI's verdict line of a run whose write committed,
and the statistics comparison at a decimal column's precision (DuckDB, no server)."""

from __future__ import annotations

import duckdb
import pandas as pd

from vespa_lib.ops import cli
from vespa_lib.transition import dashboard as transition_dashboard


def _manifest(**extra) -> dict:
    checks = [{"name": "rollover_applied", "passed": True}, {"name": "dashboard_year_switching", "passed": False,
                                                             "detail": "2025/2026 national_statistics"}]
    return {"runbook": "year_transition", "status": "failed", "checks": checks,
            "error": "ValidationFailed: 1 of 2 checks failed: dashboard_year_switching", **extra}


def test_a_committed_run_says_applied_before_the_failed_post_check(capsys):
    cli._print_summary(_manifest(write_committed=True, written={"run_id": "abc123"}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("year_transition: APPLIED (write committed), then post-check failed: dashboard_year_switching "
                        "(1/2 checks passed)")
    assert "vespa-ops undo abc123" in lines[1] and "do not repeat it" in lines[1]


def test_a_run_that_wrote_nothing_still_says_failed(capsys):
    cli._print_summary(_manifest(write_committed=False))
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("year_transition: FAILED: ValidationFailed: 1 of 2 checks failed: dashboard_year_switching "
                     "(1/2 checks passed)")


def test_decimal_columns_are_compared_at_their_scale_and_the_largest_difference_reported():
    con = duckdb.connect()
    con.execute("CREATE TABLE national_statistics (element TEXT, mean DECIMAL(4,2), skewness DOUBLE)")
    assert transition_dashboard.column_scales(con, "national_statistics") == {"mean": 2}
    db = pd.DataFrame({"element": ["vision"], "mean": [6.67], "skewness": [0.5]})
    ref = pd.DataFrame({"element": ["vision"], "mean": [6.666667], "skewness": [0.5]})
    within = transition_dashboard._compare(db, ref, ["element"], {"mean": 2})
    assert within["differing"] == 0 and abs(within["largest_difference"] - 0.003333) < 1e-6
    assert transition_dashboard._compare(db, ref, ["element"], {})["differing"] == 1  # full precision: differs
    off = transition_dashboard._compare(db.assign(mean=[6.68]), ref, ["element"], {"mean": 2})
    assert off["differing"] == 1  # a wrong value beyond the rounding still differs
