"""The evidence index and a report, opened in a real headless Chromium (SPEC.md §8)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest

from vespa_lib import evidence, privacy

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
