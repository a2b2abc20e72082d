"""Helpers of the path matrix (tests/test_paths.py): run ``vespa-ops`` as a person does, read the evidence,
checksum every table of a target.

    ops = Ops(tmp, env={"PROD_DB_URL": dsn})
    plan = ops.run("import", snapshot_dir=..., target="postgres:PROD_DB_URL")      # a real subprocess
    applied = ops.run("import", ..., mode="apply", approve=plan.fingerprint)
    same = ops.run("audit", target=..., inproc=True)                              # vespa_lib.ops.cli.main
    code, out, err = ops.undo(applied.run_id, "postgres:PROD_DB_URL", approve=fp)

Every run writes its evidence under ``tmp/outputs``; restore points under ``tmp/backups``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VESPA_OPS = Path(sys.executable).with_name("vespa-ops")
STATUS = ("insert", "update", "delete")


@dataclass
class Run:
    """One ``vespa-ops run``: exit code, manifest, evidence folder, what it printed, how it was started."""

    code: int
    manifest: dict
    folder: Path
    out: str
    err: str
    entry: str

    @property
    def fingerprint(self) -> str:
        return self.manifest.get("plan_fingerprint") or ""

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def checks(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.manifest.get("checks") or []}

    def why(self) -> str:
        """What to print when a row fails: the error, the failed checks and the tail of the output."""
        failed = {n: c.get("detail") for n, c in self.checks.items() if not c["passed"]}
        return (f"exit {self.code} ({self.entry}); status {self.manifest.get('status')}; error "
                f"{self.manifest.get('error')}; failed checks {failed}; stderr tail {self.err[-800:]}")

    def json(self, name: str) -> Any:
        value = json.loads((self.folder / f"{name}.json").read_text(encoding="utf-8"))
        return json.loads(value) if isinstance(value, str) else value


@dataclass
class Ops:
    """``vespa-ops`` with evidence in ``tmp/outputs`` and the target's environment variables in ``env``."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def outputs(self) -> Path:
        return self.tmp / "outputs"

    def _argv(self) -> list[str]:
        return ["--notebooks", str(REPO / "notebooks"), "--outputs", str(self.outputs)]

    def command(self, args: list[str], *, inproc: bool = False) -> tuple[int, str, str]:
        """``vespa-ops <global options> ARGS``: a subprocess of the installed script, or cli.main in-process."""
        argv = self._argv() + args
        if not inproc:
            env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
            done = subprocess.run([str(VESPA_OPS), *argv], cwd=self.tmp, env=env, capture_output=True, text=True,
                                  timeout=1800)
            return done.returncode, done.stdout, done.stderr
        from vespa_lib.ops import cli  # noqa: PLC0415

        out, err = io.StringIO(), io.StringIO()
        with cli._environment(self.env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return code, out.getvalue(), err.getvalue()

    def run(self, runbook: str, *, inproc: bool = False, **params: Any) -> Run:
        """``vespa-ops run RUNBOOK -p name=value ...``; the evidence folder is the last line printed."""
        args = ["run", runbook]
        for name, value in params.items():
            args += ["-p", f"{name}={json.dumps(value)}"]
        code, out, err = self.command(args, inproc=inproc)
        lines = out.strip().splitlines()
        folder = Path(lines[-1]) if lines else self.tmp / "missing"
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            raise AssertionError(f"vespa-ops run {runbook} wrote no evidence (exit {code}); stdout {out[-1500:]!r} "
                                 f"stderr {err[-1500:]!r}")
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        return Run(code, manifest, folder, out, err, "cli.main" if inproc else "subprocess")

    def undo(self, run_id: str, target: str, approve: str = "", *, inproc: bool = False) -> tuple[int, str, str]:
        args = ["undo", run_id, "--target", target] + (["--approve", approve] if approve else [])
        return self.command(args, inproc=inproc)


def undo_fingerprint(printed: str) -> str:
    """The fingerprint ``vespa-ops undo`` prints ("Undo plan fingerprint: ...")."""
    for line in printed.splitlines():
        if line.startswith("Undo plan fingerprint:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no undo fingerprint printed: {printed[-1500:]!r}")


def plan_changes(counts: dict) -> dict[str, int]:
    """{"table year op": n} of the inserts, updates and deletes of a plan's counts (empty: zero changes)."""
    return {f"{t} {y} {op}": c[op] for t, by in (counts or {}).items() for y, c in by.items() for op in STATUS
            if c.get(op)}


# --- checksums of every table -------------------------------------------------------------------


def _tables(con: Any, dialect: str, schema: str) -> list[str]:
    if dialect == "duckdb":
        rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
                           "AND table_type = 'BASE TABLE' ORDER BY 1", [schema]).fetchall()
    else:
        rows = con.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", [schema]).fetchall()
    return [r[0] for r in rows]


def checksums(kind: str, where: str, *, schemas: tuple[str, ...] = ("public", "vespa_ops")) -> dict[str, str]:
    """{schema.table: md5 of every row} of every table of ``schemas`` in a DuckDB file or a PostgreSQL DSN
    (DuckDB's main schema counts as public). Read-only."""
    from vespa_lib.write.guard import table_checksums  # noqa: PLC0415

    if kind == "duckdb":
        import duckdb  # noqa: PLC0415

        con = duckdb.connect(where, read_only=True)
        dialect = "duckdb"
    else:
        import psycopg  # noqa: PLC0415

        con = psycopg.connect(where, autocommit=True)
        dialect = "postgres"
    try:
        out = {}
        for schema in schemas:
            real = "main" if (dialect == "duckdb" and schema == "public") else schema
            for table, digest in table_checksums(con, _tables(con, dialect, real), schema).items():
                out[f"{schema}.{table}"] = digest
        return out
    finally:
        con.close()


def differing(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The tables whose checksum changed, appeared or disappeared."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def column_checksums(kind: str, where: str, table: str) -> dict[str, str]:
    """{column: md5 of the column's sorted values} of one public table: which columns a change touched."""
    if kind == "duckdb":
        import duckdb  # noqa: PLC0415

        con = duckdb.connect(where, read_only=True)
        cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                          "'main' AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()]
        text = "coalesce(CAST({c} AS VARCHAR), '<null>')"
    else:
        import psycopg  # noqa: PLC0415

        con = psycopg.connect(where, autocommit=True)
        cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                          "'public' AND table_name = %s ORDER BY ordinal_position", [table]).fetchall()]
        text = "coalesce(CAST({c} AS TEXT), '<null>')"
    try:
        out = {}
        for c in cols:
            value = text.format(c=f'"{c}"')
            out[c] = con.execute(f"SELECT md5(coalesce(string_agg({value}, ',' ORDER BY {value}), '')) "
                                 f"FROM {table}").fetchone()[0]
        return out
    finally:
        con.close()


def changed_columns(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """{table: [columns whose values changed]} between two {table: column_checksums} snapshots."""
    out = {}
    for table in sorted(before.keys() | after.keys()):
        b, a = before.get(table, {}), after.get(table, {})
        cols = sorted(c for c in b.keys() | a.keys() if b.get(c) != a.get(c))
        if cols:
            out[table] = cols
    return out
