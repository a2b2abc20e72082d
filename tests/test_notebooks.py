"""Every runbook follows the contract (SPEC.md §6, STYLE.md): one parameters cell with typed, documented
parameters, validation right after it, no logic in the notebook, a verdict cell last, no outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from vespa_lib import runbook

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
