"""Progress a person can see, and quiet nightly logs (docs/OPERATIONS.md, "Reading a run").

``vespa-ops run`` prints one line per runbook section (its ``## …`` headings) with its duration, a failed
run says in one line what failed, in which section, and where the evidence is, and stderr carries no
warnings (a cron job's ``>> cron.log 2>&1`` captures both). Inside the library the long steps draw
tqdm bars in an interactive kernel and nothing in an unattended run: no tqdm warning in any report.

The command runs are real ``vespa-ops`` processes started together, so the file costs about one
papermill start-up's wall time per batch.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest

from vespa_lib.ops import sections
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.fresh import generate_fresh_export
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.plan import Desired, plan_changes

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
VESPA_OPS = Path(sys.executable).with_name("vespa-ops")
NOISE = ("WARNING", "Warning", "Unable to parse", "ERROR")
SECTION_RE = re.compile(r"^  \[(?P<runbook>\w+)\] (?P<title>.+?) \.\.\. (?P<end>FAILED after )?"
                        r"(?P<took>\d+\.\d s|\d+ min \d\d s)$")


def headings(notebook: Path) -> list[str]:
    """The runbook's sections as the log names them: ``Start``, then every ``## `` heading."""
    nb = nbformat.read(notebook, as_version=4)
    return [sections.START] + [t for t in map(sections.section_title, nb.cells) if t]


def section_lines(stdout: str) -> list[re.Match]:
    return [m for m in map(SECTION_RE.match, stdout.splitlines()) if m]


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in NOISE)]


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(VESPA_OPS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ), cwd=REPO)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


# --- the section log on its own (a clock that ticks one second per reading) ---------------------------

def test_section_log_names_each_heading_with_its_duration_and_the_failing_section():
    ticks = iter(range(100))
    stream = io.StringIO()
    log = sections.SectionLog("demo", stream, clock=lambda: float(next(ticks)))
    cells = [nbformat.v4.new_markdown_cell("# Title\nwhat it does"), nbformat.v4.new_code_cell("x = 1"),
             nbformat.v4.new_markdown_cell("## 1. Read `the` file\nwhy"), nbformat.v4.new_code_cell("y"),
             nbformat.v4.new_markdown_cell("### a sub-heading is not a section"),
             nbformat.v4.new_markdown_cell("## 2. Apply")]
    for i, cell in enumerate(cells):
        log.on_cell_start(cell, i)
    log.on_cell_done(cells[-1], 5)
    assert log.finish("GuardRefused: no") == "2. Apply"
    assert stream.getvalue().splitlines() == ["  [demo] Start ... 1.0 s", "  [demo] 1. Read the file ... 1.0 s",
                                              "  [demo] 2. Apply ... FAILED after 1.0 s"]
    assert sections.duration(185.2) == "3 min 05 s" and sections.duration(59.94) == "59.9 s"


# --- the self-test runbook through vespa-ops ------------------------------------------------------------

@pytest.fixture(scope="module")
def selftest_runs(tmp_path_factory):
    """A passing and a raising run of the self-test runbook: {name: (exit code, stdout, stderr)}."""
    base = tmp_path_factory.mktemp("progress_selftest")
    data = base / "input.csv"
    data.write_text("a,b\n1,2\n")
    common = ["--notebooks", str(FIXTURES), "--outputs", str(base / "outputs"), "run", "selftest",
              "-p", f"input_path={data}"]  # input_path is `str | None`: papermill cannot read it
    procs = {"passed": start(common), "raised": start([*common, "-p", "raise_error=true"])}
    return {name: finish(proc) for name, proc in procs.items()}


@pytest.mark.notebook
def test_run_prints_each_section_in_order_with_its_duration_and_no_warnings(selftest_runs):
    code, out, err = selftest_runs["passed"]
    assert code == 0, out + err
    found = section_lines(out)
    assert [m["title"] for m in found] == headings(FIXTURES / "selftest.ipynb")
    assert all(m["runbook"] == "selftest" and not m["end"] for m in found)
    assert not noise(err), err
    assert out.splitlines()[-2] == "selftest: PASSED (2/2 checks passed)"


@pytest.mark.notebook
def test_failed_run_says_in_one_line_what_failed_where_and_the_evidence_folder(selftest_runs):
    code, out, err = selftest_runs["raised"]
    lines = out.splitlines()
    folder = Path(lines[-1])
    assert code == 1 and (folder / "manifest.json").is_file()
    assert section_lines(out)[-1]["title"] == "Checks" and section_lines(out)[-1]["end"]
    assert lines[-2] == (f'selftest: FAILED at "Checks": RuntimeError: selftest asked to raise before the verdict '
                         f"(2/2 checks passed) — evidence {folder}")
    assert not noise(err), err


# --- a real runbook on generated data -------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A migrated demo-shaped database with 2024/2025 archived, and the current year's fresh export."""
    out = tmp_path_factory.mktemp("progress_world")
    synth.generate(out, students=150, seed=2025)
    generate_fresh_export(out)
    con = duckdb.connect(str(out / "production.duckdb"))
    for archive in ([], ["2024/2025"]):
        want = Desired({}, years=["2024/2025"])
        plan = plan_changes(con, want, archive_years=archive)
        apply_plan(con, want, approve=plan.fingerprint, run_id=f"setup{len(archive)}", runbook="test",
                   actor="pytest", recompute=False, archive_years=archive)
    con.close()
    return out


@pytest.fixture(scope="module")
def sync_runs(world, tmp_path_factory):
    """sync_check with params/demo in plan mode, and in apply mode with a wrong approval, on a server
    without ipywidgets (an environment installed before it was a dependency: a stand-in package that
    fails to import comes first on the path). {name: (exit code, stdout, stderr, outputs)}."""
    base = tmp_path_factory.mktemp("progress_sync")
    shim = base / "shim" / "ipywidgets"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('ipywidgets is not installed on this server')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")])))
    procs = {}
    for name, extra in {"plan": ["-p", "mode=plan", "-p", "approve="],
                        "refused": ["-p", "mode=apply", "-p", "approve=0123456789abcdef"]}.items():
        target = base / f"{name}.duckdb"
        shutil.copy(world / "production.duckdb", target)
        args = ["--outputs", str(base / name), "run", "sync_check", "-f", "params/demo/sync_check.yaml",
                "-p", f"source=csv:{world / 'fresh_export'}", "-p", f"target=duckdb:{target}", *extra]
        procs[name] = (start(args, env), base / name)
    return {name: (*finish(proc), outputs) for name, (proc, outputs) in procs.items()}


@pytest.mark.notebook
def test_sync_check_prints_its_sections_and_its_report_has_no_tqdm_warning(sync_runs):
    code, out, err, outputs = sync_runs["plan"]
    assert code == 0, out + err
    assert [m["title"] for m in section_lines(out)] == headings(REPO / "notebooks" / "sync_check.ipynb")
    assert not noise(err), err
    (report,) = outputs.glob("*/*/report.html")
    text = report.read_text(encoding="utf-8")
    assert "TqdmWarning" not in text and "IProgress" not in text


@pytest.mark.notebook
def test_a_refused_apply_names_the_apply_section_and_the_evidence(sync_runs):
    code, out, err, outputs = sync_runs["refused"]
    lines = out.splitlines()
    (manifest,) = outputs.glob("*/*/manifest.json")
    assert code == 1 and Path(lines[-1]) == manifest.parent
    failed = section_lines(out)[-1]
    assert failed["end"] and failed["title"].startswith("6. Apply")
    summary = lines[-2]
    assert summary.startswith(f'sync_check: FAILED at "{failed["title"]}": ') and "GuardRefused" in summary
    assert summary.endswith(f" — evidence {manifest.parent}")
    assert not noise(err), err


# --- bars in an interactive session, none unattended -------------------------------------------------------

def _bar_notebook(path: Path, snapshot_dir: Path) -> None:
    """A notebook reading the snapshot (a long step of the library), as a person would in JupyterLab."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"from vespa_lib.sources import snapshot\nsnap = snapshot.open_snapshot({str(snapshot_dir)!r})\n"
        "from tqdm.auto import tqdm\nprint(*[c.__module__ for c in tqdm.__mro__])")])
    nbformat.write(nb, path)


@pytest.mark.notebook
@pytest.mark.parametrize("unattended", [False, True], ids=["interactive", "unattended"])
def test_library_steps_draw_notebook_bars_interactively_and_nothing_unattended(world, tmp_path, monkeypatch,
                                                                               unattended):
    import papermill

    from vespa_lib.ops.kernel import InterpreterKernelManager

    monkeypatch.delenv("VESPA_UNATTENDED", raising=False)
    if unattended:
        monkeypatch.setenv("VESPA_UNATTENDED", "1")
    source, executed = tmp_path / "bars.ipynb", tmp_path / "executed.ipynb"
    _bar_notebook(source, world / "snapshot")
    papermill.execute_notebook(str(source), str(executed), kernel_name="vespa", cwd=str(tmp_path),
                               progress_bar=False, execution_timeout=300,
                               kernel_manager_class=InterpreterKernelManager)
    outputs = nbformat.read(executed, as_version=4).cells[0].outputs
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "TqdmWarning" not in stderr and "IProgress" not in stderr
    assert "tqdm.notebook" in "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    if unattended:
        assert not widgets and not stderr
    else:
        assert any("Reading the snapshot" in w["data"].get("text/plain", "") for w in widgets), outputs
