"""vespa-ops runs wherever it is installed: runbooks found from any working folder, the kernel on the
interpreter vespa-ops runs on (registered or not), relative paths read from the repository root.

Through the real entry point: ``vespa-ops`` as a subprocess started in another folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent / "fixtures" / "notebooks"
VESPA_OPS = Path(sys.executable).with_name("vespa-ops")


REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))


def _vespa_ops(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VESPA_OPS), *args], cwd=cwd, env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_list_finds_the_runbooks_from_any_folder(tmp_path):
    # cron, a shell in the home folder, a script: the installed package knows its repository.
    env = {k: v for k, v in os.environ.items() if k != "VESPA_ROOT"}
    done = _vespa_ops("list", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert RUNBOOKS == ["audit", "csv_profile", "import", "sync_check", "year_transition"]
    assert [line for line in done.stdout.splitlines() if not line.startswith(" ")] == RUNBOOKS


@pytest.mark.notebook
def test_run_uses_this_interpreter_whatever_kernel_is_registered(tmp_path):
    # A kernel named 'vespa' that cannot start (stale registration, another venv's python, none at all):
    # JUPYTER_PATH comes first in Jupyter's search path, so before the fix the run used this one.
    spec = tmp_path / "jupyter" / "kernels" / "vespa"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/nonexistent/python", "-m", "ipykernel_launcher",
                                                           "-f", "{connection_file}"],
                                                  "display_name": "stale", "language": "python"}))
    data = tmp_path / "input.csv"
    data.write_text("a,b\n1,2\n")
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "jupyter"))
    done = _vespa_ops("--notebooks", str(NOTEBOOKS), "--outputs", str(tmp_path / "outputs"), "run", "selftest",
                      "--timeout", "120", "-p", f"input_path={data}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((Path(done.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
    assert manifest["status"] == "passed"


@pytest.mark.notebook
def test_relative_paths_resolve_against_the_repository_not_the_working_folder(tmp_path):
    # VESPA_ROOT names the repository; -f and the paths inside the parameters are read from there.
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "selftest.ipynb").write_bytes((NOTEBOOKS / "selftest.ipynb").read_bytes())
    (repo / "params").mkdir()
    (repo / "params" / "selftest.yaml").write_text("input_path: data/input.csv\n")
    (repo / "data").mkdir()
    (repo / "data" / "input.csv").write_text("a,b\n1,2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _vespa_ops("run", "selftest", "-f", "params/selftest.yaml", "--timeout", "120", cwd=elsewhere,
                      env=dict(os.environ, VESPA_ROOT=str(repo)))
    assert done.returncode == 0, done.stdout + done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent.parent == repo / "outputs"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"][0]["bytes"] == 8 and manifest["parameters"]["input_path"] == "data/input.csv"

