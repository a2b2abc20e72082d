"""``python -m vespa_lib.sandbox.demo --out data/demo``: build the demo data, run the runbooks, print the summary.

Steps: generate (idempotent: regenerates only when an output is missing or the generator version
or parameters changed, recorded in ``demo.json``) → reset the working database from the pristine
copy (``production.pristine.duckdb``, kept as generated, so every demo starts from the same damaged
state) → summary (read-only) → the runbooks of ``RUNS`` in order, each through ``vespa-ops run`` with
``params/demo/<name>.yaml``: csv_profile, import (plan), import (apply, ``approve=auto``: DuckDB
rehearsal target), audit, sync_check, year_transition (validation), then the 2025/2026 → 2026/2027
rollover rehearsal (year_transition ``mode=rollover``, ``as_of='2026-08-01'``, ``approve=auto``,
``rehearsal_copy=true``: on a copy; the demo target must stay byte-identical, checked by SHA-256). One
line per run (runbook, status, evidence folder), then where ``outputs/index.html`` is. Exit status 1 if
any run failed. Writes only in ``--out`` and the evidence folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from vespa_lib.ops.files import sha256_of
from vespa_lib.sandbox.synth import GENERATOR_VERSION, SCALES, generate, generate_fresh_export
from vespa_lib.sandbox.synth.csvwrite import FILES

STAMP_FILE = "demo.json"
PRISTINE = "production.pristine.duckdb"
DEMO_PREFIX = "data/demo"  # params/demo/*.yaml name this folder; --out replaces it
REPO = Path(__file__).resolve().parents[2]
SCORE_TABLES = ("vespa_scores",)
YEAR_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics")


def step_generate(out: Path, *, students: int = SCALES["default"], seed: int = 2025) -> bool:
    """Generate the snapshot and damaged database unless an up-to-date one exists. True if generated."""
    wanted = {"generator_version": GENERATOR_VERSION, "students": students, "seed": seed}
    stamp = out / STAMP_FILE
    outputs = [out / "snapshot" / FILES[o][0] for o in FILES] + [out / "production.duckdb", out / "truth.csv",
                                                                 out / "fresh_export"]
    if stamp.exists() and all(p.exists() for p in outputs):
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if {k: recorded.get(k) for k in wanted} == wanted:
            return False
    generate(out, students=students, seed=seed)
    generate_fresh_export(out, seed=seed)  # the sync_check's current-year source (reads the pristine database)
    from datetime import datetime  # noqa: PLC0415 - only when generating

    stamp.write_text(json.dumps(wanted | {"generated_at": datetime.now().isoformat()}, indent=2), encoding="utf-8")
    return True


def snapshot_summary(out: Path) -> list[tuple[str, int, int]]:
    """(file, records, physical lines) per snapshot file, counted independently (read-only)."""
    rows = []
    for obj in FILES:
        path = out / "snapshot" / FILES[obj][0]
        with path.open(encoding="utf-8-sig", newline="") as fh:
            records = sum(1 for _ in csv.reader(fh)) - 1  # F5: records, not lines
        with path.open("rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        rows.append((path.name, records, lines))
    return rows


def database_summary(out: Path) -> list[tuple[str, str, str, int]]:
    """(table, academic_year, cycle or '', rows) per table × year (× cycle for scores). Read-only."""
    con = duckdb.connect(str(out / "production.duckdb"), read_only=True)
    try:
        result = []
        for table in YEAR_TABLES:
            cycle = "CAST(cycle AS VARCHAR)" if table in SCORE_TABLES else "''"
            q = f"SELECT academic_year, {cycle} AS c, count(*) FROM {table} GROUP BY ALL ORDER BY 1, 2"
            result += [(table, y, c, n) for y, c, n in con.execute(q).fetchall()]
        return result
    finally:
        con.close()


def step_summary(out: Path, print_: Callable[[str], None] = print) -> None:
    """Print the snapshot and database summary."""
    print_(f"Snapshot in {out / 'snapshot'}:")
    for name, records, lines in snapshot_summary(out):
        print_(f"  {name:<26} {records:>9,} records {lines:>11,} physical lines")
    print_(f"Database {out / 'production.duckdb'} (rows per academic year):")
    for table, year, cycle, n in database_summary(out):
        label = f"{year} cycle {cycle}" if cycle else year
        print_(f"  {table:<20} {label:<20} {n:>10,}")


def step_reset(out: Path) -> Path:
    """Keep the generated database pristine and start the working copy from it. Writes in ``out``."""
    working, pristine = out / "production.duckdb", out / PRISTINE
    stamp = json.loads((out / STAMP_FILE).read_text(encoding="utf-8")) if (out / STAMP_FILE).exists() else {}
    if not pristine.exists() or stamp.get("pristine") != stamp.get("generated_at"):
        shutil.copyfile(working, pristine)
        stamp["pristine"] = stamp.get("generated_at")
        (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
    Path(str(working) + ".wal").unlink(missing_ok=True)
    shutil.copyfile(pristine, working)
    return working


@dataclass(frozen=True)
class RunStep:
    """One runbook run of the demo: runbook, params file stem, overrides; ``optional`` if its notebook
    may not exist yet (other issues add it)."""

    runbook: str
    overrides: dict = field(default_factory=dict)
    optional: bool = False


# The hooks for later runbooks: sync_check and year_transition run after the audit once their
# notebooks (and params/demo/<name>.yaml) exist.
RUNS: tuple[RunStep, ...] = (
    # The audit first: it reports the planted damage (F2, F8, F9, F10, F11, F15) and leaves the restore
    # point before anything is written; the second audit, after the import, shows the change.
    RunStep("audit"),
    RunStep("csv_profile"),
    RunStep("import", {"mode": "plan"}),
    RunStep("import", {"mode": "apply", "approve": "auto"}),
    RunStep("audit"),
    RunStep("sync_check", optional=True),
    RunStep("year_transition", optional=True),
    # The 1 August rehearsal: close 2025/2026, open 2026/2027 on a copy of the DuckDB file.
    RunStep("year_transition", {"mode": "rollover", "as_of": "2026-08-01", "approve": "auto",
                                "rehearsal_copy": True}, optional=True),
)


def run_parameters(params_file: Path, out: Path) -> dict:
    """The params file's values with ``data/demo`` replaced by ``out`` (read-only)."""
    import yaml

    values = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    return {k: (v.replace(DEMO_PREFIX, str(out)) if isinstance(v, str) else v) for k, v in values.items()}


def step_run(step: RunStep, out: Path, outputs: Path, repo: Path = REPO) -> dict | None:
    """Run one runbook through ``vespa-ops run``; its manifest (status, folder) or None if skipped."""
    params_file = repo / "params" / "demo" / f"{step.runbook}.yaml"
    if step.optional and not ((repo / "notebooks" / f"{step.runbook}.ipynb").exists() and params_file.exists()):
        return None
    values = run_parameters(params_file, out) | step.overrides
    argv = [sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(repo / "notebooks"), "--outputs", str(outputs),
            "run", step.runbook, "-f", str(params_file)]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in values.items()]
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    folder = Path(lines[-1]) if lines else None
    manifest_path = folder / "manifest.json" if folder else None
    if manifest_path is None or not manifest_path.exists():
        return {"runbook": step.runbook, "status": "failed", "folder": None,
                "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return {"runbook": step.runbook, "status": manifest["status"], "folder": str(folder), "error": manifest.get("error")}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the rehearsal must leave the demo target byte-identical). Read-only."""
    return sha256_of(path)


def year_state(path: Path) -> dict[str, dict]:
    """Per academic year of ``academic_years``: archived/current flags and students/scores/answers rows."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for year, archived, current in con.execute("SELECT academic_year, is_archived, is_current FROM "
                                                   "academic_years ORDER BY 1").fetchall():
            rows = [con.execute(f"SELECT count(*) FROM {t} WHERE academic_year = ?", [year]).fetchone()[0]
                    for t in ("students", "vespa_scores", "question_responses")]
            out[year] = {"archived": bool(archived), "current": bool(current), "rows": rows}
        return out
    finally:
        con.close()


def rollover_report(out: Path, folder: str, before: dict, digest: str, print_: Callable[[str], None]) -> bool:
    """Print the rehearsal's year states before (target) and after (the rehearsal copy); True when the
    target file is byte-identical to before the rehearsal. Read-only."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    copy = manifest.get("rehearsal_copy")  # the notebook records where it copied the target
    after = year_state(Path(copy)) if copy and Path(copy).exists() else {}
    print_("    rollover rehearsal (year: archived/current, students/scores/answers) before -> after:")
    for year in sorted(set(before) | set(after)):
        b, a = before.get(year), after.get(year)
        show = (lambda s: "absent" if s is None else  # noqa: E731 - one formatting rule, used twice
                f"{'archived' if s['archived'] else 'open'}{', current' if s['current'] else ''} "
                f"{'/'.join(f'{n:,}' for n in s['rows'])}")
        print_(f"      {year:<10} {show(b):<34} -> {show(a)}")
    same = file_digest(out / "production.duckdb") == digest
    print_(f"    demo target {'byte-identical' if same else 'CHANGED'} after the rehearsal (sha256 {digest[:12]}…)")
    return same


def run_all(out: Path, outputs: Path, print_: Callable[[str], None] = print) -> list[dict]:
    """Every step of ``RUNS`` in order, one line each (the rollover rehearsal also prints its year
    states before/after and whether the target stayed byte-identical). Returns the results."""
    results = []
    for step in RUNS:
        rehearsal = step.overrides.get("rehearsal_copy") and step.overrides.get("mode") == "rollover"
        if rehearsal:
            before, digest = year_state(out / "production.duckdb"), file_digest(out / "production.duckdb")
        result = step_run(step, out, outputs)
        if result is None:
            print_(f"  {step.runbook:<16} skipped (notebook not available yet)")
            continue
        mode = f" ({step.overrides['mode']})" if "mode" in step.overrides else ""
        print_(f"  {step.runbook + mode:<16} {result['status'].upper():<7} {result['folder'] or result['error']}")
        if rehearsal and result["folder"] and not rollover_report(out, result["folder"], before, digest, print_):
            result = result | {"status": "failed", "error": "the rehearsal changed the demo target file"}
        results.append(result)
    return results


STEPS: tuple[tuple[str, Callable[..., object]], ...] = (
    ("generate", step_generate), ("reset", step_reset), ("summary", step_summary), ("runbooks", run_all))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vespa_lib.sandbox.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo", help="demo folder (default data/demo)")
    p.add_argument("--outputs", default=str(REPO / "outputs"), help="evidence folder (default outputs/)")
    p.add_argument("--students", type=int, default=SCALES["default"])
    p.add_argument("--seed", type=int, default=2025)
    a = p.parse_args(argv)
    out, outputs = Path(a.out).resolve(), Path(a.outputs).resolve()
    made = step_generate(out, students=a.students, seed=a.seed)
    print(("Generated" if made else "Up to date:") + f" synthetic data in {out}")
    step_reset(out)
    print(f"Working database reset from {out / PRISTINE}")
    step_summary(out)
    print("Runbooks:")
    results = run_all(out, outputs)
    print(f"Evidence index: {outputs / 'index.html'}")
    failed = [r["runbook"] for r in results if r["status"] != "passed"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
