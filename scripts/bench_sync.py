"""Benchmark the sync_check runbook's library path at realistic scale (docs/ARCHITECTURE.md, “Quality bars”).

Generates the realistic fresh export once into ``data/bench/realistic-fresh`` (reused while newer than
the realistic snapshot of ``scripts/bench.py``), then in ONE throw-away PostgreSQL: loads the damaged
database, applies pending migrations through the guard, runs the 2024/2025 import as ``bench.py`` does
(skip with ``--no-import-first``), and times the runbook's calls in its order: open the source, plan the
current year, apply with the plan's fingerprint, re-plan (must plan zero changes), apply again (must
write nothing). Reports drift, plan counts per table × year, the planner's and the guard's timings and
inclusive spans of plan_sync's phases (the library functions wrapped in this process only). Prints a
table with the bars and writes ``data/bench/sync-results-<timestamp>.json``. Writes only under
``data/bench`` and the throw-away cluster. Kernel start and evidence writing are not included there.

Then the runbook as a user runs it, through ``vespa-ops run sync_check`` into a fresh database of the
same server (damaged database loaded, migrations and the import applied the same way): ``mode: plan``,
then ``mode: apply`` approving the fingerprint the plan run recorded in its ``manifest.json`` (the run
re-plans after its commit and checks zero changes). Wall time and peak memory of the vespa-ops process
tree (kernel included) per run, beside the library's numbers. If the plan run fails (``mode: plan``
opens the target read-only), the fingerprint is taken from an ``apply`` run with no approval (refused,
nothing written, the fingerprint recorded) and the failure is reported. ``--ops-only`` / ``--no-ops``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 - the import benchmark's helpers (dataset, load_into_postgres, timed)

from vespa_lib import importer, sync  # noqa: E402
from vespa_lib.rules import rows as rowsmod  # noqa: E402
from vespa_lib.rules import years  # noqa: E402
from vespa_lib.sandbox.localpg import LocalPostgres  # noqa: E402
from vespa_lib.sandbox.synth import generate_fresh_export  # noqa: E402
from vespa_lib.sources import targets  # noqa: E402
from vespa_lib.sources.snapshot import open_snapshot  # noqa: E402
from vespa_lib.sync import checks as sync_checks  # noqa: E402
from vespa_lib.sync import source as sync_source
from vespa_lib.write import plan as planmod  # noqa: E402
from vespa_lib.write.guard import apply_plan  # noqa: E402

FRESH = bench.BENCH / "realistic-fresh"
timed = bench.timed
SPANS: dict[str, float] = {}
GUARD: list = []  # the guard's ApplyResults of apply_sync (SyncResult keeps only the counts)


def fresh_dataset() -> tuple[Path, date]:
    """The realistic fresh export (cached) and its as_of (the generator's date, from the file names)."""
    base = bench.dataset(1)
    truth = FRESH / "fresh_truth.csv"
    if not truth.exists() or truth.stat().st_mtime < (base / "truth.csv").stat().st_mtime:
        print(f"Generating the realistic fresh export into {FRESH} (once) ...", flush=True)
        FRESH.mkdir(parents=True, exist_ok=True)
        for name in ("production.duckdb", "truth.csv"):  # fresh.py reads these two, read-only
            (FRESH / name).unlink(missing_ok=True)
            (FRESH / name).symlink_to(base / name)
        generate_fresh_export(FRESH, seed=2025)
    export = FRESH / "fresh_export"
    tag = next(export.glob("FullObject_10_*.csv")).stem.rsplit("_", 1)[1]
    return export, date.fromisoformat(tag)


def _spy(module, name: str, label: str, sink: list | None = None) -> None:
    """Wrap ``module.name`` to add its (inclusive) seconds to ``SPANS[label]``; results go to ``sink``."""
    fn = getattr(module, name)

    def wrapper(*args, **kw):
        start = time.perf_counter()
        try:
            out = fn(*args, **kw)
        finally:
            SPANS[label] = round(SPANS.get(label, 0.0) + time.perf_counter() - start, 3)
        if sink is not None:
            sink.append(out)
        return out
    setattr(module, name, wrapper)


def install_spies() -> None:
    for mod, name in ((rowsmod, "build_rows"), (sync_checks, "kept_as_is"), (planmod, "plan_changes"),
                      (sync_checks, "drift"), (sync_checks, "proofs"), (sync_checks, "unsyncable"),
                      (planmod, "archived_years"), (sync, "recompute_statistics"), (sync, "record_run")):
        _spy(mod, name, name)
    _spy(sync, "apply_plan", "guard.apply_plan", GUARD)


def spans() -> dict[str, float]:
    out = dict(SPANS)
    SPANS.clear()
    return out


def migrate_and_import(folder: Path, res: dict, import_first: bool) -> None:
    """Pending migrations through the guard, then (``import_first``) the 2024/2025 archive import, both
    exactly as bench.py runs them. The migrations go through the import's plan: ``plan_sync`` cannot
    plan on the unmigrated damaged schema (it reads ``academic_years.is_archived``)."""
    target = importer.open_import(f"postgres:{bench.ENV}")
    snap = open_snapshot(folder / "snapshot")
    rows = importer.import_rows(snap, bench.YEAR, target, convert_q29_percentage=True, establishment_scope=None)
    desired = importer.desired_for(rows, target.con, bench.YEAR)
    labels = importer.archive_labels(desired, True)
    mplan = importer.plan_import(target.con, desired, labels)
    _, res["migrations_s"] = timed(apply_plan, target.con, desired, approve=mplan.fingerprint, run_id="bench-m",
                                   runbook="import", actor="bench", target_kind="postgres", recompute=False,
                                   archive_years=labels)
    if import_first:
        start = time.perf_counter()
        plan = importer.plan_import(target.con, desired, labels)
        outcome = importer.apply_import(target.con, desired, rows, approve=plan.fingerprint, run_id="bench-import",
                                        target_kind="postgres", archive=labels, planned=plan)
        assert outcome.status == "applied", outcome.reason
        res["import_s"], res["import_applied"] = time.perf_counter() - start, outcome.result.applied["applied"]
    target.close()


def sync_run(db, src, as_of: date, run_id: str, res: dict, key: str, backup: Path):
    """One sync_check run as the notebook makes it (mode=apply, approve=<fingerprint>): plan, apply."""
    spans()
    sp, res[f"{key}_plan_s"] = timed(sync.plan_sync, src, db.con, as_of, establishment_scope=None)
    res[f"{key}_plan_spans"], res[f"{key}_plan_timings"] = spans(), sp.plan.timings
    res[f"{key}_plan_counts"] = sp.plan.counts()
    failed = [c["name"] for c in sp.checks if not c["passed"]]
    assert not failed and not sp.plan.blocked, f"proofs failed {failed} / blocked {sp.plan.blocked}"
    GUARD.clear()
    result, res[f"{key}_apply_s"] = timed(sync.apply_sync, db.con, sp, approve=sp.fingerprint, run_id=run_id,
                                          actor="operator", policy={}, target_kind="postgres",
                                          parameters={"mode": "apply"}, backup_dir=backup / run_id)
    assert result.status == "applied", result.reasons
    res[f"{key}_apply_spans"] = spans()
    res[f"{key}_apply_timings"] = GUARD[-1].timings if GUARD else {}
    res[f"{key}_applied"] = result.applied.get("applied", {})
    return sp


def ops_sync(export: Path, as_of: date, target: str, outputs: Path) -> dict:
    """sync_check through vespa-ops: plan, then apply with the plan run's fingerprint (module docstring)."""
    p = bench.param
    common = ["-f", str(bench.PARAMS / "sync_check.yaml"), *p("source", f"csv:{export}"), *p("target", target),
              *p("as_of", as_of.isoformat())]
    steps, notes = [], []
    plan = bench.run_ops(["run", "sync_check", *common, *p("mode", "plan"), *p("approve", "")], outputs)
    steps.append(("plan", plan))
    manifest = plan.get("manifest", {})
    if plan["code"] != 0 or manifest.get("status") != "passed":
        notes.append(f"mode=plan failed (exit {plan['code']}): {manifest.get('error') or manifest.get('checks')}")
        refused = bench.run_ops(["run", "sync_check", *common, *p("mode", "apply"), *p("approve", "")], outputs)
        steps.append(("apply, no approval (fingerprint)", refused))
        manifest = refused.get("manifest", {})
    fingerprint = manifest.get("plan_fingerprint")
    if not fingerprint:
        raise RuntimeError(f"no plan fingerprint in the sync_check evidence: {manifest.get('error')}")
    applied = bench._ok(bench.run_ops(["run", "sync_check", *common, *p("mode", "apply"), *p("approve", fingerprint)],
                                      outputs), "sync_check apply")
    steps.append(("apply (re-plan inside)", applied))
    return {"notes": notes, "steps": [{"step": name, "seconds": round(r["seconds"], 2), "peak_mb": round(r["peak_mb"]),
                                       "code": r["code"], "status": r.get("manifest", {}).get("status"),
                                       "slowest_cells_s": r.get("cells", {})} for name, r in steps]}


def measure_ops(server: LocalPostgres, export: Path, as_of: date, import_first: bool) -> dict:
    """The sync_check runbook through vespa-ops in a fresh database of ``server`` (migrated, imported)."""
    os.environ[bench.ENV] = server.create_database("ops_sync")
    bench.load_into_postgres(bench.dataset(1) / "production.duckdb", os.environ[bench.ENV])
    migrate_and_import(bench.dataset(1), {}, import_first)
    with tempfile.TemporaryDirectory(prefix="ops-sync-", dir=bench.BENCH) as tmp:
        return ops_sync(export, as_of, f"postgres:{bench.ENV}", Path(tmp))


def measure(import_first: bool, library: bool = True, ops: bool = True) -> dict:
    """Every measurement, in one throw-away PostgreSQL."""
    export, as_of = fresh_dataset()
    year = years.current_year(as_of)
    res: dict = {"export": str(export), "as_of": as_of.isoformat(), "year": year, "import_first": import_first}
    with LocalPostgres() as server:
        if library:
            measure_library(server, export, as_of, res, import_first)
        if ops:
            res["ops"] = measure_ops(server, export, as_of, import_first)
    return res


def measure_library(server: LocalPostgres, export: Path, as_of: date, res: dict, import_first: bool) -> None:
    """The runbook's library calls in this process (module docstring), into ``res``."""
    year = res["year"]
    install_spies()
    with tempfile.TemporaryDirectory(dir=bench.BENCH) as backup:
        os.environ[bench.ENV] = server.create_database("bench")
        _, res["load_damaged_db_s"] = timed(bench.load_into_postgres, bench.dataset(1) / "production.duckdb",
                                            os.environ[bench.ENV])
        migrate_and_import(bench.dataset(1), res, import_first)
        db = targets.open_target(f"postgres:{bench.ENV}", read_only=False)  # mode=apply opens read-write
        src, res["open_source_s"] = timed(sync_source.open_source, f"csv:{export}", year)
        res["source_records"] = dict(src.records)
        first = sync_run(db, src, as_of, "bench-sync-1", res, "first", Path(backup))
        res["drift"], res["set_aside"] = first.drift.kinds(), int(len(first.unsyncable))
        again = sync_run(db, src, as_of, "bench-sync-2", res, "repeat", Path(backup))
        res["repeat_plan_empty"] = again.plan.is_empty
        assert again.plan.is_empty, again.plan.counts()
        res["repeat_writes"] = sum(n for ops in res["repeat_applied"].values() for n in ops.values())
        assert res["repeat_writes"] == 0, res["repeat_applied"]
        _, res["sync_history_s"] = timed(sync.sync_history, db.con, limit=10)
        db.close()
    res["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _top(d: dict, n: int = 8) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]) or "(none)"


def report(res: dict) -> None:
    if "first_plan_s" in res:
        report_library(res)
    if "ops" in res:
        report_ops(res)


def report_ops(res: dict) -> None:
    print("\n  sync_check through vespa-ops (wall time of each command, peak MB of its process tree incl. the kernel)")
    for note in res["ops"]["notes"]:
        print(f"    NOTE: {note}")
    for s in res["ops"]["steps"]:
        print(f"    {s['step']:<34} {s['seconds']:8.2f} s  {s['peak_mb']:6d} MB  {s['status']}  slowest cells: "
              + ", ".join(f"{k!r} {v:.1f}" for k, v in list(s["slowest_cells_s"].items())[:3]))
    if "first_plan_s" in res:
        print(f"    library-level (above): plan {res['first_plan_s']:.2f} s, apply {res['first_apply_s']:.2f} s, "
              f"peak {res['peak_memory_mb']:.0f} MB")


def report_library(res: dict) -> None:
    print(f"\nsync_check at realistic scale: as_of {res['as_of']} ({res['year']}), source {res['source_records']}")
    for key in ("load_damaged_db_s", "open_source_s", "migrations_s", "import_s", "first_plan_s", "first_apply_s",
                "repeat_plan_s", "repeat_apply_s", "sync_history_s"):
        if key in res:
            print(f"  {key:<20} {res[key]:8.2f} s")
    for key in ("first_plan_spans", "first_plan_timings", "first_apply_spans", "first_apply_timings",
                "repeat_plan_spans", "repeat_plan_timings", "repeat_apply_timings"):
        print(f"  {key:<20} {_top(res[key])}")
    print(f"  drift (students)     {res['drift']}; set aside {res['set_aside']}")
    print(f"\n  {'plan (first run)':<20} {'year':<10} " + " ".join(f"{op:>9}" for op in planmod.OPS))
    for table, by_year in res["first_plan_counts"].items():
        for y, c in sorted(by_year.items()):
            print(f"  {table:<20} {y:<10} " + " ".join(f"{c.get(op, 0):>9,}" for op in planmod.OPS))
    total = res["first_plan_s"] + res["first_apply_s"]
    rows = [("sync plan + apply", f"{total:.1f} s", "≤ 30 s", total <= 30),
            ("repeat plan zero changes", str(res["repeat_plan_empty"]), "True", res["repeat_plan_empty"]),
            ("repeat apply writes", str(res["repeat_writes"]), "0", res["repeat_writes"] == 0),
            ("peak memory", f"{res['peak_memory_mb']:.0f} MB", "≤ 2048 MB", res["peak_memory_mb"] <= 2048)]
    print(f"\n  {'quality bar':<28} {'value':>10}  {'bar':<10} met")
    for name, value, bar, met in rows:
        print(f"  {name:<28} {value:>10}  {bar:<10} {'yes' if met else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-import-first", dest="import_first", action="store_false",
                   help="sync straight after the migrations, without the 2024/2025 archive import first")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ops-only", action="store_true", help="only the runbook through vespa-ops")
    which.add_argument("--no-ops", action="store_true", help="only the library calls (no vespa-ops runs)")
    a = p.parse_args(argv)
    started = datetime.now()
    res = measure(a.import_first, library=not a.ops_only, ops=not a.no_ops)
    report(res)
    path = bench.BENCH / f"sync-results-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"started_at": started.isoformat(), **res}, indent=2, default=str), encoding="utf-8")
    print(f"\nResults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
