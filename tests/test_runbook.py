"""runbook: the parameters contract, in-notebook validation and the Run object."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from vespa_lib.errors import ParameterError, ValidationFailed, VespaError
from vespa_lib.ops import runbook

FIXTURES = Path(__file__).parent / "fixtures"
SELFTEST = FIXTURES / "notebooks" / "selftest.ipynb"


def test_parse_parameters_reads_names_types_defaults_and_help():
    params = {p.name: p for p in runbook.parse_parameters(SELFTEST)}
    assert list(params)[:3] == ["fail_check", "raise_error", "echo_env"]
    assert params["fail_check"] == runbook.Param("fail_check", "bool", False, "make the 'deliberate' check fail")
    assert params["echo_text"].type == "str | None" and params["echo_text"].default is None
    assert (params["rows"].type, params["rows"].default) == ("int", 3)
    assert (params["options"].type, params["options"].default) == ("dict", {})
    assert params["ratio"].help == "a float parameter"


def _notebook(tmp_path: Path, source: str, tagged: int = 1) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}) for _ in range(tagged)]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize(
    ("source", "tagged"),
    [("x: int = 1", 0), ("x: int = 1", 2), ("x = 1", 1), ("x: tuple = (1,)", 1), ("import os", 1)],
)
def test_parse_parameters_rejects_cells_outside_the_convention(tmp_path, source, tagged):
    with pytest.raises(ParameterError):
        runbook.parse_parameters(_notebook(tmp_path, source, tagged))


@pytest.mark.parametrize(
    ("value", "type_str", "ok"),
    [
        (True, "bool", True), ("false", "bool", False), (0, "bool", False),
        (3, "int", True), (True, "int", False), (3.0, "int", False),
        (3, "float", True), (2.5, "float", True), (False, "float", False),
        ("x", "str", True), (None, "str", False), (None, "str | None", True), ("x", "str | None", True),
        ({}, "dict", True), ([], "dict", False), ([1], "list", True), ("[1]", "list", False),
        (None, "int | None", True), (4, "int | None", True), ("4", "int | None", False),
    ],
)
def test_type_matches(value, type_str, ok):
    assert runbook.type_matches(value, type_str) is ok


def test_annotation_str_renders_ipython_annotations():
    assert [runbook.annotation_str(a) for a in (int, str | None, "list", None)] == ["int", "str | None", "list", "None"]


def test_validate_reports_every_problem_at_once():
    with pytest.raises(ParameterError) as err:
        runbook.validate({"apply": "bool", "n": "int"}, {"apply": "false", "n": 2, "bogus": 1, "x": 2}, secrets=[])
    message = str(err.value)
    assert "unknown parameter 'bogus'" in message and "unknown parameter 'x'" in message
    assert "'apply' must be bool, got str 'false'" in message and "'n'" not in message.split("Declared")[0]


@pytest.mark.parametrize(
    "value",
    ["postgresql://u:S3cretPassw0rd@localhost/db", "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.sig", "sb_secret_abcdefgh1234",
     "my-known-secret-value", {"nested": ["my-known-secret-value"]}],
)
def test_validate_refuses_secret_values(value):
    with pytest.raises(ParameterError, match="holds a secret"):
        runbook.validate({"target": "str | dict"}, {"target": value}, secrets=["my-known-secret-value"])


def test_validate_accepts_env_var_names_and_plain_values():
    runbook.validate({"target": "str", "year": "str"}, {"target": "VESPA_DSN", "year": "2024/2025"}, secrets=["S3cret!"])


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    """An unattended run folder as vespa-ops would set it up."""
    monkeypatch.setenv("VESPA_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("VESPA_RUN_ID", "abc123")
    monkeypatch.setenv("VESPA_UNATTENDED", "1")
    return tmp_path / "run"


def _namespace(**values):
    ns = {"__annotations__": {"apply": bool, "note": str | None, "unmask_pii": bool}, "__name__": "__main__",
          "In": [], "Out": {}, "get_ipython": print, "runbook": runbook, "pd": pd, "Path": Path}
    ns.update({"apply": False, "note": None, "unmask_pii": False}, **values)
    return ns


def test_start_returns_the_run_of_the_cli_folder(run_env):
    run = runbook.start("selftest", _namespace(apply=True))
    assert (run.run_id, run.dir, run.params) == ("abc123", run_env, {"apply": True, "note": None, "unmask_pii": False})
    assert run.unattended and run_env.is_dir()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [({"bogus": 1}, "unknown parameter 'bogus'"), ({"apply": "false"}, "'apply' must be bool"),
     ({"note": 5}, "'note' must be str | None")],
)
def test_start_rejects_unknown_and_mistyped_parameters(run_env, values, fragment):
    with pytest.raises(ParameterError, match=fragment):
        runbook.start("selftest", _namespace(**values))


def test_run_checks_tables_inputs_records_and_verdict(run_env, tmp_path, capsys):
    run = runbook.start("selftest", _namespace())
    frame = pd.DataFrame({"email": ["anna.smith@school.ac.uk"], "full_name": ["Anna Smith"], "note": ["=1+1"]})
    csv = run.save_table(frame, "students")
    assert csv.read_text().splitlines() == ["email,full_name,note", "a***@school.ac.uk,A.S.,'=1+1"]
    data = tmp_path / "input.csv"
    data.write_bytes(b"a,b\n1,2\n")
    assert run.add_input(data) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    run.record("target", "duckdb:x.duckdb")
    run.record("counts", {"students": 1})
    with pytest.raises(VespaError, match="set by the workbook"):
        run.record("status", "passed")
    assert run.check("ok", True, figures={"n": pd.Series([1]).sum()})
    assert not run.check("bad", False, detail="2 duplicates")
    with pytest.raises(ValidationFailed) as err:
        run.verdict()
    assert err.value.failed == ["bad"]
    checks = json.loads((run_env / "checks.json").read_text())
    assert checks == [{"name": "ok", "passed": True, "figures": {"n": 1}, "detail": ""},
                      {"name": "bad", "passed": False, "figures": {}, "detail": "2 duplicates"}]
    assert "FAIL  bad: 2 duplicates" in capsys.readouterr().out
    assert not (run_env / "manifest.json").exists()  # unattended: the CLI writes the manifest


def test_verdict_with_no_checks_fails(run_env):
    with pytest.raises(ValidationFailed, match="no checks"):
        runbook.start("selftest", _namespace()).verdict()


@pytest.mark.parametrize(("unmask", "unattended", "masked"), [(False, False, True), (True, False, False), (True, True, True)])
def test_show_masks_unless_unmasked_interactively(tmp_path, monkeypatch, capsys, unmask, unattended, masked):
    monkeypatch.setenv("VESPA_OUTPUTS", str(tmp_path / "outputs"))
    for name in ("VESPA_RUN_DIR", "VESPA_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VESPA_UNATTENDED", "1" if unattended else "0")
    run = runbook.start("selftest", _namespace(unmask_pii=unmask))
    run.show(pd.DataFrame({"email": ["anna.smith@school.ac.uk"]}), "Students")
    out = capsys.readouterr().out
    assert ("a***@school.ac.uk" in out) is masked and ("anna.smith@school.ac.uk" in out) is not masked


def test_interactive_run_makes_its_own_folder_and_manifest(tmp_path, monkeypatch):
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("VESPA_OUTPUTS", str(outputs))
    for name in ("VESPA_RUN_DIR", "VESPA_RUN_ID", "VESPA_UNATTENDED"):
        monkeypatch.delenv(name, raising=False)
    run = runbook.start("selftest", _namespace())
    assert run.dir.parent.parent == outputs and run.dir.name.endswith(f"_selftest_{run.run_id}")
    run.check("ok", True)
    run.verdict()
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["unattended"], manifest["run_id"]) == ("passed", False, run.run_id)
    assert "selftest" in (outputs / "index.html").read_text()


def test_find_outputs_walks_up_to_the_folder_holding_notebooks(tmp_path, monkeypatch):
    monkeypatch.delenv("VESPA_OUTPUTS", raising=False)
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    assert runbook.find_outputs(tmp_path / "notebooks" / "deep") == tmp_path / "outputs"


@pytest.mark.notebook
def test_papermill_with_bogus_or_mistyped_parameter_fails_inside_the_notebook(tmp_path, monkeypatch):
    """papermill alone only warns about unknown names; the notebook's first cell must refuse them."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    monkeypatch.setenv("VESPA_OUTPUTS", str(tmp_path / "outputs"))
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(SELFTEST), str(out), parameters={"bogus": 1, "fail_check": "false"},
                                   kernel_name="vespa", cwd=str(FIXTURES), progress_bar=False, execution_timeout=120)
    assert err.value.ename == "ParameterError"
    assert "unknown parameter 'bogus'" in err.value.evalue and "'fail_check' must be bool" in err.value.evalue
    assert not (tmp_path / "outputs").exists()  # refused before any evidence folder was made


def test_module_docstring_documents_the_conventions():
    doc = runbook.__doc__
    for phrase in ("parameters", "runbook.start", "run.check", "run.verdict()", "unmask_pii", "run.record(\"target\""):
        assert phrase in doc, phrase
