"""evidence: run folders, manifests, scrubbed notebooks, self-contained reports and the index.

Executed notebooks are built with nbformat (outputs included) so the finaliser is tested without a
kernel; test_cli.py covers the same pipeline end to end through papermill.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest

from vespa_lib.ops import evidence, privacy

DSN = "postgresql://u:S3cretPassw0rd@localhost/db"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.abcDEF123"
STARTED = datetime(2025, 8, 1, 9, 30, tzinfo=UTC)


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def executed_notebook(path: Path, printed: str = "all good") -> Path:
    """An executed notebook as papermill leaves it: markdown, code with outputs, an image."""
    v4 = nbformat.v4
    nb = v4.new_notebook()
    code = v4.new_code_cell("secret_code_marker = 1\nprint(value)", execution_count=1)
    code.outputs = [v4.new_output("stream", name="stdout", text=printed + "\n"),
                    v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    nb.cells = [v4.new_markdown_cell("# Report title\n\nvisible_markdown_marker"), code]
    nbformat.write(nb, str(path))
    return path


def write_kernel_state(run_dir: Path, checks: list[dict], records: dict | None = None) -> None:
    (run_dir / evidence.CHECKS_FILE).write_text(json.dumps(checks))
    (run_dir / evidence.STATE_FILE).write_text(json.dumps({"records": records or {}, "inputs": []}))


def _finalise(tmp_path: Path, printed: str = "all good", checks=None, error=None, secrets=(DSN, JWT)):
    outputs = tmp_path / "outputs"
    run_id, run_dir = evidence.new_run_dir(outputs, "demo", now=STARTED, run_id="feed01")
    write_kernel_state(run_dir, [{"name": "ok", "passed": True, "figures": {}, "detail": ""}] if checks is None else checks,
                       {"target": "duckdb:prod.duckdb", "plan_fingerprint": "fp1"})
    executed = executed_notebook(tmp_path / "executed.ipynb", printed)
    manifest = evidence.finalise(run_dir, executed, runbook="demo", run_id=run_id, parameters={"year": "2024/2025"},
                                 started_at=STARTED, error=error, scrubber=privacy.Scrubber(secrets), repo=tmp_path)
    return outputs, run_dir, manifest


def test_new_run_dir_layout(tmp_path):
    run_id, path = evidence.new_run_dir(tmp_path, "audit", now=datetime(2025, 8, 1, 6, 5, 4))
    assert re.fullmatch(r"[0-9a-f]{8}", run_id)
    assert path == tmp_path / "2025-08-01" / f"060504_audit_{run_id}" and path.is_dir()


def test_jsonable_converts_numpy_paths_dates_and_sets():
    import numpy as np

    value = {"n": np.int64(3), "p": Path("a/b"), "d": datetime(2025, 1, 2), "s": {"b", "a"}, "f": np.float64(0.5)}
    assert evidence.jsonable(value) == {"n": 3, "p": "a/b", "d": "2025-01-02T00:00:00", "s": ["a", "b"], "f": 0.5}


def test_finalise_writes_manifest_notebook_and_self_contained_report(tmp_path):
    outputs, run_dir, manifest = _finalise(tmp_path)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checks.json", "demo.ipynb", "manifest.json", "report.html"]
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert {k: on_disk[k] for k in ("runbook", "run_id", "status", "target", "plan_fingerprint", "error")} == {
        "runbook": "demo", "run_id": "feed01", "status": "passed", "target": "duckdb:prod.duckdb",
        "plan_fingerprint": "fp1", "error": None}
    assert evidence.CORE_KEYS - {"target"} <= set(on_disk)
    assert on_disk["git_commit"] is None  # tmp_path is not a git repository
    report = (run_dir / "report.html").read_text()
    assert "visible_markdown_marker" in report and "all good" in report
    assert "secret_code_marker" not in report  # no code cells
    assert "data:image/png;base64," in report
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", report)  # nothing fetched


def test_finalise_scrubs_known_secrets_and_keeps_the_run_passed(tmp_path):
    _, run_dir, manifest = _finalise(tmp_path, printed=f"dsn={DSN} key={JWT}")
    assert manifest["status"] == "passed"
    for path in run_dir.iterdir():
        text = path.read_text()
        assert "S3cretPassw0rd" not in text and JWT not in text, path.name


@pytest.mark.parametrize(
    ("printed", "kind"),
    [("contact zoe.x@example.org", "email"), ("token eyJabcdefgh.eyJijklmnop.sig_part", "jwt"),
     ("sb_secret_0123456789abcdef", "supabase_key")],
)
def test_finalise_fails_the_run_and_replaces_unknown_leaks(tmp_path, printed, kind):
    outputs, run_dir, manifest = _finalise(tmp_path, printed=printed)
    assert manifest["status"] == "failed" and manifest["error"].startswith("SecretLeak") and kind in manifest["error"]
    assert privacy.Scrubber([]).scan([run_dir]) == []
    leaked = printed.split()[-1]
    assert all(leaked not in p.read_text() for p in run_dir.iterdir())
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"


def test_finalise_records_failed_checks_and_errors(tmp_path):
    checks = [{"name": "dupes", "passed": False, "figures": {"n": 2}, "detail": ""}]
    _, _, manifest = _finalise(tmp_path, checks=checks, error="ValidationFailed: 1 of 1 checks failed: dupes")
    assert manifest["status"] == "failed" and manifest["checks"] == checks
    assert manifest["error"] == "ValidationFailed: 1 of 1 checks failed: dupes"


def test_finalise_without_executed_notebook_still_writes_manifest(tmp_path):
    outputs = tmp_path / "outputs"
    run_id, run_dir = evidence.new_run_dir(outputs, "demo")
    manifest = evidence.finalise(run_dir, None, runbook="demo", run_id=run_id, parameters={}, started_at=STARTED,
                                 error="DeadKernelError: kernel died", scrubber=privacy.Scrubber([]))
    assert (manifest["status"], manifest["notebook"], manifest["report"]) == ("failed", None, None)
    assert "demo" in (outputs / "index.html").read_text()


def _manifest(outputs: Path, runbook: str, started: datetime, status: str, target: str) -> Path:
    _, run_dir = evidence.new_run_dir(outputs, runbook, now=started)
    manifest = {"runbook": runbook, "run_id": run_dir.name[-8:], "status": status, "started_at": started.isoformat(),
                "target": target, "checks": [{"name": "a", "passed": status == "passed"}], "report": "report.html",
                "notebook": f"{runbook}.ipynb", "error": None if status == "passed" else "ValidationFailed: a"}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_index_lists_runs_newest_first_escaped_with_links(tmp_path):
    outputs = tmp_path / "outputs"
    old = _manifest(outputs, "audit", STARTED, "passed", "duckdb:a.duckdb")
    new = _manifest(outputs, "sync_check", STARTED + timedelta(days=1), "failed", "<script>alert(1)</script>")
    (outputs / "2025-08-01" / "junk").mkdir()
    (outputs / "2025-08-01" / "junk" / "manifest.json").write_text("{not json")
    page = evidence.write_index(outputs).read_text()
    rows = page[page.index("<tbody>"):]
    assert rows.index('data-runbook="sync_check"') < rows.index('data-runbook="audit"')
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<span class="failed">failed</span>' in page and '<span class="passed">passed</span>' in page
    for run_dir in (old, new):
        rel = run_dir.relative_to(outputs).as_posix()
        for name in ("report.html", "manifest.json"):
            assert f'href="{rel}/{name}"' in page
    assert "2 run(s)" in page and "http" not in page


# --- a run killed before it finished (docs/ARCHITECTURE.md "Evidence") -------------------------


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every descendant (the papermill kernel runs in its own session, so a kill of
    the process group would miss it). Returns the pids killed."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


@pytest.mark.notebook
def test_killed_run_leaves_a_running_manifest_shown_as_interrupted(tmp_path):
    """``vespa-ops run`` and its kernel SIGKILLed mid-run: the folder holds a manifest written at the start
    (status ``running``, parameters, start time), and the index shows the run as interrupted."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    outputs = tmp_path / "outputs"
    notebooks = Path(__file__).parent / "fixtures" / "notebooks"
    cli = subprocess.Popen([sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(notebooks), "--outputs",
                            str(outputs), "run", "selftest", "-p", "rows=3"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 60
    def kernel_up() -> bool:  # not any child (git, asked for the manifest's commit, comes first)
        for child in psutil.Process(cli.pid).children(recursive=True):
            try:
                if "ipykernel_launcher" in " ".join(child.cmdline()):
                    return True
            except psutil.Error:  # a child that has just exited
                continue
        return False

    while time.monotonic() < deadline and not kernel_up():
        time.sleep(0.05)  # the kernel is up: the run is under way
    killed = _kill_tree(cli.pid)
    assert len(killed) >= 2, "the kernel never started"
    folders = list(outputs.glob("*/*_selftest_*"))
    assert len(folders) == 1
    manifest = json.loads((folders[0] / evidence.MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["status"] == "running" and manifest["finished_at"] is None
    assert manifest["parameters"]["rows"] == 3 and manifest["pid"] == cli.pid
    page = evidence.write_index(outputs).read_text(encoding="utf-8")
    assert 'class="interrupted">interrupted' in page


def test_index_tells_running_from_interrupted(tmp_path):
    import os

    outputs = tmp_path / "outputs"
    from datetime import datetime

    # started now: a run still "running" after a day is shown as interrupted whatever its process
    alive = evidence.start_manifest(evidence.new_run_dir(outputs, "demo", run_id="a1")[1], runbook="demo",
                                    run_id="a1", parameters={}, started_at=datetime.now().astimezone(),
                                    scrubber=privacy.Scrubber([]))
    assert alive["status"] == "running" and alive["pid"] == os.getpid()
    dead_dir = evidence.new_run_dir(outputs, "demo", run_id="d1", now=STARTED)[1]
    dead = evidence.start_manifest(dead_dir, runbook="demo", run_id="d1", parameters={}, started_at=STARTED,
                                   scrubber=privacy.Scrubber([]))
    dead["pid"] = 2 ** 22 + 1  # above pid_max: no such process
    (dead_dir / evidence.MANIFEST_FILE).write_text(json.dumps(dead))
    page = evidence.write_index(outputs).read_text(encoding="utf-8")
    assert page.count('class="running">running') == 1 and page.count('class="interrupted">interrupted') == 1
