"""``python -m vespa_lib.sandbox.rehearsal``: a school year rehearsed night by night (``make rehearse-year``).

Generates the synthetic world, starts a throw-away PostgreSQL (or uses ``--server-dsn``), builds the
production-shaped database as on the import night, then runs every night of the calendar through
``vespa-ops`` (see :mod:`vespa_lib.sandbox.rehearsal.night`), checks the invariants after each night and
writes the report under ``outputs/rehearsals/``. The last line printed is
``rehearsal: N nights, M runs, V invariant violations``; the exit status is 1 when V > 0.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from datetime import datetime
from pathlib import Path

from . import calendar, setup
from .night import INVARIANTS, Rehearsal
from .ops import REPO, Ops
from .report import write_report
from .world import KnackWorld

__all__ = ["main", "rehearse"]

PRINT = functools.partial(print, flush=True)


def _line(rec) -> str:
    runs = ", ".join(f"{r.label()}={r.manifest.get('sync_status') or r.status}" for r in rec.runs) or "no run"
    bad = sum(len(v) for v in rec.violations.values())
    refused = [r.output.strip().splitlines()[-1] for r in rec.runs if r.folder is None and r.output.strip()]
    found = [f"{k}: {v}" for k, vs in rec.violations.items() for v in vs]
    return f"  {rec.night}  {runs}  | invariant violations {bad}" + "".join(f"\n    {x}" for x in refused + found)


def rehearse(data: Path, outputs: Path, kind: str = "compressed", server_dsn: str | None = None,
             students: int = 300, print_=PRINT) -> tuple[Rehearsal, Path]:
    """Run the rehearsal; (the finished Rehearsal, its report path)."""
    world_dir = setup.generate_world(Path(data) / "world", students=students)
    nights = calendar.nights(kind)
    folder = Path(outputs) / "rehearsals" / datetime.now().strftime("%Y-%m-%d_%H%M%S")
    with setup.server_context(server_dsn) as server:
        owner, admin = setup.build_database(server, world_dir, f"{setup.DBNAME}_{datetime.now():%H%M%S}")
        world = KnackWorld.load(world_dir, setup.schools(admin))
        rehearsal = Rehearsal(world, Ops(outputs, owner), admin, Path(data), nights)
        for i, night in enumerate(nights):
            print_(_line(rehearsal.run_night(night)))
            if i % 10 == 9:  # a long rehearsal's report so far, readable while it runs
                _report(rehearsal, folder)
        rehearsal.ops.index()
    return rehearsal, _report(rehearsal, folder)


def _report(rehearsal: Rehearsal, folder: Path) -> Path:
    totals = dict.fromkeys(INVARIANTS, 0)
    for rec in rehearsal.records:
        for name, found in rec.violations.items():
            totals[name] = totals.get(name, 0) + (1 if found else 0)
    return write_report(rehearsal.records, folder, summary_line(rehearsal), totals)


def violations(rehearsal: Rehearsal) -> int:
    return sum(len(v) for rec in rehearsal.records for v in rec.violations.values())


def summary_line(rehearsal: Rehearsal) -> str:
    runs = sum(len(r.runs) for r in rehearsal.records)
    return f"rehearsal: {len(rehearsal.records)} nights, {runs} runs, {violations(rehearsal)} invariant violations"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vespa_lib.sandbox.rehearsal", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/rehearsal", help="working folder (world, exports, backups)")
    p.add_argument("--outputs", default=str(REPO / "outputs"), help="evidence folder (default outputs/)")
    p.add_argument("--calendar", choices=("compressed", "full", "short"), default="compressed")
    p.add_argument("--full", action="store_true", help="every night (same as --calendar full)")
    p.add_argument("--server-dsn", default=None, help="a PostgreSQL server DSN that may create databases "
                                                      "(default: a throw-away local server)")
    p.add_argument("--students", type=int, default=300)
    a = p.parse_args(argv)
    started = time.monotonic()
    kind = "full" if a.full else a.calendar
    rehearsal, report = rehearse(Path(a.data).resolve(), Path(a.outputs).resolve(), kind, a.server_dsn, a.students)
    print(f"report: {report}  (wall time {time.monotonic() - started:.0f} s)")
    print(summary_line(rehearsal))
    return 1 if violations(rehearsal) else 0


if __name__ == "__main__":
    sys.exit(main())
