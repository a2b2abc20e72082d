"""vespa_lib.ops.report: cells, tables, the facts of a run and its state, as a reviewer reads them."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

import nbformat
import numpy as np
import pandas as pd
import pytest

from vespa_lib.ops import report


@pytest.mark.parametrize(("value", "plain", "expected"), [
    (1234567, False, "1,234,567"), (302.0, False, "302"), (np.int64(12000), False, "12,000"),
    (2025, True, "2025"), (0.9079, False, "0.9079"), (12345.5, False, "12,345.5"),
    (True, False, "yes"), (np.bool_(False), False, "no"), (None, False, "—"), (float("nan"), False, "—"),
    (pd.NA, False, "—"), (pd.NaT, False, "—"), ("", False, "—"), ("kept as it is", False, "kept as it is"),
    ({"a": 1}, False, '{"a": 1}'),
])
def test_format_cell(value, plain, expected):
    assert report.format_cell(value, plain) == expected


def test_styled_table_has_no_index_and_reads_as_words():
    checksum = "cd6b97f39c9474d8de94413ba825328d1312a26d0ed63d1601442cdc7f47cadb"
    df = pd.DataFrame({"academic_year": ["2024/2025", None], "rows": [11577.0, np.nan], "passed": [True, False],
                       "checksum": [checksum, "<b>x</b>"]}, index=[31, 32])
    html = report.styled(df).to_html()
    assert "row_heading" not in html and ">31<" not in html
    for cell in (">11,577<", ">—<", ">yes<", ">no<", f">{checksum}<", "&lt;b&gt;x&lt;/b&gt;"):
        assert cell in html, cell
    assert "NaN" not in html and "True" not in html and "11577.0" not in html
    assert repr(report.Table(df)).splitlines()[1].split() == ["2024/2025", "11,577", "yes", checksum]


def test_failure_finds_the_step_and_the_sections_not_reached():
    v4 = nbformat.v4
    nb = v4.new_notebook()
    failed = v4.new_code_cell("boom()")
    failed.outputs = [v4.new_output("error", ename="SnapshotError", evalue="no FullObject_10 file in x\nmore",
                                    traceback=["Traceback ..."])]
    banner = v4.new_markdown_cell('<span style="color:red">An Exception was encountered at In [4].</span>')
    banner.metadata["tags"] = ["papermill-error-cell-tag"]
    nb.cells = [banner, v4.new_markdown_cell("# import"), v4.new_markdown_cell("## 1. Preflight\n\ntext"), failed,
                v4.new_markdown_cell("## 2. Rules"), v4.new_code_cell("x"), v4.new_markdown_cell("## Verdict")]
    found = report.failure(nb)
    assert (found.step, found.error, found.not_reached) == ("1. Preflight", "SnapshotError: no FullObject_10 file in x",
                                                            ["2. Rules"])
    shown = report.report_notebook(nb)
    assert [c.source[:12] for c in shown.cells] == ["# import", "## 1. Prefli", "boom()"]
    m = {"runbook": "import", "status": "failed", "checks": [], "error": "SnapshotError: no FullObject_10 file in x"}
    assert report.failure_sentence(m, found) == "Stopped at step “1. Preflight”: SnapshotError: no FullObject_10 file in x"


def test_failure_sentence_names_failed_checks_with_their_detail():
    m = {"status": "failed", "error": "ValidationFailed: 1 of 2 checks failed: verify_zero_changes",
         "checks": [{"name": "approved", "passed": True}, {"name": "verify_zero_changes", "passed": False,
                                                           "detail": "3 rows still differ"}]}
    assert report.failure_sentence(m) == "1 of 2 checks failed: verify_zero_changes (3 rows still differ)."


def test_facts_of_a_rollover_rehearsal():
    m = {"runbook": "year_transition", "status": "passed", "parameters": {"mode": "rollover", "target": "duckdb:d.duckdb"},
         "target": "duckdb:/tmp/vespa-rehearsal-72kb/d.duckdb", "rehearsal_copy": "/tmp/vespa-rehearsal-72kb/d.duckdb",
         "write_committed": True, "written": {"rollover": {"close": "2025/2026", "open": "2026/2027"},
                                              "marked": {"students": 284, "vespa_scores": 345}}}
    f = report.facts(m)
    assert (f.mode, f.year, f.target, f.rehearsal, f.committed, f.rows) == (
        "rollover", "2025/2026 → 2026/2027", "rehearsal copy of duckdb:d.duckdb", True, True, 629)


def test_facts_of_a_sync_plan_read_from_its_saved_plan(tmp_path):
    (tmp_path / "plan.json").write_text('"{\\"counts\\": {\\"students\\": {\\"2025/2026\\": '
                                        '{\\"insert\\": 50, \\"update\\": 0, \\"unchanged\\": 211, \\"delete\\": 41}}}}"')
    m = {"runbook": "sync_check", "status": "passed", "parameters": {"mode": "plan"}, "academic_year": "2025/2026",
         "sync_status": "not_approved", "target": "duckdb:d.duckdb"}
    f = report.facts(m, tmp_path)
    assert (f.committed, f.heading, f.year, f.written) == (
        False, "Would be written (nothing written)", "2025/2026", {"students": {"2025/2026": {"insert": 50, "delete": 41}}})


def test_run_state_running_interrupted_and_finished():
    now = datetime.now(UTC)
    live = {"status": "running", "pid": os.getpid(), "host": os.uname().nodename, "started_at": now.isoformat()}
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert report.run_state(live) == "running"
    assert report.run_state(live | {"pid": gone.pid}) == "interrupted"
    old = (now - timedelta(seconds=report.STALE_AFTER_S + 60)).isoformat()
    assert report.run_state(live | {"started_at": old}) == "interrupted"
    assert report.run_state(live | {"started_at": (now - timedelta(seconds=120)).isoformat(), "timeout_s": 60}) == "interrupted"
    assert [report.run_state({"status": s}) for s in ("passed", "failed", None)] == ["passed", "failed", "failed"]


@pytest.mark.parametrize(("manifest", "year"), [
    ({"runbook": "import", "parameters": {"academic_year": "2024/2025"}}, "2024/2025"),
    ({"runbook": "sync_check", "parameters": {}, "academic_year": "2025/2026"}, "2025/2026"),
    ({"runbook": "year_transition", "parameters": {"mode": "validate"}, "as_of": "2026-03-15"}, "2025/2026 (as of 2026-03-15)"),
    ({"runbook": "csv_profile", "parameters": {}, "snapshot_year": "2024/2025"}, "2024/2025"),
    ({"runbook": "audit", "parameters": {}}, "every year"),
])
def test_run_year(manifest, year):
    assert report.run_year(manifest) == year
