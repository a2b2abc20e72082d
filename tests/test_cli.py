"""vespa-ops: refusing bad parameters before running, and whole runs through papermill.

The executed runs start together as real ``vespa-ops`` processes (one module-scoped batch) so the
file costs one papermill start-up's wall time rather than four.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vespa_lib.ops import cli

NOTEBOOKS = Path(__file__).parent / "fixtures" / "notebooks"
VESPA_OPS = Path(sys.executable).with_name("vespa-ops")
DSN = "postgresql://u:S3cretPassw0rd@localhost/db"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlX3BhcnQ"


def _main(tmp_path: Path, *args: str) -> int:
    return cli.main(["--notebooks", str(NOTEBOOKS), "--outputs", str(tmp_path / "outputs"), *args])


# --- refused before anything runs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "fragment"),
    [
        ("bogus: 1\n", [], "unknown parameter 'bogus'"),
        ("fail_check: 'false'\n", [], "'fail_check' must be bool, got str 'false'"),
        ("", ["fail_check='false'"], "'fail_check' must be bool"),
        ("", ["rows=2.5"], "'rows' must be int"),
        ("", ["echo_text=postgresql://admin:Pw123456@db.example.org/x"], "'echo_text' holds a secret"),
        ("- a\n- b\n", [], "must be a YAML mapping"),
        ("", ["novalue"], "is not NAME=VALUE"),
    ],
)
def test_run_refuses_bad_parameters_before_executing(tmp_path, capsys, yaml_text, overrides, fragment):
    params = tmp_path / "p.yaml"
    params.write_text(yaml_text)
    args = ["run", "selftest", "-f", str(params)] + [x for o in overrides for x in ("-p", o)]
    assert _main(tmp_path, *args) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()  # nothing ran, so no evidence folder


def test_run_refuses_a_parameter_equal_to_an_environment_secret(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VESPA_TEST_DSN", DSN)
    assert _main(tmp_path, "run", "selftest", "-p", f"echo_text={DSN}") == 2
    assert "holds a secret" in capsys.readouterr().err


def test_run_unknown_runbook_names_the_available_ones(tmp_path, capsys):
    assert _main(tmp_path, "run", "nope") == 2
    assert "available: ['selftest']" in capsys.readouterr().err


def test_list_shows_parameters_types_defaults_and_help(tmp_path, capsys):
    assert _main(tmp_path, "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "selftest"
    assert "  fail_check: bool = False  # make the 'deliberate' check fail" in out
    assert "  echo_text: str | None = None  # text printed verbatim (exercises the PII scan)" in out


@pytest.mark.postgres
def test_undo_plans_then_applies_only_with_the_fingerprint(tmp_path, capsys, pg_dsn, monkeypatch):
    """`vespa-ops undo` (docs/ARCHITECTURE.md, “Guarded writes”): without --approve it only prints the plan; with the printed
    fingerprint it reverses the run exactly; a wrong fingerprint writes nothing."""
    import psycopg
    from test_plan import EST_A, OLD, desired, migrate, seed, students

    from vespa_lib.write import guard

    con = psycopg.connect(pg_dsn, autocommit=True)
    seed(con)
    migrate(con)
    tables = ["students", "vespa_scores", "question_responses"]
    before = guard.table_checksums(con, tables)
    want = desired(students(OLD, EST_A, 3))
    from vespa_lib.write.plan import plan_changes

    plan = plan_changes(con, want)
    guard.apply_plan(con, want, approve=plan.fingerprint, run_id="run-to-undo", runbook="test", actor="pytest",
                     recompute=False)
    assert guard.table_checksums(con, tables) != before
    monkeypatch.setenv("VESPA_TEST_UNDO_DSN", pg_dsn)
    target = "postgres:VESPA_TEST_UNDO_DSN"
    capsys.readouterr()
    assert _main(tmp_path, "undo", "run-to-undo", "--target", target) == 0
    out = capsys.readouterr().out
    fingerprint = out.split("Undo plan fingerprint: ")[1].split()[0]
    assert "Nothing written" in out and guard.table_checksums(con, tables) != before
    assert _main(tmp_path, "undo", "run-to-undo", "--target", target, "--approve", "0" * 64) != 0
    assert guard.table_checksums(con, tables) != before
    assert _main(tmp_path, "undo", "run-to-undo", "--target", target, "--approve", fingerprint) == 0
    assert guard.table_checksums(con, tables) == before
    assert pg_dsn.split("@")[0] not in capsys.readouterr().out
    con.close()


def test_load_parameters_reads_yaml_then_overrides(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("rows: 3\noptions: {a: 1}\n")
    values = cli.load_parameters(params, ["rows=4", "fail_check=true", "echo_env=[A, B]", "echo_text="])
    assert values == {"rows": 4, "options": {"a": 1}, "fail_check": True, "echo_env": ["A", "B"], "echo_text": None}


# --- executed runs ---------------------------------------------------------------------------

RUNS = {
    "passed": ["-p", "options={a: 1}"],
    "failed_check": ["-p", "fail_check=true"],
    "raised": ["-p", "raise_error=true"],
    "leaky": ["-p", "echo_env=[VESPA_TEST_DSN, SUPABASE_KEY]", "-p", "echo_text=contact zoe.x@example.org now"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each scenario of RUNS as a real vespa-ops process: {name: (exit code, stdout lines, outputs folder)}."""
    base = tmp_path_factory.mktemp("cli_runs")
    data = base / "input.csv"
    data.write_text("a,b\n1,2\n")
    env = dict(os.environ, VESPA_TEST_DSN=DSN, SUPABASE_KEY=JWT)
    procs = {}
    for name, extra in RUNS.items():
        outputs = base / name
        args = [str(VESPA_OPS), "--notebooks", str(NOTEBOOKS), "--outputs", str(outputs), "run", "selftest",
                "--timeout", "120", "-p", f"input_path={data}", *extra]
        procs[name] = (subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                       outputs)
    results = {}
    for name, (proc, outputs) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out.strip().splitlines(), outputs, err)
    return results


def _evidence(runs, name):
    code, lines, outputs, err = runs[name]
    folder = Path(lines[-1])
    return code, folder, json.loads((folder / "manifest.json").read_text()), outputs


@pytest.mark.notebook
def test_passing_run_writes_complete_evidence(runs):
    code, folder, manifest, outputs = _evidence(runs, "passed")
    assert code == 0, runs["passed"]
    assert folder.parent.parent == outputs and folder.name.endswith(f"_selftest_{manifest['run_id']}")
    assert (manifest["status"], manifest["error"], manifest["unattended"]) == ("passed", None, True)
    assert [c["name"] for c in manifest["checks"]] == ["rows_present", "deliberate"]
    assert manifest["parameters"]["options"] == {"a": 1} and manifest["parameters"]["rows"] == 3  # default kept
    assert manifest["inputs"][0]["bytes"] == 8 and len(manifest["inputs"][0]["sha256"]) == 64
    assert manifest["target"] == "duckdb:selftest.duckdb (no credentials)" and manifest["counts"] == {"rows": 3}
    assert not (folder / "_run_state.json").exists()
    report = (folder / "report.html").read_text()
    assert "SELFTEST_MARKDOWN_MARKER" in report and "CODE_ONLY_MARKER" not in report
    assert "a***@school.ac.uk" in report and "anna.smith" not in report
    assert (folder / "students.csv").read_text().splitlines()[3].startswith("'=cmd")
    index = (outputs / "index.html").read_text()
    assert "selftest" in index and '<span class="passed">passed</span>' in index
    assert f"{folder.relative_to(outputs).as_posix()}/report.html" in index


@pytest.mark.notebook
@pytest.mark.parametrize(("name", "error_start"), [("failed_check", "ValidationFailed: 1 of 2 checks failed: deliberate"),
                                                   ("raised", "RuntimeError: selftest asked to raise")])
def test_failing_runs_exit_nonzero_and_still_write_evidence(runs, name, error_start):
    code, folder, manifest, outputs = _evidence(runs, name)
    assert code == 1
    assert manifest["status"] == "failed" and manifest["error"].startswith(error_start)
    assert (folder / "report.html").is_file() and (folder / "selftest.ipynb").is_file()
    assert '<span class="failed">failed</span>' in (outputs / "index.html").read_text()


@pytest.mark.notebook
def test_secrets_and_emails_never_reach_the_evidence(runs):
    code, folder, manifest, _ = _evidence(runs, "leaky")
    files = [p for p in folder.iterdir() if p.is_file()]
    for path in files:
        text = path.read_text(errors="replace")
        assert "S3cretPassw0rd" not in text and JWT not in text and "zoe.x@example.org" not in text, path.name
    assert "[secret removed]" in (folder / "selftest.ipynb").read_text()  # it was printed, then scrubbed
    assert "z***@example.org" in (folder / "report.html").read_text()
    assert code == 1 and manifest["status"] == "failed" and manifest["error"].startswith("SecretLeak")
    assert "email" in manifest["error"]


@pytest.mark.notebook
def test_index_subcommand_rebuilds_from_manifests(runs, capsys):
    _, folder, _, outputs = _evidence(runs, "passed")
    (outputs / "index.html").unlink()
    assert cli.main(["--outputs", str(outputs), "index"]) == 0
    assert capsys.readouterr().out.strip() == str(outputs / "index.html")
    assert folder.name.split("_")[-1] in (outputs / "index.html").read_text()


@pytest.mark.notebook
def test_an_empty_override_of_a_text_parameter_is_the_empty_text(tmp_path, capsys):
    """`-p approve=` (as in `vespa-ops run sync_check -p mode=plan -p approve=`) means "no approval", the
    parameter's empty text, not a refused None: the run starts (and here fails on its missing target)."""
    repo = Path(__file__).resolve().parent.parent
    code = cli.main(["--notebooks", str(repo / "notebooks"), "--outputs", str(tmp_path / "outputs"), "run",
                     "sync_check", "-p", "mode=plan", "-p", "approve=", "-p", f"target=duckdb:{tmp_path / 'no.duckdb'}"])
    assert "must be str" not in capsys.readouterr().err
    (manifest,) = (tmp_path / "outputs").glob("*/*/manifest.json")
    manifest = json.loads(manifest.read_text(encoding="utf-8"))
    assert code == 1 and manifest["parameters"]["approve"] == "" and "does not exist" in manifest["error"]


@pytest.mark.notebook
def test_a_timed_out_run_keeps_what_its_cells_printed(tmp_path):
    """The executed notebook is saved sparsely while cells run (not after every cell), so a run that
    times out must still leave the notebook as far as it got in its evidence, and fail clearly."""
    data = tmp_path / "input.csv"
    data.write_text("a,b\n1,2\n")
    proc = subprocess.run([str(VESPA_OPS), "--notebooks", str(NOTEBOOKS), "--outputs", str(tmp_path / "outputs"), "run",
                           "selftest", "--timeout", "4", "-p", f"input_path={data}", "-p", "echo_text=BEFORE_THE_PAUSE",
                           "-p", "pause_s=60"], capture_output=True, text=True, timeout=120)
    folder = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert proc.returncode == 1 and manifest["status"] == "failed" and "Timeout" in manifest["error"]
    executed = json.loads((folder / "selftest.ipynb").read_text())
    printed = [o.get("text", "") for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("BEFORE_THE_PAUSE" in "".join(t) for t in printed)
    assert "Demo students" in (folder / "report.html").read_text()  # the cells before the pause are reported


def test_vespa_ops_leaves_the_iri_grammars_unloaded_and_still_validates_notebooks():
    """jsonschema's optional IRI checker compiles ~40 grammars at import (1.2 s a run); vespa-ops skips it."""
    code = ("import sys, vespa_lib.ops.cli, nbformat\n"
            "assert sys.modules['rfc3987_syntax'] is None\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
            "nbformat.validate(nb)\n"
            "nb.cells[0]['bogus'] = 1\n"
            "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "refused"


@pytest.mark.notebook
def test_no_kernel_outlives_its_run(tmp_path):
    """The kernel exits while the evidence is written (not waited for at shutdown), and is reaped before
    vespa-ops returns: no kernel process is left, in-process or not."""
    import psutil

    data = tmp_path / "input.csv"
    data.write_text("a,b\n1,2\n")
    assert _main(tmp_path, "run", "selftest", "-p", f"input_path={data}") == 0
    kernels = [p for p in psutil.Process().children(recursive=True)
               if "ipykernel_launcher" in " ".join(p.cmdline())]
    assert kernels == []


def test_reaping_terminates_a_kernel_that_does_not_exit():
    from vespa_lib.ops import kernel

    stubborn = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kernel._EXITING.append((stubborn, 0.3))
    kernel.reap_kernels()
    assert stubborn.returncode is not None and stubborn.returncode != 0 and kernel._EXITING == []
