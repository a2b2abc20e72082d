"""The seeded synthetic snapshot generator (docs/DOMAIN.md, “Reading the files”; docs/DOMAIN.md, “The system”).

``generate(out_dir)`` writes, deterministically for a seed:

- ``snapshot/FullObject_{6,10,29}_2025.csv``: Knack CSV exports with the real system's quirks;
- ``production.duckdb``: the "damaged production" database (F1, F2, F8, F9, F10, F11, F15);
- ``truth.csv``: every record's expected import outcome under docs/ARCHITECTURE.md's rule chains.

It writes only inside ``out_dir``. CLI: ``python -m vespa_lib.sandbox.synth --out DIR [--students N]
[--seed S] [--scale realistic|10x] [--include-field-133]``.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from vespa_lib.errors import ParameterError
from vespa_lib.rules import knack

from .csvwrite import (
    FILES,
    TRUTH_HEADER,
    Sink,
    headers,
    knack_time,
    object10_rows,
    render_keys,
    write_object29,
)
from .damage import build_database
from .ids import object_id
from .people import Population, build_population
from .truth import Context, Outcome, decide_all

__all__ = ["GENERATOR_VERSION", "SCALES", "GenerationResult", "generate", "generate_fresh_export", "main"]

GENERATOR_VERSION = "2"  # bump when output for a seed changes (demo.py regenerates); 2: calendar schools in their own year
SCALES = {"default": 300, "realistic": 25_000, "10x": 250_000}  # docs/DOMAIN.md, “The system”: ~25,000 object_10


@dataclass
class GenerationResult:
    """Paths written and counts (records per file, physical lines, outcomes, planted damage)."""

    out_dir: Path
    snapshot_files: dict[str, Path]
    database: Path
    truth: Path
    seed: int
    students: int
    schools: int
    include_field_133: bool
    records: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # object -> "expected/reason" -> n
    damage: dict[str, int] = field(default_factory=dict)


def _schools_for(students: int) -> int:
    # docs/DOMAIN.md, “The system”: ~140 schools for ~25,000 students; at least 8 so every planted case has a school
    return max(8, round(students / 178))


def _write_object6(path: Path, pop: Population, truth: csv.writer, rng: random.Random) -> Sink:
    name, term, bom = FILES["object_6"]
    cols = headers("object_6", False)
    sink = Sink(path / name, term, bom, [h for _, h in cols], truth)
    accounts = [s for s in pop.students if s.has_object6 and s.bucket != "duplicate_extra"]
    blanks = max(1, round(0.002 * len(accounts)))  # docs/DOMAIN.md, “Knack fields”: field_91 is 99.8 % populated
    for k, s in enumerate(accounts + accounts[:blanks]):
        email = s.email if k < len(accounts) else ""
        cells = {"id": object_id(rng, s.created), "created": knack_time(s.created),
                 "updated": knack_time(s.updated), "email": email.upper() if k % 17 == 0 else email,
                 "first_name": s.first, "last_name": s.last, "full_name": f"{s.first} {s.last}",
                 "establishment": s.school.name, "year_group": s.year_group, "group": f"{s.year_group}A"}
        out = Outcome("import") if email else Outcome("quarantine", "no_email")
        sink.write([cells.get(n, "") for n, _ in cols],
                   ["object_6", cells["id"], email, "", s.school.knack_id, out.expected, out.reason,
                    "", "", "", "", "account" if email else "no_email"])
    sink.close()
    return sink


def _object6_map(path: Path) -> dict[str, str]:
    """decoded email -> field_179, read back from the written file (what the import will see)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = csv.DictReader(fh)
        return {d.value: r["field_179"] for r in rows if (d := knack.decode_email(r["field_91_email"])).ok}


def _write_object10(path: Path, pop: Population, truth: csv.writer, rng: random.Random,
                    outcomes: dict[int, Outcome], include_field_133: bool) -> Sink:
    name, term, bom = FILES["object_10"]
    sink = Sink(path / name, term, bom, [h for _, h in headers("object_10", include_field_133)], truth)
    for s, row in object10_rows(pop, rng, include_field_133):
        out = outcomes[s.index]
        quirks = set(s.quirks) | ({s.bucket} if s.bucket else set())
        quirks |= {"multi_line_comment"} if any("\n" in c for c in row) else set()
        quirks |= {"blank_date"} if not s.date_cell else set()
        sink.write(row, ["object_10", s.record_id, s.email, out.year or pop.snapshot_year, s.school.knack_id,
                         out.expected, out.reason, out.year_rule, out.establishment_rule, out.rows, "",
                         ";".join(sorted(quirks))])
    sink.close()
    return sink


def generate(out_dir: str | Path, *, students: int = 300, seed: int = 2025, schools: int | None = None,
             include_field_133: bool = False, snapshot_year: str = "2024/2025") -> GenerationResult:
    """Write the snapshot, the damaged database and the truth file into ``out_dir`` (replacing them)."""
    if students < 100:
        raise ParameterError(f"students={students} is too small: every planted quirk needs a few records. "
                             "Use at least 100.")
    out = Path(out_dir)
    snap = out / "snapshot"
    snap.mkdir(parents=True, exist_ok=True)
    n_schools = schools or _schools_for(students)
    pop = build_population(seed, students, n_schools, snapshot_year)
    rng = random.Random(seed + 1)
    render_keys(pop, rng, include_field_133)
    report = build_database(out / "production.duckdb", pop, seed)
    sinks: dict[str, Sink] = {}
    with (out / "truth.csv").open("w", encoding="utf-8", newline="") as fh:
        truth = csv.writer(fh, lineterminator="\n")
        truth.writerow(TRUTH_HEADER)
        sinks["object_6"] = _write_object6(snap, pop, truth, rng)
        ctx = Context({s.name: s for s in pop.schools}, _object6_map(snap / FILES["object_6"][0]),
                      report.domains, snapshot_year)
        outcomes = decide_all(pop, ctx)
        sinks["object_10"] = _write_object10(snap, pop, truth, rng, outcomes, include_field_133)
        name, term, bom = FILES["object_29"]
        sinks["object_29"] = Sink(snap / name, term, bom, [h for _, h in headers("object_29", False)], truth)
        write_object29(pop, sinks["object_29"], rng, outcomes, n_extra=max(3, round(0.74 * students)))
        sinks["object_29"].close()
    return _result(out, pop, sinks, report, seed, include_field_133)


def _result(out: Path, pop: Population, sinks: dict[str, Sink], report, seed: int, f133: bool) -> GenerationResult:
    outcomes: dict[str, dict[str, int]] = {}
    with (out / "truth.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            key = f"{row['expected']}/{row['reason']}" if row["reason"] else row["expected"]
            outcomes.setdefault(row["object"], Counter())[key] += 1
    return GenerationResult(
        out, {o: out / "snapshot" / FILES[o][0] for o in FILES}, out / "production.duckdb", out / "truth.csv",
        seed, sum(1 for s in pop.students if s.bucket != "duplicate_extra"), len(pop.schools), f133,
        records={o: s.records for o, s in sinks.items()}, lines={o: s.line - 1 for o, s in sinks.items()},
        outcomes={o: dict(c) for o, c in outcomes.items()}, damage=dict(report.counts))


def generate_fresh_export(out_dir: str | Path, *, seed: int = 2025, students: int | None = None,
                          as_of: date = date(2026, 3, 15)) -> Path:
    """The current-year "fresh export" for the sync check: see ``vespa_lib.sandbox.synth.fresh``."""
    from .fresh import generate_fresh_export as fresh  # loaded on use: only the sync check needs it

    return fresh(out_dir, seed=seed, students=students, as_of=as_of)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the counts."""
    p = argparse.ArgumentParser(prog="python -m vespa_lib.sandbox.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (created; its files are replaced)")
    p.add_argument("--students", type=int, default=None, help="object_10 students (default 300)")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--scale", choices=("realistic", "10x"), help="docs/DOMAIN.md, “The system” scale (overrides --students)")
    p.add_argument("--include-field-133", action="store_true", help="add field_133 (school names)")
    a = p.parse_args(argv)
    n = SCALES[a.scale] if a.scale else (a.students or SCALES["default"])
    r = generate(a.out, students=n, seed=a.seed, include_field_133=a.include_field_133)
    for obj in FILES:
        print(f"{obj}: {r.records[obj]:,} records, {r.lines[obj]:,} physical lines -> {r.snapshot_files[obj]}")
    print(f"database: {r.database}  truth: {r.truth}")
    print("damage: " + ", ".join(f"{k}={v}" for k, v in sorted(r.damage.items())))
    return 0
