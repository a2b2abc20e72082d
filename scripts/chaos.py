"""Kill and crash an import apply from outside, then check the database (``make chaos``).

The tests kill an apply at the guard's own crash hooks (tests/test_crash.py). This script kills it
where nobody chose: ``vespa-ops run import`` (mode apply, the reviewed fingerprint) on a throw-away
PostgreSQL holding the damaged database, and at a random moment

* ``kill``: SIGKILL of the ``vespa-ops`` process AND its kernel (papermill starts the kernel in a
  session of its own, so a kill of the process group would leave it running: every descendant is
  killed by pid);
* ``restart``: ``pg_ctl restart -m immediate`` of the server (a crash: no checkpoint, recovery).

Half the moments are drawn over the whole run, half over the guard's transaction (from the moment
it holds the writers' lock, over the length that transaction had in a first, undisturbed reference
run). After each, the database
must equal its checksums from before the run (every production and ``vespa_ops`` table, every key,
constraint and index definition), or, if the kill came after the commit, be fully applied (the
next plan has nothing to change); and the next plan and apply through the runbook must pass.

Each case starts from a fresh copy of the prepared database (``CREATE DATABASE ... TEMPLATE``).
Prints one line per case and writes ``chaos.json`` into ``--out``. Heavy at realistic scale (about
a minute or two per case), so CI runs the light variant in tests/test_chaos.py instead.

    python scripts/chaos.py --data DIR [--kills 6] [--restarts 2] [--seed 1] [--out DIR]

``DIR`` is a folder made by ``python -m vespa_lib.sandbox.synth --out DIR [--scale realistic]``. Writes only
under ``--out`` and the throw-away cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

from vespa_lib.sandbox.localpg import LocalPostgres, create_database_on, dsn_with_dbname
from vespa_lib.sandbox.synth.postgres import load_into_postgres
from vespa_lib.write.guard import table_checksums
from vespa_lib.write.protect import WRITERS_LOCK_KEY

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
              "national_statistics", "establishments"]
DSN_ENV = "VESPA_CHAOS_DSN"
DEFINITIONS = """
SELECT r.relnamespace::regnamespace::text, r.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid WHERE r.relnamespace IN ('public'::regnamespace, 'vespa_ops'::regnamespace)
UNION ALL SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes WHERE schemaname IN ('public', 'vespa_ops')
UNION ALL SELECT 'trigger', tgrelid::regclass::text, tgname, tgenabled::text FROM pg_trigger WHERE NOT tgisinternal
ORDER BY 1, 2, 3, 4
"""


# --- the database -----------------------------------------------------------------------------


def checksums(dsn: str) -> dict:
    """Every production and vespa_ops table's content, and every definition. Read-only."""
    with psycopg.connect(dsn, autocommit=True) as con:
        ops = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                         "table_schema = 'vespa_ops' ORDER BY 1").fetchall()]
        return {**table_checksums(con, PRODUCTION), **{f"vespa_ops.{k}": v for k, v in
                                                        table_checksums(con, ops, "vespa_ops").items()},
                "definitions": [list(r) for r in con.execute(DEFINITIONS).fetchall()]}


def backends(server: str, db: str) -> list[dict]:
    """The sessions on ``db`` (what a kill lands in): state, whether the transaction has written, query."""
    with psycopg.connect(server, autocommit=True) as con:
        rows = con.execute("SELECT state, backend_xid IS NOT NULL, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
                           "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db]).fetchall()
    return [{"state": s, "wrote": w, "query": q} for s, w, q in rows]


def in_guarded_transaction(server: str, db: str) -> bool:
    """Whether a guarded run on ``db`` is inside its transaction: it holds the writers' lock exclusively."""
    high, low = WRITERS_LOCK_KEY >> 32, WRITERS_LOCK_KEY & 0xFFFFFFFF
    with psycopg.connect(server, autocommit=True) as con:
        return bool(con.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                                "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 "
                                "AND l.mode = 'ExclusiveLock' AND l.granted AND d.datname = %s",
                                [high, low, db]).fetchone()[0])


def wait_until_gone(server: str, db: str, timeout: float = 60) -> None:
    """A killed client's backend notices the closed socket and rolls back; wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not backends(server, db):
                return
        except psycopg.OperationalError:
            pass  # the server is still recovering
        time.sleep(0.2)
    raise RuntimeError(f"sessions of {db} still connected {timeout} s after the kill")


def ledger(dsn: str, run_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as con:
        return con.execute("SELECT run_id, status FROM vespa_ops.ledger WHERE run_id = %s OR run_id LIKE %s",
                           [run_id, f"{run_id}-%"]).fetchall()


# --- the runbook ------------------------------------------------------------------------------


def runbook_args(data: Path, out: Path, **params) -> list[str]:
    values = {"snapshot_dir": str(data / "snapshot"), "target": f"postgres:{DSN_ENV}", "sample_students": 0,
              "backup_dir": str(out / "backups"), **params}
    return [sys.executable, "-m", "vespa_lib.ops.cli", "--notebooks", str(ROOT / "notebooks"), "--outputs",
            str(out / "outputs"), "run", "import", "-f", str(ROOT / "params" / "demo" / "import.yaml"),
            *(a for k, v in values.items() for a in ("-p", f"{k}={json.dumps(v)}"))]


def start_run(dsn: str, data: Path, out: Path, **params) -> subprocess.Popen:
    env = {**os.environ, DSN_ENV: dsn, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                    os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(runbook_args(data, out, **params), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 1800) -> dict:
    """Wait for a run; its manifest (the last line printed is the evidence folder)."""
    out, err = proc.communicate(timeout=timeout)
    lines = out.strip().splitlines()
    if not lines or not Path(lines[-1]).is_dir():
        raise RuntimeError(f"vespa-ops printed no evidence folder (exit {proc.returncode}): {err[-2000:]}")
    manifest = json.loads((Path(lines[-1]) / "manifest.json").read_text(encoding="utf-8"))
    manifest["_exit"] = proc.returncode
    return manifest


def run(dsn: str, data: Path, out: Path, **params) -> dict:
    return finish(start_run(dsn, data, out, **params))


def changes(manifest: dict) -> int:
    """Rows the plan would insert, update or delete."""
    return sum(cell.get(op, 0) for years in (manifest.get("counts") or {}).values() for cell in years.values()
               for op in ("insert", "update", "delete"))


def prepare(dsn: str, data: Path, out: Path) -> str:
    """Migrations and the F8 repair applied through the runbook (each its own approved run), so that what
    is left is the data apply; returns its plan's fingerprint."""
    for _ in range(4):
        plan = run(dsn, data, out, mode="plan")
        if plan["status"] != "passed":
            raise RuntimeError(f"plan run failed: {plan.get('error')}")
        repairs = plan.get("repairs", {}).get("f8_cross_year_duplicates", {})
        if not plan.get("migrations_pending") and not any(repairs.values()):
            return plan["plan_fingerprint"]
        step = run(dsn, data, out, mode="apply", approve=plan["plan_fingerprint"])
        if step.get("apply_status") not in ("migrated", "repaired"):
            raise RuntimeError(f"preparing apply ended {step.get('apply_status')}: {step.get('error')}")
    raise RuntimeError("the database still needs migrations or repairs after four rounds")


def next_run_works(dsn: str, data: Path, out: Path) -> dict:
    """Plan, and apply what it shows (nothing if the killed run had committed): both must pass."""
    plan = run(dsn, data, out, mode="plan")
    result = {"plan": plan["status"], "plan_changes": changes(plan)}
    if plan["status"] == "passed" and result["plan_changes"]:
        applied = run(dsn, data, out, mode="apply", approve=plan["plan_fingerprint"])
        result.update(apply=applied["status"], apply_status=applied.get("apply_status"),
                      verify_zero_changes=(applied.get("verify") or {}).get("zero_changes"))
    result["ok"] = plan["status"] == "passed" and (not result["plan_changes"] or (
        result.get("apply") == "passed" and result.get("verify_zero_changes") is True))
    return result


# --- disturbing a run -------------------------------------------------------------------------


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants, the kernel in its own session included."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)
    return [p.pid for p in procs]


def restart_immediate(server: LocalPostgres) -> None:
    server._run("pg_ctl", "-w", "-t", "120", "-D", str(server.data_dir), "-l", str(server.folder / "server.log"),
                "-m", "immediate", "restart")


def reference(server: LocalPostgres, name: str, data: Path, out: Path, fingerprint: str) -> dict:
    """An undisturbed apply on a copy: its duration and when the guard's transaction was open."""
    dsn = clone(server, name)
    started = time.monotonic()
    proc = start_run(dsn, data, out, mode="apply", approve=fingerprint)
    wrote = []
    while proc.poll() is None:
        if in_guarded_transaction(server.dsn(), name):
            wrote.append(time.monotonic() - started)
        time.sleep(0.05)
    manifest = finish(proc)
    duration = time.monotonic() - started
    if manifest["status"] != "passed":
        raise RuntimeError(f"the reference apply failed: {manifest.get('error')}")
    return {"duration_s": round(duration, 1), "write_window_s": [round(min(wrote), 1), round(max(wrote), 1)]
            if wrote else [0.0, duration], "apply_status": manifest.get("apply_status")}


def clone(server: LocalPostgres, name: str, template: str = "chaos_base") -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return server.dsn(name)


def disturb(server: LocalPostgres, case: dict, data: Path, out: Path, fingerprint: str) -> dict:
    """One case: a copy, its checksums, the run, the kill or restart at ``case['at_s']``, the checks."""
    name = f"chaos_{case['n']}"
    dsn = clone(server, name)
    before = checksums(dsn)
    started = time.monotonic()
    proc = start_run(dsn, data, out, mode="apply", approve=fingerprint)
    origin = started
    if case["drawn_over"] == "guarded transaction":  # from the moment the guard holds its lock
        while proc.poll() is None and not in_guarded_transaction(server.dsn(), name):
            time.sleep(0.01)
        origin = time.monotonic()
    while proc.poll() is None and time.monotonic() - origin < case["at_s"]:
        time.sleep(0.01)
    landed = {"elapsed_s": round(time.monotonic() - started, 2), "finished_first": proc.poll() is not None,
              "in_guarded_transaction": in_guarded_transaction(server.dsn(), name)}
    landed["sessions"] = backends(server.dsn(), name) if not landed["finished_first"] else []
    run_dirs = sorted((out / "outputs").glob("*/*_import_*"), key=lambda p: p.stat().st_mtime)
    run_id = run_dirs[-1].name.rsplit("_", 1)[-1] if run_dirs else ""
    if case["kind"] == "kill":
        landed["killed_pids"] = len(kill_tree(proc.pid))
        proc.communicate()
    else:
        restart_immediate(server)
        finish(proc)  # the run fails on its lost connection and writes its evidence
    wait_until_gone(server.dsn(), name)
    committed = any(status == "applied" for rid, status in ledger(dsn, run_id) if rid == run_id)
    after = checksums(dsn)
    result = {**case, "landed": landed, "run_id": run_id, "committed": committed,
              "checksums_equal": after == before}
    if run_dirs:
        manifest = json.loads((run_dirs[-1] / "manifest.json").read_text(encoding="utf-8"))
        result["manifest_status"] = manifest["status"]
    result["next"] = next_run_works(dsn, data, out)
    # not committed: exactly as before; committed: fully applied (the next plan changes nothing)
    result["ok"] = result["next"]["ok"] and (result["checksums_equal"] if not committed
                                             else result["next"]["plan_changes"] == 0)
    return result


def moments(n: int, kind: str, ref: dict, rng: random.Random) -> list[dict]:
    """Even cases: a moment of the guard's transaction (seconds after it took its lock, drawn over the
    reference's transaction length); odd cases: a moment of the whole run (seconds after its start)."""
    lo, hi = ref["write_window_s"]
    return [{"kind": kind, "at_s": round(rng.uniform(0.5, ref["duration_s"]) if i % 2 else rng.uniform(0, hi - lo), 2),
             "drawn_over": "whole run" if i % 2 else "guarded transaction"} for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder made by python -m vespa_lib.sandbox.synth")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "chaos")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    summary: dict = {"data": str(args.data), "seed": args.seed, "cases": []}
    with LocalPostgres() as server:
        create_database_on(server.dsn(), "chaos_base")
        base = dsn_with_dbname(server.dsn(), "chaos_base")
        load_into_postgres(args.data / "production.duckdb", base)
        t = time.monotonic()
        fingerprint = prepare(base, args.data, args.out)
        summary["prepare_s"] = round(time.monotonic() - t, 1)
        summary["reference"] = reference(server, "chaos_reference", args.data, args.out, fingerprint)
        print(f"reference apply: {summary['reference']}", flush=True)
        cases = moments(args.kills, "kill", summary["reference"], rng) + \
            moments(args.restarts, "restart", summary["reference"], rng)
        for n, case in enumerate(cases):
            result = disturb(server, {"n": n, **case}, args.data, args.out, fingerprint)
            summary["cases"].append(result)
            where = "; ".join(f"{s['state']}{' (wrote)' if s['wrote'] else ''}: {s['query'][:60]}"
                              for s in result["landed"]["sessions"]) or "no session"
            where = f"in guarded transaction={result['landed']['in_guarded_transaction']} | {where}"
            print(f"{case['kind']:7} at {result['landed']['elapsed_s']:6.2f} s ({case['drawn_over']}): "
                  f"committed={result['committed']} checksums_equal={result['checksums_equal']} "
                  f"next={result['next']} ok={result['ok']} | {where}", flush=True)
    summary["ok"] = all(c["ok"] for c in summary["cases"])
    (args.out / "chaos.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(f"{sum(c['ok'] for c in summary['cases'])}/{len(summary['cases'])} cases ok; {args.out / 'chaos.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
