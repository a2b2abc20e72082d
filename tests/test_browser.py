"""The evidence index and a report, opened in a real headless Chromium (docs/ARCHITECTURE.md, “Evidence and privacy”)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest

from vespa_lib.ops import evidence, privacy

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium not found; install it (apt-get install chromium) to run the browser tests.")


def _browse(tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    args = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def evidence_folder(tmp_path_factory):
    """Two finalised runs (one passed, one failed) in a fresh outputs folder; returns (outputs, passed run)."""
    base = tmp_path_factory.mktemp("browser")
    outputs = base / "outputs"
    folders = {}
    for runbook, passed in (("audit", True), ("sync_check", False)):
        v4 = nbformat.v4
        nb = v4.new_notebook()
        code = v4.new_code_cell("browser_code_marker = 1", execution_count=1)
        code.outputs = [v4.new_output("stream", name="stdout", text=f"{runbook} found 12 rows\n")]
        nb.cells = [v4.new_markdown_cell(f"# {runbook} runbook\n\nBrowser-visible narrative."), code]
        executed = base / f"{runbook}.ipynb"
        nbformat.write(nb, str(executed))
        run_id, run_dir = evidence.new_run_dir(outputs, runbook)
        (run_dir / evidence.CHECKS_FILE).write_text(json.dumps([{"name": "c", "passed": passed, "figures": {}, "detail": ""}]))
        evidence.finalise(run_dir, executed, runbook=runbook, run_id=run_id, parameters={},
                          started_at=datetime.now(UTC), error=None, scrubber=privacy.Scrubber([]))
        folders[runbook] = run_dir
    return outputs, folders["audit"]


def test_index_renders_runbooks_and_statuses(tmp_path, evidence_folder):
    outputs, _ = evidence_folder
    done = _browse(tmp_path, outputs / "index.html", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VESPA evidence index" in done.stdout
    for text in ("audit", "sync_check", ">passed<", ">failed<", "report.html"):
        assert text in done.stdout, text


def test_report_renders_narrative_without_code(tmp_path, evidence_folder):
    _, run_dir = evidence_folder
    done = _browse(tmp_path, run_dir / "report.html", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "audit runbook" in done.stdout and "audit found 12 rows" in done.stdout
    assert "browser_code_marker" not in done.stdout


def test_index_screenshot_is_a_real_png(tmp_path, evidence_folder):
    outputs, _ = evidence_folder
    shot = tmp_path / "index.png"
    done = _browse(tmp_path, outputs / "index.html", f"--screenshot={shot}", "--window-size=1280,900")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR: the page was laid out at the window size
    assert (width, height) == (1280, 900)


@pytest.fixture(scope="module")
def mixed_index(tmp_path_factory, evidence_folder):
    """The two finalised runs plus a killed run (manifest still ``running``, its process gone) and a
    rollover rehearsal on a temporary copy; returns the outputs folder with its index rebuilt."""
    outputs, _ = evidence_folder
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = datetime.now(UTC)
    _, killed = evidence.new_run_dir(outputs, "import", now=now.replace(microsecond=0))
    (killed / "manifest.json").write_text(json.dumps({
        "runbook": "import", "run_id": "killed01", "status": "running", "started_at": now.isoformat(),
        "parameters": {"mode": "apply", "academic_year": "2024/2025"}, "checks": [], "pid": gone.pid,
        "host": socket.gethostname(), "target": None}))
    _, rehearsal = evidence.new_run_dir(outputs, "year_transition")
    (rehearsal / "manifest.json").write_text(json.dumps({
        "runbook": "year_transition", "run_id": "rehears1", "status": "passed", "started_at": now.isoformat(),
        "parameters": {"mode": "rollover", "target": "duckdb:data/demo/production.duckdb"},
        "target": "duckdb:/tmp/vespa-rehearsal-abc/production.duckdb",
        "rehearsal_copy": "/tmp/vespa-rehearsal-abc/production.duckdb", "write_committed": True,
        "written": {"rollover": {"close": "2025/2026", "open": "2026/2027"}, "marked": {"students": 1284}},
        "checks": [{"name": "rollover_applied", "passed": True}]}))
    evidence.write_index(outputs)
    return outputs


def _rows(dom: str) -> dict[str, list[str]]:
    """Each index row's opening tag, by runbook."""
    rows: dict[str, list[str]] = {}
    for tag in re.findall(r"<tr data-runbook=[^>]*>", dom):
        rows.setdefault(re.search(r'data-runbook="([^"]*)"', tag).group(1), []).append(tag)
    return rows


def test_index_filter_by_runbook_hides_the_other_runs(tmp_path, mixed_index):
    index = mixed_index / "index.html"
    done = _browse(tmp_path, index, "--dump-dom")
    shown = _rows(done.stdout)
    assert set(shown) == {"audit", "sync_check", "import", "year_transition"}
    assert not any("hidden" in tag for tags in shown.values() for tag in tags)  # no filter: every run
    filtered = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom",
                               index.as_uri() + "#runbook=audit"], capture_output=True, text=True, timeout=90)
    rows = _rows(filtered.stdout)
    assert rows["audit"] and not any("hidden" in tag for tag in rows["audit"])
    assert all("hidden" in tag for name in ("sync_check", "import", "year_transition") for tag in rows[name])
    assert '<option value="audit">audit</option>' in filtered.stdout


def test_index_shows_mode_year_rows_interrupted_and_rehearsal(tmp_path, mixed_index):
    done = _browse(tmp_path, mixed_index / "index.html", "--dump-dom")
    dom = done.stdout
    for header in ("Mode", "Academic year", "Rows written"):
        assert f"<th>{header}</th>" in dom
    killed = dom[dom.index('data-runbook="import"'):]
    killed = killed[: killed.index("</tr>")]
    assert '<span class="interrupted">interrupted</span>' in killed and "<td>apply</td><td>2024/2025</td>" in killed
    roll = dom[dom.index('data-runbook="year_transition"'):]
    roll = roll[: roll.index("</tr>")]
    assert '<span class="rehearsal">rehearsal</span> rehearsal copy of duckdb:data/demo/production.duckdb' in roll
    assert "vespa-rehearsal-abc" not in roll and "<td>rollover</td><td>2025/2026 → 2026/2027</td>" in roll
    assert '<td class="n">1,284</td>' in roll


def test_report_opens_with_the_verdict_box(tmp_path, evidence_folder):
    _, run_dir = evidence_folder
    done = _browse(tmp_path, run_dir / "report.html", "--dump-dom")
    dom = done.stdout
    assert dom.index('id="verdict"') < dom.index("audit runbook")
    assert "PASSED: audit" in dom and "Nothing written (read-only)" in dom
