"""Every runbook follows the contract (docs/ARCHITECTURE.md, “Runbooks”, docs/ARCHITECTURE.md): one parameters cell with typed, documented
parameters, validation right after it, no logic in the notebook, a verdict cell last, no outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml

from vespa_lib.ops import runbook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_runbooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= {"audit", "csv_profile"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_with_typed_documented_parameters(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = runbook.parse_parameters(path)
    assert params, "a runbook declares at least one parameter"
    for p in params:
        assert p.type and p.help, f"{path.stem}.{p.name} needs a type and a help comment"
    names = {p.name for p in params}
    assert "target" in names or "snapshot_dir" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_validation_follows_parameters_and_verdict_is_last(path):
    nb = nbformat.read(path, as_version=4)
    code = _code(nb)
    idx = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert f'runbook.start("{path.stem}", globals())' in code[idx + 1].source
    assert code[-1].source.strip().endswith("run.verdict()")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_def_or_class_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in _code(nb):
        tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        bad = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)]
        assert not bad, f"{path.stem}: logic belongs in vespa_lib, not in notebook cells"
        assert not cell.get("outputs"), f"{path.stem}: commit notebooks without outputs"
        assert cell.get("execution_count") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_is_introduced_by_markdown(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", "a runbook opens with what it does and why"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3


# --- the same kernel, papermill's parameter reading, defaults that work in JupyterLab --------

REPO = Path(__file__).resolve().parents[1]
WRITE_SWITCHES = {"mode": ("plan", "validate"), "approve": ("",)}  # read-only values of the write switches


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_runbook_declares_the_project_kernel(path):
    spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
    assert (spec.get("name"), spec.get("display_name"), spec.get("language")) == ("vespa", "VESPA workbook", "python")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_without_warnings(path, caplog):
    # A line papermill cannot parse is dropped from its list, and each run then warns
    # "Passed unknown parameter" for it (noise in every night's cron log).
    import papermill

    with caplog.at_level("WARNING", logger="papermill"):
        found = list(papermill.inspect_notebook(str(path)))
    assert found == [p.name for p in runbook.parse_parameters(path)]
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("papermill")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_defaults_are_the_demo_parameters_read_only(path):
    # Opened in JupyterLab right after `make demo`, a runbook runs as is on the demo data: its defaults
    # are params/demo/<name>.yaml, with the write switches at their read-only values.
    demo = yaml.safe_load((REPO / "params" / "demo" / f"{path.stem}.yaml").read_text())
    defaults = {p.name: p.default for p in runbook.parse_parameters(path)}
    assert set(demo) <= set(defaults), f"params/demo/{path.stem}.yaml names undeclared parameters"
    for name, value in demo.items():
        if name in WRITE_SWITCHES:
            assert defaults[name] in WRITE_SWITCHES[name], f"{path.stem}.{name} must default to read-only"
        else:
            assert defaults[name] == value, f"{path.stem}.{name}: default {defaults[name]!r}, demo {value!r}"
    assert defaults.get("unmask_pii", False) is False


@pytest.mark.notebook
def test_runbook_opened_in_jupyterlab_reads_paths_from_the_repository(tmp_path, monkeypatch):
    # JupyterLab starts the kernel in notebooks/; the defaults name paths from the repository root.
    import papermill

    from vespa_lib.ops.kernel import InterpreterKernelManager
    from vespa_lib.sandbox import synth

    for name in ("VESPA_ROOT", "VESPA_OUTPUTS", "VESPA_RUN_DIR", "VESPA_RUN_ID", "VESPA_UNATTENDED"):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    source = REPO / "notebooks" / "csv_profile.ipynb"
    synth.generate(repo / "data" / "demo", seed=2025, students=150)
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(source), str(executed), kernel_name="vespa", cwd=str(repo / "notebooks"),
                               progress_bar=False, execution_timeout=300,
                               kernel_manager_class=InterpreterKernelManager)  # registered or not
    (manifest,) = (repo / "outputs").glob("*/*_csv_profile_*/manifest.json")
    assert '"status": "passed"' in manifest.read_text()
