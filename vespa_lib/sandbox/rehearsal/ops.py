"""Running the runbooks as a person (or cron) does: ``vespa-ops`` in a subprocess, one run each.

``Ops(outputs, env)`` runs ``vespa-ops run RUNBOOK -f params/... -p name=value`` with the target's DSN
in the environment variable the ``postgres:NAME`` target names (the DSN never appears on a command
line or in a params file), reads the run folder from the last line ``vespa-ops`` prints and the
manifest in it. ``plan_and_approve`` is the reviewed write: run the plan, read ``plan_fingerprint``
from its evidence, re-run with ``approve=<fingerprint>`` (never ``auto``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REPO", "STEP_STATUSES", "TARGET_VAR", "Ops", "RunResult"]

REPO = Path(__file__).resolve().parents[3]
TARGET_VAR = "VESPA_REHEARSAL_DB_URL"  # the env var the postgres: target names
# An approved import may do one step and show the next plan (migrations, then the F8 repair): approve again.
STEP_STATUSES = ("migrated", "repaired")


@dataclass
class RunResult:
    """One ``vespa-ops run``: what was asked, its exit code, folder and manifest."""

    runbook: str
    params: dict
    exit_code: int
    folder: Path | None
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0
    output: str = ""

    @property
    def status(self) -> str:
        return self.manifest.get("status", "no evidence")

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.get("plan_fingerprint") or "")

    def failed_checks(self) -> list[str]:
        return [c["name"] for c in self.manifest.get("checks") or [] if not c.get("passed")]

    def label(self) -> str:
        mode = self.params.get("mode", "")
        approve = self.params.get("approve", "")
        approve = "fingerprint" if approve and approve not in ("policy", "auto") else approve
        return " ".join(x for x in (self.runbook, mode, f"approve={approve}" if approve else "") if x)


class Ops:
    """Runs runbooks through ``vespa-ops`` against one PostgreSQL DSN; keeps every result."""

    def __init__(self, outputs: Path, dsn: str, params_dir: Path = REPO / "params" / "production",
                 repo: Path = REPO):
        self.outputs, self.params_dir, self.repo = Path(outputs), Path(params_dir), Path(repo)
        self.env = os.environ | {TARGET_VAR: dsn, "PYTHONPATH": str(repo)}
        self.target = f"postgres:{TARGET_VAR}"
        self.results: list[RunResult] = []

    def run(self, runbook: str, **params) -> RunResult:
        """One run with ``params/<dir>/<runbook>.yaml`` and the overrides; its result (kept)."""
        argv = [sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(self.repo / "notebooks"),
                "--outputs", str(self.outputs), "run", runbook, "-f", str(self.params_dir / f"{runbook}.yaml")]
        argv += [f"-p{k}={json.dumps(v)}" for k, v in ({"target": self.target} | params).items()]
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=self.repo, env=self.env, capture_output=True, text=True)
        result = _result(runbook, params, proc, time.monotonic() - started)
        self.results.append(result)
        return result

    def plan_and_approve(self, runbook: str, **params) -> tuple[RunResult, RunResult | None]:
        """The plan, then the approval of the fingerprint its evidence shows (None when the plan
        has no fingerprint: nothing to approve)."""
        plan = self.run(runbook, **params)
        if not plan.fingerprint:
            return plan, None
        return plan, self.run(runbook, **params, approve=plan.fingerprint)

    def index(self) -> Path:
        """``vespa-ops index``: the evidence index; its path."""
        proc = subprocess.run([sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(self.repo / "notebooks"),
                               "--outputs", str(self.outputs), "index"], cwd=self.repo, env=self.env,
                              capture_output=True, text=True, check=True)
        return Path(proc.stdout.strip().splitlines()[-1])


def _result(runbook: str, params: dict, proc: subprocess.CompletedProcess, seconds: float) -> RunResult:
    """The run folder is the last line vespa-ops prints; its manifest.json the evidence."""
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    folder = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
    manifest = {}
    if folder is not None and (folder / "manifest.json").is_file():
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return RunResult(runbook, params, proc.returncode, folder, manifest, seconds, (proc.stdout + proc.stderr)[-4000:])
