"""Benchmark the import against docs/ARCHITECTURE.md, “Quality bars” (``make bench``; ``--scale 10`` for 10× the realistic scale).

Generates the realistic-scale snapshot once into ``data/bench/realistic`` (reused when present), then in
ONE run on a throw-away PostgreSQL (``vespa_lib.sandbox.localpg``) measures: csv_profile (open + profile);
building the rows; migrations (applied first, reported separately); the import plan; its apply (which
reuses the plan and writes the Parquet copy of its backup rows, as the runbook's apply run does); the
apply run's verification (a re-plan); a
repeated plan and apply that find nothing to do; a bare ``COPY`` of the same output rows into
unindexed tables (a floor for context) and into an indexed copy with the production keys and
foreign keys (a fairer floor, reported beside the ratio, never replacing it); and the original approach, per-batch ``INSERT ... VALUES ... ON CONFLICT DO UPDATE`` of
100/200/500 rows over psycopg like the old sync, timed on a bounded subset of the answers (the first
``--upsert-rows``) and extrapolated linearly to all rows (the output says so). Prints a table with the
quality-bar ratios (docs/ARCHITECTURE.md, “Quality bars”) and writes ``data/bench/results-<timestamp>.json``. Writes only under ``data/bench`` and
the throw-away cluster.

Those are the library's phases, timed inside this process. Then the import runbook is driven as a user
drives it, through ``vespa-ops run import`` (papermill, its kernel, the evidence) into a fresh database
of the same server named by a ``postgres:ENV_VAR`` target: the plan run; the apply runs, each approving
the fingerprint the previous run recorded in its evidence ``manifest.json`` (pending migrations, then the
F8 repair, then the data: one run each; never ``approve: auto`` on PostgreSQL); and the re-plan, which must
plan zero changes. Each run's wall time and the peak of the summed resident memory of the vespa-ops
process tree (the command, papermill and the notebook kernel; sampled every 50 ms) are reported beside
the library's numbers. ``--ops-only`` runs just this part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg
import pyarrow as pa

from vespa_lib import importer
from vespa_lib.profile import profile_snapshot
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.localpg import LocalPostgres
from vespa_lib.sandbox.synth.postgres import load_into_postgres
from vespa_lib.sources.snapshot import open_snapshot
from vespa_lib.write import schema
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.pgcopy import copy_in
from vespa_lib.write.sql import q as _q

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "data" / "bench"
YEAR = "2024/2025"
ENV = "VESPA_BENCH_DSN"
BATCHES = (100, 200, 500)


def timed(fn, *args, **kw):
    start = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - start


def dataset(scale: int) -> Path:
    """The generated scale (cached: generated once, reused while its truth file exists)."""
    name = "realistic" if scale == 1 else f"{scale}x"
    out = BENCH / name
    if not (out / "truth.csv").exists():
        print(f"Generating {name} scale into {out} (once) ...", flush=True)
        synth.generate(out, students=synth.SCALES["realistic"] * scale, seed=2025)
    return out


def copy_arrow(pg, table: str, cols: list[str], data: pa.Table) -> None:
    """COPY an Arrow table as CSV (the same path the guard's staging uses)."""
    copy_in(pg, table, cols, data.select(cols))


def bare_copy(dsn: str, tables: dict[str, pa.Table]) -> float:
    """COPY the output rows into unindexed tables (no keys, no constraints): the floor."""
    types = {pa.string(): "text", pa.int64(): "bigint", pa.int32(): "integer", pa.bool_(): "boolean",
             pa.date32(): "date"}
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("CREATE SCHEMA IF NOT EXISTS bare")
        start = time.perf_counter()
        with pg.transaction():
            for name, data in tables.items():
                cols = [f for f in data.schema if not f.name.startswith("_")]
                columns = ", ".join(f"{_q(f.name)} {types.get(f.type, 'text')}" for f in cols)
                pg.execute(f"CREATE TABLE bare.{name} ({columns})")
                copy_arrow(pg, f"bare.{name}", [f.name for f in cols], data)
        return time.perf_counter() - start


def _with_ids(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Students given ids (UUIDs like the production key) and scores/answers their student_id (done before
    the clock starts)."""
    students = tables["students"]
    students = students.append_column("id", pa.array([f"00000000-0000-4000-8000-{i:012d}"
                                                      for i in range(students.num_rows)], pa.string()))
    ids = students.select(["email", "academic_year", "id"]).rename_columns(["email", "academic_year", "student_id"])
    out = {"students": students}
    for name in ("vespa_scores", "question_responses"):
        out[name] = tables[name].join(ids, ["email", "academic_year"], join_type="inner")
    return out


_FK_SQL = ("SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
           "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = 'public' AND r.relname = %s "
           "AND c.contype = 'f'")


def indexed_copy(dsn: str, tables: dict[str, pa.Table]) -> float:
    """COPY the output rows into copies of the production tables WITH their keys, unique indexes and
    foreign keys (``LIKE ... INCLUDING ALL`` plus the FKs re-pointed at the copies): a fairer floor."""
    data = _with_ids(tables)
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("DROP SCHEMA IF EXISTS indexed CASCADE")
        pg.execute("CREATE SCHEMA indexed")
        for name in data:
            pg.execute(f"CREATE TABLE indexed.{name} (LIKE public.{name} INCLUDING ALL)")
            for (fk,) in pg.execute(_FK_SQL, [name]).fetchall():
                for ref in data:
                    fk = fk.replace(f"REFERENCES {ref}(", f"REFERENCES indexed.{ref}(")
                pg.execute(f"ALTER TABLE indexed.{name} ADD {fk}")
        start = time.perf_counter()
        with pg.transaction():
            for name, rows in data.items():
                have = {c["name"] for c in schema.table_columns(pg, name)}
                copy_arrow(pg, f"indexed.{name}", [c for c in rows.column_names if c in have], rows)
        return time.perf_counter() - start


def batched_upserts(dsn: str, rows, limit: int, batch: int) -> dict:
    """The old sync: students upserted, then answers in multi-row INSERT ... ON CONFLICT statements."""
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("DROP SCHEMA IF EXISTS legacy CASCADE")
        pg.execute("CREATE SCHEMA legacy")
        for t in ("students", "question_responses"):
            pg.execute(f"CREATE TABLE legacy.{t} (LIKE public.{t} INCLUDING DEFAULTS INCLUDING INDEXES)")
        students = rows.students.select(["email", "academic_year", "knack_id", "name"]).to_pylist()
        start = time.perf_counter()
        for i in range(0, len(students), batch):
            chunk = students[i:i + batch]
            values = ", ".join(["(%s, %s, %s, %s)"] * len(chunk))
            pg.execute("INSERT INTO legacy.students (email, academic_year, knack_id, name) VALUES " + values +
                       " ON CONFLICT (email, academic_year) DO UPDATE SET knack_id = EXCLUDED.knack_id, "
                       "name = EXCLUDED.name", [v for r in chunk for v in r.values()])
        ids = {(e, y): i for e, y, i in pg.execute("SELECT email, academic_year, id FROM legacy.students")}
        t_students = time.perf_counter() - start
        answers = rows.question_responses.slice(0, limit).to_pylist()
        start = time.perf_counter()
        for i in range(0, len(answers), batch):
            chunk = answers[i:i + batch]
            values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
            params = [v for r in chunk for v in (ids[(r["email"], r["academic_year"])], r["cycle"], r["academic_year"],
                                                 r["question_id"], r["response_value"])]
            pg.execute("INSERT INTO legacy.question_responses (student_id, cycle, academic_year, question_id, "
                       "response_value) VALUES " + values + " ON CONFLICT (student_id, cycle, academic_year, "
                       "question_id) DO UPDATE SET response_value = EXCLUDED.response_value", params)
        t_answers = time.perf_counter() - start
    total_rows = rows.question_responses.num_rows + rows.vespa_scores.num_rows
    per_row = t_answers / max(1, len(answers))
    return {"batch": batch, "students_s": t_students, "answers_timed": len(answers), "answers_s": t_answers,
            "extrapolated_total_s": t_students + per_row * total_rows,
            "note": f"timed {len(answers):,} answer rows, extrapolated linearly to {total_rows:,} score+answer rows"}


def measure_library(folder: Path, server: LocalPostgres, res: dict, upsert_rows: int) -> None:
    """The library-level phases (module docstring) in database ``bench`` of ``server``, into ``res``."""
    dsn = server.create_database("bench")
    os.environ[ENV] = dsn
    _, res["load_damaged_db_s"] = timed(load_into_postgres, folder / "production.duckdb", dsn)
    target = importer.open_import(f"postgres:{ENV}")
    (snap, prof), res["csv_profile_s"] = timed(lambda: (s := open_snapshot(folder / "snapshot"),
                                                         profile_snapshot(s, db=target)))
    peaks = res["peak_mb_after"] = {"csv_profile": _peak_mb()}  # where the peak was reached
    rows, res["build_rows_s"] = timed(importer.import_rows, snap, YEAR, target, convert_q29_percentage=True,
                                      establishment_scope=None)
    peaks["build_rows"] = _peak_mb()
    desired = importer.desired_for(rows, target.con, YEAR)
    labels = importer.archive_labels(desired, True)
    mplan = importer.plan_import(target.con, desired, labels)
    _, res["migrations_s"] = timed(apply_plan, target.con, desired, approve=mplan.fingerprint, run_id="bench-m",
                                   runbook="import", actor="bench", target_kind="postgres", recompute=False,
                                   archive_years=labels)
    plan, res["plan_s"] = timed(importer.plan_import, target.con, desired, labels)
    res["plan_timings"] = plan.timings
    peaks["plan"] = _peak_mb()
    backups = Path(tempfile.mkdtemp(prefix="backups-", dir=BENCH))  # the runbook's Parquet copy, removed below
    outcome, res["apply_s"] = timed(importer.apply_import, target.con, desired, rows, approve=plan.fingerprint,
                                    run_id="bench", target_kind="postgres", archive=labels, planned=plan,
                                    backup_dir=backups)
    shutil.rmtree(backups)
    assert outcome.status == "applied", outcome.reason
    res["apply_timings"] = outcome.result.timings
    peaks["apply"] = _peak_mb()
    # the apply run ends with its verification (a re-plan, as the import runbook does); the no-op
    # re-run of docs/ARCHITECTURE.md, “Quality bars” is the next run, timed after it
    verified, res["verify_s"] = timed(importer.plan_import, target.con, desired, labels)
    assert verified.is_empty, verified.counts()
    peaks["verify"] = _peak_mb()
    again, res["noop_plan_s"] = timed(importer.plan_import, target.con, desired, labels)
    assert again.is_empty, again.counts()
    res["noop_plan_timings"] = again.timings
    noop, res["noop_apply_s"] = timed(importer.apply_import, target.con, desired, rows, approve=again.fingerprint,
                                      run_id="bench-2", target_kind="postgres", archive=labels)
    assert noop.status == "nothing", noop.reason
    res["noop_apply_timings"] = noop.result.timings if noop.result else {}
    target.close()
    # docs/ARCHITECTURE.md, “Quality bars”'s peak memory is the import's (profile, rows, plan, apply, verify, no-op); the baselines
    # below build their own copies of the rows (uuids joined on, Python lists) and are reported apart
    res["peak_memory_mb"] = peaks["no-op"] = _peak_mb()
    tables = {"students": rows.students, "vespa_scores": rows.vespa_scores,
              "question_responses": rows.question_responses}
    res["bare_copy_s"] = bare_copy(dsn, tables)
    res["indexed_copy_s"] = indexed_copy(dsn, tables)
    res["upserts"] = [batched_upserts(dsn, rows, upsert_rows, b) for b in BATCHES]
    res["rows"] = {t: d.num_rows for t, d in tables.items()}
    res["applied"] = outcome.result.applied["applied"]
    res["peak_memory_with_baselines_mb"] = _peak_mb()


def measure(scale: int, upsert_rows: int, library: bool = True, ops: bool = True) -> dict:
    """Every measurement of one scale, in one throw-away PostgreSQL: the library's phases, then the
    import runbook through vespa-ops (each in its own database, loaded with the same damaged production)."""
    folder = dataset(scale)
    res: dict = {"scale": scale, "folder": str(folder)}
    with LocalPostgres() as server:
        if library:
            measure_library(folder, server, res, upsert_rows)
        if ops:
            res["ops"] = measure_ops(scale, server)
    return res


# --- the runbooks through the front door (vespa-ops), as a user runs them -------------------------

PARAMS = ROOT / "params" / "demo"


def vespa_ops() -> list[str]:
    """The ``vespa-ops`` command of this interpreter's environment (its console script, else ``-m``)."""
    script = Path(sys.executable).parent / "vespa-ops"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vespa_lib.ops.cli"]


def _tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants (papermill's kernel included), summed."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_ops(argv: list[str], outputs: Path, env: dict | None = None) -> dict:
    """One ``vespa-ops`` command in a subprocess: exit code, wall seconds, peak MB of its process tree
    (summed RSS, sampled every 50 ms), and, for ``run``, the evidence manifest it wrote."""
    outputs.mkdir(parents=True, exist_ok=True)
    cmd = [*vespa_ops(), "--notebooks", str(ROOT / "notebooks"), "--outputs", str(outputs), *argv]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=ROOT)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        code = proc.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res = {"argv": argv, "code": code, "seconds": seconds, "peak_mb": peak / 2**20}
    lines = stdout.strip().splitlines()
    manifest = Path(lines[-1]) / "manifest.json" if lines else None
    if argv[:1] == ["run"] and manifest is not None and manifest.exists():
        res["manifest"] = json.loads(manifest.read_text(encoding="utf-8"))
        res["cells"] = cell_seconds(manifest.parent)
    elif code != 0:
        raise RuntimeError(f"vespa-ops {' '.join(argv)} exited {code}: {stderr.strip()[-2000:]}")
    return res


def cell_seconds(folder: Path, top: int = 6) -> dict[str, float]:
    """The slowest cells of the executed notebook in an evidence folder (papermill's durations), by the
    first line of their source."""
    import nbformat  # noqa: PLC0415 - only the vespa-ops part reads notebooks

    out: dict[str, float] = {}
    for path in folder.glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
            if cell.cell_type == "code" and seconds:
                first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
                out[first[:48]] = round(out.get(first[:48], 0.0) + float(seconds), 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:top])


def param(name: str, value: str) -> list[str]:
    """``-p name=value`` with the value quoted (vespa-ops reads values as YAML: a date or an empty value
    would not stay a string)."""
    return ["-p", f"{name}={json.dumps(value)}"]


def _ok(run: dict, what: str) -> dict:
    """``run`` when the runbook passed; else an error naming what failed (checks, error)."""
    manifest = run.get("manifest", {})
    if run["code"] != 0 or manifest.get("status") != "passed":
        failed = [c["name"] for c in manifest.get("checks", []) if not c["passed"]]
        raise RuntimeError(f"{what}: vespa-ops exited {run['code']}, status {manifest.get('status')}, "
                           f"failed checks {failed}, error {manifest.get('error')}")
    return run


def changes(manifest: dict) -> int:
    """Inserts, updates and deletes a run's plan counts."""
    return sum(int(cell.get(op, 0)) for cells in manifest.get("counts", {}).values() for cell in cells.values()
               for op in ("insert", "update", "delete"))


def ops_import(folder: Path, target: str, outputs: Path, env: dict | None = None, max_applies: int = 4) -> dict:
    """The import runbook through vespa-ops: plan; apply with the fingerprint the previous run recorded
    in its manifest.json until the data is applied (migrations, F8 repair, data: one run each); re-plan."""
    common = ["-f", str(PARAMS / "import.yaml"), *param("snapshot_dir", str(folder / "snapshot")),
              *param("target", target), *param("backup_dir", str(outputs / "backups"))]
    plan = _ok(run_ops(["run", "import", *common, *param("mode", "plan")], outputs, env), "import plan")
    steps, fingerprint = [("plan", plan)], plan["manifest"]["plan_fingerprint"]
    for _ in range(max_applies):
        applied = _ok(run_ops(["run", "import", *common, *param("mode", "apply"), *param("approve", fingerprint)],
                              outputs, env), "import apply")
        status = applied["manifest"].get("apply_status")
        steps.append((f"apply ({status})", applied))
        if status != "migrated" and status != "repaired":
            break
        fingerprint = applied["manifest"]["plan_fingerprint"]  # the next plan to approve, as its evidence says
    if status != "applied":
        raise RuntimeError(f"import apply ended {status!r} after {len(steps) - 1} apply run(s)")
    replan = _ok(run_ops(["run", "import", *common, *param("mode", "plan")], outputs, env), "import re-plan")
    if changes(replan["manifest"]):
        raise RuntimeError(f"the re-plan after the import plans changes: {replan['manifest']['counts']}")
    steps.append(("re-plan", replan))
    return {"target": target.split(":", 1)[0], "steps": [
        {"step": name, "seconds": round(r["seconds"], 2), "peak_mb": round(r["peak_mb"]),
         "run_id": r["manifest"].get("run_id"), "apply_status": r["manifest"].get("apply_status"),
         "slowest_cells_s": r.get("cells", {})}
        for name, r in steps]}


def measure_ops(scale: int, server: LocalPostgres) -> dict:
    """The import runbook through vespa-ops into a fresh database of ``server`` loaded with the damaged
    production of ``scale`` (the same data the library-level measurement used)."""
    folder = dataset(scale)
    env_name = "VESPA_BENCH_OPS_DSN"
    dsn = server.create_database(f"ops_{scale}x")
    load_into_postgres(folder / "production.duckdb", dsn)
    with tempfile.TemporaryDirectory(prefix="ops-", dir=BENCH) as tmp:
        return ops_import(folder, f"postgres:{env_name}", Path(tmp), env={env_name: dsn})


def report_ops(res: dict) -> None:
    ops = res["ops"]
    print(f"\n  Through vespa-ops (import runbook into {ops['target']}; wall time of each command, peak MB of its "
          "process tree incl. the kernel)")
    for s in ops["steps"]:
        print(f"    {s['step']:<24} {s['seconds']:8.2f} s  {s['peak_mb']:6d} MB   slowest cells: "
              + ", ".join(f"{k!r} {v:.1f}" for k, v in list(s["slowest_cells_s"].items())[:3]))
    applies = [s for s in ops["steps"] if s["step"].startswith("apply")]
    print(f"    {'apply runs, together':<24} {sum(s['seconds'] for s in applies):8.2f} s  "
          f"{max(s['peak_mb'] for s in ops['steps']):6d} MB (peak of all runs)")
    if "plan_s" in res:
        print(f"    library-level (above): plan {res['plan_s']:.2f} s, apply {res['apply_s']:.2f} s, "
              f"verify {res['verify_s']:.2f} s, no-op plan {res['noop_plan_s']:.2f} s; "
              f"peak {res['peak_memory_mb']:.0f} MB")


def _peak_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ratios(res: dict, base: dict | None) -> list[tuple[str, str, str, bool]]:
    """(measure, value, bar, met) rows of docs/ARCHITECTURE.md, “Quality bars”: the realistic-scale bars, or for a larger scale
    (``base`` given) its two bars, time within 11x of the realistic run and peak memory."""
    pa_s = res["plan_s"] + res["apply_s"]
    memory = ("peak memory (the import)", f"{res['peak_memory_mb']:.0f} MB", "≤ 2048 MB", res["peak_memory_mb"] <= 2048)
    baselines = ("  (info) peak incl. the baselines", f"{res['peak_memory_with_baselines_mb']:.0f} MB", "(no bar)", True)
    if base:
        base_s = base["plan_s"] + base["apply_s"]
        return [(f"{res['scale']}× scale time ratio", f"{pa_s / base_s:.1f}×", f"≤ {res['scale'] + 1}×",
                 pa_s <= (res["scale"] + 1) * base_s), memory, baselines]
    fastest_upsert = min(u["extrapolated_total_s"] for u in res["upserts"])
    out = [("csv_profile", f"{res['csv_profile_s']:.1f} s", "≤ 10 s", res["csv_profile_s"] <= 10),
           ("plan + apply", f"{pa_s:.1f} s", "≤ 30 s", pa_s <= 30),
           ("plan + apply / bare COPY", f"{pa_s / res['bare_copy_s']:.1f}×", "≤ 2×", pa_s <= 2 * res["bare_copy_s"]),
           ("  (info) / indexed COPY, keys + FKs", f"{pa_s / res['indexed_copy_s']:.1f}×", "(no bar)",
            pa_s <= 2 * res["indexed_copy_s"]),
           ("batched upserts / plan + apply", f"{fastest_upsert / pa_s:.2f}×", "≥ 50×", fastest_upsert >= 50 * pa_s),
           ("no-op re-run: apply", f"{res['noop_apply_s']:.1f} s", "≤ 5 s", res["noop_apply_s"] <= 5),
           ("no-op re-run: plan", f"{res['noop_plan_s']:.1f} s", "≤ 5 s", res["noop_plan_s"] <= 5),
           memory, baselines]
    return out


def report(res: dict, base: dict | None) -> None:
    if "plan_s" in res:
        report_library(res, base)
    else:
        print(f"\nScale {res['scale']}× (library-level phases not measured: --ops-only)")
    if "ops" in res:
        report_ops(res)


def report_library(res: dict, base: dict | None) -> None:
    print(f"\nScale {res['scale']}× ({res['rows']})")
    for key in ("load_damaged_db_s", "csv_profile_s", "build_rows_s", "migrations_s", "plan_s", "apply_s",
                "verify_s", "noop_plan_s", "noop_apply_s", "bare_copy_s", "indexed_copy_s"):
        print(f"  {key:<22} {res[key]:8.2f} s")
    print("  peak MB after         " + ", ".join(f"{k} {v:.0f}" for k, v in res["peak_mb_after"].items()))
    for key in ("plan_timings", "apply_timings", "noop_apply_timings"):
        top = sorted(res[key].items(), key=lambda kv: -kv[1])[:6]
        print(f"  {key:<22} " + (", ".join(f"{k} {v:.1f}" for k, v in top) or "(no guard run: the importer "
                                 "re-planned, found nothing to do and wrote nothing)"))
    for u in res["upserts"]:
        print(f"  upserts batch {u['batch']:<4}     {u['extrapolated_total_s']:8.1f} s  ({u['note']})")
    print(f"\n  {'docs/ARCHITECTURE.md, “Quality bars” measure':<34} {'value':>10}  {'bar':<10} met")
    for name, value, bar, met in ratios(res, base):
        print(f"  {name:<34} {value:>10}  {bar:<10} {'yes' if met else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=1, help="1 = realistic (docs/DOMAIN.md, “The system”); 10 = ten times that")
    p.add_argument("--upsert-rows", type=int, default=50_000, help="answer rows timed for the batched upserts")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ops-only", action="store_true", help="only the import runbook through vespa-ops")
    which.add_argument("--no-ops", action="store_true", help="only the library-level phases (no vespa-ops runs)")
    a = p.parse_args(argv)
    parts = {"library": not a.ops_only, "ops": not a.no_ops}
    results = {"started_at": datetime.now().isoformat(), "runs": []}
    base = measure(1, a.upsert_rows, **parts)
    report(base, None)
    results["runs"].append(base)
    if a.scale != 1:
        big = measure(a.scale, a.upsert_rows, **parts)
        report(big, base if "plan_s" in base else None)
        results["runs"].append(big)
    BENCH.mkdir(parents=True, exist_ok=True)
    path = BENCH / f"results-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(f"\nResults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
