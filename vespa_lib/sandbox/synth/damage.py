"""The "damaged production" DuckDB database that matches a synthetic snapshot (docs/DOMAIN.md, “Reading the files”).

Writes only the given DuckDB file. Built like production before the workbook's first migration:
``schema.create_schema(workbook=False, legacy_email_key=True)`` — docs/DOMAIN.md, “Production schema” tables with the F2
key ``unique(email)`` and no ``is_archived`` column or year checks on scores/answers yet (which is
what lets non-canonical labels in). Planted damage: F1, F2, F8, F9, F10, F11 labels, F15 accounts.
Everything is bulk-loaded from DataFrames; no row-by-row INSERT.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from vespa_lib.write import schema

from .ids import object_id, uuid_from
from .people import TEST_DOMAIN, TRUST_DOMAIN, Population, School
from .scoring import QIDS, random_answers, score_matrix
from .stats import write_statistics

CURRENT, NONCANONICAL = "2025/2026", "2025-26"
STAMP = datetime(2025, 10, 15, 2, 0)  # fixed created_at: output must not depend on the clock


@dataclass
class DamageReport:
    """What was planted, counted as written (tests compare these with the database)."""

    domains: dict[str, set[str]] = field(default_factory=dict)  # email domain -> establishment uuids
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Rows:
    students: list[dict] = field(default_factory=list)
    cycles: list[tuple[int, int, int, date | None, str]] = field(default_factory=list)  # (stu, ans row, cycle, date, year)
    answers: list[np.ndarray] = field(default_factory=list)


def _student(rows: _Rows, sid: str, knack_id: str, email: str, name: str, school: School, year: str,
             year_group: str) -> int:
    rows.students.append({"id": sid, "knack_id": knack_id, "email": email, "name": name,
                          "establishment_id": school.uuid, "year_group": year_group, "course": "A Level",
                          "faculty": "Sixth Form", "group": f"{year_group}A", "gender": None,
                          "academic_year": year, "created_at": STAMP, "updated_at": STAMP})
    return len(rows.students) - 1


def _add_cycles(rows: _Rows, stu: int, answers: np.ndarray, n: int, first: date | None, year: str) -> None:
    for c in range(n):
        rows.answers.append(answers[c])
        when = first + timedelta(days=70 * c) if first else None
        rows.cycles.append((stu, len(rows.answers) - 1, c + 1, when, year))


def _history(rows: _Rows, pop: Population, rng: random.Random, report: DamageReport) -> None:
    """Snapshot students as the damaged sync left them (F2 re-enrolled, F1 stamped, survivors)."""
    for r, s in enumerate(pop.students):
        if s.bucket == "reenrolled":  # F2: the 2024/2025 row was overwritten by the new year's
            sid = _student(rows, uuid_from(rng), object_id(rng, datetime(2025, 9, 8) + timedelta(hours=r % 500)),
                           s.email, f"{s.first} {s.last}", s.school, CURRENT, str(int(s.year_group) + 1))
            fresh = random_answers(np.random.default_rng(r), 2)
            _add_cycles(rows, sid, fresh, 1, date(2025, 9, 15) + timedelta(days=r % 60), CURRENT)
        elif s.bucket in ("db_history", "db_f1") and s.n_cycles:
            year = "2024/2025" if s.bucket == "db_history" else CURRENT  # F1: blank date → today's year
            sid = _student(rows, uuid_from(rng), s.record_id, s.email, f"{s.first} {s.last}", s.school,
                           year, s.year_group)
            _add_cycles(rows, sid, pop.answers[r], s.n_cycles, None, year)
            report.counts["f1_students" if s.bucket == "db_f1" else "history_students"] += 1


def _newcomers(rows: _Rows, pop: Population, rng: random.Random, nprng: np.random.Generator,
               report: DamageReport) -> None:
    """2025/2026 students absent from the snapshot; they make email domains resolvable (or not)."""
    live = pop.schools[:-1]
    count = max(2 * len(live), round(0.6 * len(pop.students)))
    answers = random_answers(nprng, count * 2).reshape(count, 2, -1)
    for k in range(count):
        school = live[k % len(live)]
        domain = school.domain
        if k < 2 * len(live) and k // len(live) == 1 and school.index in (4, 5):
            domain = TRUST_DOMAIN  # two schools share it: an ambiguous domain
        elif k in (7, 8):
            domain, report.counts["test_accounts"] = TEST_DOMAIN, report.counts["test_accounts"] + 1
        elif k in (9, 10):
            domain = "gmail.com"
        sid = _student(rows, uuid_from(rng), object_id(rng, datetime(2025, 9, 1) + timedelta(minutes=k)),
                       f"new{k}.student@{domain}", f"New Student{k}", school, CURRENT, "12")
        n = 2 if k % 5 == 0 else 1
        _add_cycles(rows, sid, answers[k], n, date(2025, 9, 10) + timedelta(days=k % 70), CURRENT)


def _frames(rows: _Rows, report: DamageReport) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """students, vespa_scores and question_responses frames with the F8/F10/F11 damage planted."""
    students = pd.DataFrame(rows.students)
    answers = np.stack(rows.answers)
    sc = score_matrix(answers)
    stu, arow, cyc, when, year = (list(x) for x in zip(*rows.cycles, strict=True))
    scores = pd.DataFrame({"stu": stu, "cycle": cyc, "completion_date": when, "academic_year": year})
    for j, n in enumerate(("vision", "effort", "systems", "practice", "attitude", "overall")):
        scores[n] = sc[arow, j].astype("int32")
    cur = scores[(scores.academic_year == CURRENT) & (scores.cycle == 1)]
    single = cur[~cur.stu.isin(scores[scores.cycle > 1].stu)]
    f10 = single.iloc[:: max(1, len(single) // max(3, len(single) // 20))].head(max(3, len(single) // 20))
    copies = pd.concat([f10.assign(cycle=2), f10.assign(cycle=3)])  # F10: same six scores and date
    report.counts["f10_copy_rows"] = len(copies)
    scores = pd.concat([scores, copies], ignore_index=True)
    qr = pd.DataFrame({"stu": np.repeat(stu, len(QIDS)), "cycle": np.repeat(cyc, len(QIDS)),
                       "question_id": np.tile(np.array(QIDS, dtype=object), len(arow)),
                       "response_value": answers[arow].reshape(-1).astype("int32"),
                       "academic_year": np.repeat(year, len(QIDS))})
    f8_students = cur.stu.iloc[1::25].head(max(3, len(cur) // 25))
    f8 = qr[qr.stu.isin(f8_students) & (qr.academic_year == CURRENT)].assign(academic_year="2024/2025")
    report.counts["f8_students"], report.counts["f8_rows"] = len(f8_students), len(f8)
    qr = pd.concat([qr, f8], ignore_index=True)
    odd = cur.stu.iloc[2::40].head(max(2, len(cur) // 40))
    odd = odd[~odd.isin(f10.stu) & ~odd.isin(f8_students)]
    for frame, key in ((scores, "noncanonical_score_rows"), (qr, "noncanonical_answer_rows")):
        mask = frame.stu.isin(odd) & (frame.academic_year == CURRENT)
        frame.loc[mask, "academic_year"] = NONCANONICAL  # F11
        report.counts[key] = int(mask.sum())
    return students, scores, qr


def build_database(path: Path, pop: Population, seed: int) -> DamageReport:
    """Create ``path`` (replacing it) with the damaged production tables. Writes that file only."""
    rng, nprng = random.Random(seed + 7), np.random.default_rng(seed + 7)
    report = DamageReport(counts={"test_accounts": 0, "f1_students": 0, "history_students": 0})
    rows = _Rows()
    _history(rows, pop, rng, report)
    _newcomers(rows, pop, rng, nprng, report)
    students, scores, qr = _frames(rows, report)
    for email, est in zip(students.email, students.establishment_id, strict=True):
        report.domains.setdefault(email.rsplit("@", 1)[1], set()).add(est)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")  # batch output: no progress bar on stderr
    try:
        schema.create_schema(con, "duckdb", workbook=False, legacy_email_key=True)
        _load(con, pop, students, scores, qr, f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4")
        write_statistics(con, CURRENT)  # F9: only the current year has national rows
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return report


def _load(con: duckdb.DuckDBPyConnection, pop: Population, students: pd.DataFrame,
          scores: pd.DataFrame, qr: pd.DataFrame, id_prefix: str) -> None:
    est = pd.DataFrame([{"id": s.uuid, "knack_id": s.knack_id, "name": s.name, "is_australian": s.is_australian,
                         "use_standard_year": s.use_standard_year, "status": s.status,
                         "portal_type": s.portal_type, "created_at": STAMP, "updated_at": STAMP}
                        for s in pop.schools])
    years = pd.DataFrame({"academic_year": ["2023/2024", "2024/2025", CURRENT],
                          "start_date": [date(2023, 8, 1), date(2024, 8, 1), date(2025, 8, 1)],
                          "end_date": [date(2024, 7, 31), date(2025, 7, 31), date(2026, 7, 31)],
                          "is_current": [False, False, True]})
    ids = pd.DataFrame({"stu": np.arange(len(students)), "sid": students.id})
    con.register("est_df", est)
    con.register("years_df", years)
    con.register("stu_df", students)
    con.register("ids_df", ids)
    con.register("scores_df", scores)
    con.register("qr_df", qr)
    con.execute("INSERT INTO establishments BY NAME SELECT * FROM est_df")
    con.execute("INSERT INTO academic_years BY NAME SELECT * FROM years_df")
    con.execute("INSERT INTO students BY NAME SELECT * REPLACE (CAST(id AS UUID) AS id, "
                "CAST(establishment_id AS UUID) AS establishment_id) FROM stu_df")
    # Sequential, seed-derived ids and key-ordered rows: index insertion in order is several
    # times faster than random UUIDs, and the ids are reproducible.
    for table, frame, key, prefix in (("vespa_scores", "scores_df", "cycle", "a"), ("question_responses", "qr_df",
                                       "cycle, academic_year, question_id", "b")):
        con.execute(f"INSERT INTO {table} BY NAME SELECT CAST(? || printf('%012x', row_number() OVER "
                    f"(ORDER BY i.sid, {key})) AS UUID) AS id, CAST(i.sid AS UUID) AS student_id, "
                    f"f.* EXCLUDE (stu), TIMESTAMP '2025-10-15 02:00:00' AS created_at "
                    f"FROM {frame} f JOIN ids_df i USING (stu) ORDER BY i.sid, {key}", [id_prefix + prefix + "00-8000-"])
    for name in ("est_df", "years_df", "stu_df", "ids_df", "scores_df", "qr_df"):
        con.unregister(name)
