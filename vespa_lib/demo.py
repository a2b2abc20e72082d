"""``python -m vespa_lib.demo --out data/demo``: build the demo data and print what it holds.

Structured as steps (``STEPS``) so later issues can append the runbooks. The generation step is
idempotent: it regenerates only when an output is missing or the generator version or parameters
changed (recorded in ``demo.json``). The summary step is read-only.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import duckdb

from .synth import GENERATOR_VERSION, SCALES, generate
from .synth.csvwrite import FILES

STAMP_FILE = "demo.json"
SCORE_TABLES = ("vespa_scores",)
YEAR_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics")


def step_generate(out: Path, *, students: int = SCALES["default"], seed: int = 2025) -> bool:
    """Generate the snapshot and damaged database unless an up-to-date one exists. True if generated."""
    wanted = {"generator_version": GENERATOR_VERSION, "students": students, "seed": seed}
    stamp = out / STAMP_FILE
    outputs = [out / "snapshot" / FILES[o][0] for o in FILES] + [out / "production.duckdb", out / "truth.csv"]
    if stamp.exists() and all(p.exists() for p in outputs):
        if json.loads(stamp.read_text(encoding="utf-8")) == wanted:
            return False
    generate(out, students=students, seed=seed)
    stamp.write_text(json.dumps(wanted, indent=2), encoding="utf-8")
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


STEPS: tuple[tuple[str, Callable[..., object]], ...] = (("generate", step_generate), ("summary", step_summary))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vespa_lib.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo", help="demo folder (default data/demo)")
    p.add_argument("--students", type=int, default=SCALES["default"])
    p.add_argument("--seed", type=int, default=2025)
    a = p.parse_args(argv)
    out = Path(a.out)
    made = step_generate(out, students=a.students, seed=a.seed)
    print(("Generated" if made else "Up to date:") + f" synthetic data in {out}")
    step_summary(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
