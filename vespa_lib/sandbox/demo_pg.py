"""``python -m vespa_lib.sandbox.demo_pg``: the demo on a production-shaped PostgreSQL (``make demo-pg``).

Generates the demo data (as ``make demo``, in ``--out``), starts a throw-away PostgreSQL
(:class:`vespa_lib.sandbox.localpg.LocalPostgres`, or ``--server-dsn``), builds the production-shaped
database from the damaged history (:mod:`vespa_lib.sandbox.prodshape`: non-superuser owner, ``decimal(4,2)``
statistics, the legacy ``unique(email)`` key) and runs every runbook through ``vespa-ops`` as a
person does, logged in as the owner role: each write is planned, its fingerprint read from the plan's
evidence (``plan_fingerprint`` in ``manifest.json``) and approved (never ``auto``), then verified.
One line per run; the evidence index last. Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vespa_lib.sandbox.demo import run_parameters, step_generate
from vespa_lib.sandbox.rehearsal.ops import REPO, STEP_STATUSES, Ops, RunResult
from vespa_lib.sandbox.rehearsal.setup import server_context

__all__ = ["STEPS", "main", "run_demo"]

# (runbook, overrides, reviewed write?) in order; paths of params/demo/*.yaml point at --out.
STEPS: tuple[tuple[str, dict, bool], ...] = (
    ("audit", {}, False),
    ("csv_profile", {}, False),
    ("import", {"mode": "plan"}, True),
    ("audit", {}, False),
    ("sync_check", {"mode": "plan", "approve": ""}, True),
    ("year_transition", {"mode": "validate"}, False),
    ("sync_check", {"mode": "plan", "approve": "", "as_of": "2026-07-31"}, True),
    ("year_transition", {"mode": "rollover", "as_of": "2026-08-01", "rehearsal_copy": False}, True),
)
APPLY_MODE = {"import": "apply", "sync_check": "apply", "year_transition": "rollover"}


def _params(runbook: str, out: Path, overrides: dict) -> dict:
    values = run_parameters(REPO / "params" / "demo" / f"{runbook}.yaml", out)
    values.pop("target", None)  # Ops names the PostgreSQL target
    return values | overrides


def _reviewed(ops: Ops, runbook: str, params: dict) -> list[RunResult]:
    """Plan, then approve the fingerprint the evidence shows (again if a step shows a new plan)."""
    runs = [ops.run(runbook, **params)]
    apply = params | {"mode": APPLY_MODE[runbook]}
    fingerprint = runs[-1].fingerprint
    for _ in range(3):
        if not fingerprint:
            break
        runs.append(ops.run(runbook, **(apply | {"approve": fingerprint})))
        if runs[-1].manifest.get("apply_status") not in STEP_STATUSES:
            break
        fingerprint = runs[-1].fingerprint  # a step applied: the next plan shows its own fingerprint
    return runs


def run_demo(out: Path, outputs: Path, server_dsn: str | None = None, print_=print) -> list[RunResult]:
    """Every step of ``STEPS``; the results (the plan runs included)."""
    from vespa_lib.sandbox.rehearsal.setup import DBNAME, build_database  # noqa: PLC0415

    step_generate(out)
    with server_context(server_dsn) as server:
        owner, _ = build_database(server, out, f"{DBNAME}_demo", prune=False)
        ops = Ops(outputs, owner, params_dir=REPO / "params" / "demo")
        for runbook, overrides, reviewed in STEPS:
            params = _params(runbook, out, overrides)
            for result in (_reviewed(ops, runbook, params) if reviewed else [ops.run(runbook, **params)]):
                print_(f"  {result.label():<42} {result.status.upper():<8} {result.folder or result.output[-200:]}")
        print_(f"Evidence index: {ops.index()}")
    return ops.results


def failures(results: list[RunResult]) -> list[str]:
    """Runs that did not pass (plans included: a plan that may be approved passes)."""
    return [r.label() for r in results if r.status != "passed"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vespa_lib.sandbox.demo_pg", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo-pg", help="demo folder (default data/demo-pg)")
    p.add_argument("--outputs", default=str(REPO / "outputs"), help="evidence folder (default outputs/)")
    p.add_argument("--server-dsn", default=None, help="a PostgreSQL server that may create databases")
    a = p.parse_args(argv)
    results = run_demo(Path(a.out).resolve(), Path(a.outputs).resolve(), a.server_dsn)
    failed = failures(results)
    auto = [r.label() for r in results if r.params.get("approve") == "auto"]
    print(f"demo-pg: {len(results)} runs, {len(failed)} failed, {len(auto)} approved with auto")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed or auto else 0


if __name__ == "__main__":
    sys.exit(main())
