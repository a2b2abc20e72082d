"""The "fresh export": Knack's state during the current year, for the sync_check runbook.

``generate_fresh_export(out_dir, as_of=date(2026, 3, 15))`` reads ``out_dir/production.duckdb`` and
``out_dir/truth.csv`` (read-only: opened read-only, never rewritten) and writes
``out_dir/fresh_export/FullObject_{6,10,29}_<as_of>.csv`` in the snapshot's format (same writers and
field map, BOM, multi-line cells, quirks) plus ``out_dir/fresh_truth.csv``: per record the outcome
the one authoritative sync must reach, and the drift against the database's current year.

Planted against the database's current year: new completions (new students; a new cycle of an
existing one), edited scores, students deleted from Knack, stale records dated in the archived year
(the F2 upsert would have rewritten 2024/2025 with them), a new re-enrolment (same email as a
2024/2025 student, new record id), F10 copies in the export, blank dates (F1: never today's year)
the cohort rule across 1 August (the next cycle of a student of the archived year, completed just after
1 August with the same cycle 1: ``late_cycle_of_archived_year``; a reset record of such a student with a
new cycle 1: ``cohort_started``) and the decoding quirks. Outcome rules (the import chains of docs/ARCHITECTURE.md for the year N of
``as_of``): email → establishment (object_6 account, then unambiguous email domain) → date (blank →
``no_date``, unparseable → ``bad_date``, benchmark year before N → ``stale_date``, after N →
``outside_current_year``; each school against its own running year) → scores (F10 copies dropped,
none left → ``no_scores``). Calendar-year schools' current records are dated in the calendar year of
``as_of`` (from the school's late-January start, or 1 January, to the day before ``as_of``), so they
sync as that running year ``Y/Y`` (on 2026-03-15: ``2026/2026``, counted nationally in ``2026/2027``);
the database's current year is read under both running labels.

Drift of a synced record, keyed ``(email, academic_year)`` like production: ``new`` (no such
student), ``changed`` (``changed_columns``: ``students.<col>``, ``vespa_scores.c<k>.<col>`` or
``:insert``/``:delete``, the same for ``question_responses``; ``academic_year`` flags a stored
non-canonical label, F11; ``completion_date`` is on the latest cycle only, as the import writes it)
or ``unchanged``. Database students of year N that no export record syncs are rows
``object=db_student, expected=extra`` (reason ``deleted_from_knack``, or ``mislabelled_calendar_year``
when the student syncs under its ``Y/Y`` label); a student whose record is only set aside is not extra.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path

import duckdb
import numpy as np

from vespa_lib.errors import ParameterError, SnapshotError
from vespa_lib.rules import knack, years

from .csvwrite import (
    FILES,
    Sink,
    _score_cells,
    headers,
    knack_time,
    object10_rows,
    object29_student_row,
    render_keys,
)
from .ids import object_id
from .people import Population, School, Student, _answers_and_scores, format_date
from .scoring import QIDS, SCORE_COLUMNS, random_answers, score_matrix
from .truth import Context, _establishment

__all__ = ["FRESH_TRUTH_HEADER", "generate_fresh_export", "main"]

FRESH_TRUTH_HEADER = (
    "object", "record_id", "record_number", "start_line", "email", "expected", "reason", "academic_year",
    "establishment_knack_id", "year_rule", "establishment_rule", "expected_score_rows", "expected_answer_rows",
    "drift", "changed_columns", "score_inserts", "score_updates", "score_deletes", "answer_inserts",
    "answer_updates", "answer_deletes", "in_db", "quirks")
STUDENT_ATTRS = ("knack_id", "name", "establishment_id", "year_group", "course", "faculty", "group", "gender")


@dataclass
class DbYear:
    """The database's current year as read (read-only): students, their score and answer rows."""

    year: str  # the UK running year; calendar-year schools run ``calendar``
    schools: dict[str, School]  # uuid -> school
    students: list[dict]
    scores: dict[str, dict[int, tuple]]  # student id -> cycle -> (six scores, date, label)
    answers: dict[str, dict[int, tuple[str, dict[str, int]]]]  # id -> cycle -> (label, q -> value)
    domains: dict[str, set[str]] = field(default_factory=dict)
    calendar: str = ""  # the calendar-year schools' running year (the calendar year of as_of)


# docs/DOMAIN.md, “Academic years”: a calendar-year school's year starts in late January.
CALENDAR_START = (1, 26)


def calendar_window(as_of: date) -> tuple[date, date]:
    """Days a calendar-year school's current record may carry: its late-January start (1 January
    when ``as_of`` is earlier) to the day before ``as_of``, all in the calendar year of ``as_of``."""
    hi = max(as_of - timedelta(days=1), date(as_of.year, 1, 1))
    return min(date(as_of.year, *CALENDAR_START), hi), hi


@dataclass
class Record:
    """One planted object_10 record with what it stands for."""

    student: Student
    kind: str
    db: dict | None = None  # the database student it continues


def _school(row: tuple, i: int) -> School:
    uuid, knack_id, name, aus, std, status, portal = row
    slug = name.lower().replace(" ", "")  # people.build_schools: the domain is the slugged name
    return School(i, knack_id, str(uuid), name, f"{slug}.vic.edu.au" if aus else f"{slug}.sch.uk",
                  bool(aus), std, status, portal)


def read_db(path: Path, as_of: date) -> DbYear:
    """Read the current year of the production DuckDB (opened read-only)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = [r[0] for r in con.execute("SELECT academic_year FROM academic_years WHERE is_current").fetchall()]
        year, calendar = years.running_years(as_of)
        if cur != [year]:
            raise ParameterError(f"as_of {as_of} is in {year} but the database's current year is {cur}. "
                                 "Pass an as_of date inside the database's current year.")
        ests = con.execute("SELECT id, knack_id, name, is_australian, use_standard_year, status, portal_type "
                           "FROM establishments ORDER BY knack_id").fetchall()
        schools = {str(r[0]): _school(r, i) for i, r in enumerate(ests)}
        cols = ", ".join(f'"{c}"' for c in ("id", "email", "academic_year", *STUDENT_ATTRS))
        rows = [dict(zip(("id", "email", "academic_year", *STUDENT_ATTRS), r, strict=True))
                for r in con.execute(f"SELECT {cols} FROM students ORDER BY email, academic_year").fetchall()]
        domains: dict[str, set[str]] = {}
        for r in rows:
            r["id"], r["establishment_id"] = str(r["id"]), str(r["establishment_id"])
            domains.setdefault(r["email"].rsplit("@", 1)[1], set()).add(r["establishment_id"])
        students = [r for r in rows if _canonical(r["academic_year"]) in (year, calendar)]
        # F11: every spelling of the running years counts as them (values bound as parameters)
        labels = [x for (x,) in con.execute("SELECT DISTINCT academic_year FROM students UNION "
                                            "SELECT DISTINCT academic_year FROM vespa_scores UNION "
                                            "SELECT DISTINCT academic_year FROM question_responses").fetchall()
                  if _canonical(x) in (year, calendar)]
        mine = "FROM {t} t JOIN students s ON s.id = t.student_id AND list_contains($1, s.academic_year) " \
               "WHERE list_contains($1, t.academic_year)"
        scores: dict[str, dict[int, tuple]] = {}
        for sid, c, *six, when, label in con.execute(
                "SELECT CAST(t.student_id AS VARCHAR), cycle, vision, effort, systems, practice, attitude, overall, completion_date, "
                f"t.academic_year {mine.format(t='vespa_scores')} ORDER BY 1, 2", [labels]).fetchall():
            scores.setdefault(sid, {})[c] = (tuple(six), when, label)
        answers: dict[str, dict[int, tuple[str, dict[str, int]]]] = {}
        for sid, c, label, qs, vs in con.execute(
                "SELECT CAST(t.student_id AS VARCHAR), cycle, t.academic_year, list(question_id ORDER BY question_id), "
                f"list(response_value ORDER BY question_id) {mine.format(t='question_responses')} "
                "GROUP BY ALL ORDER BY ALL", [labels]).fetchall():
            answers.setdefault(sid, {})[c] = (label, dict(zip(qs, vs, strict=True)))
    finally:
        con.close()
    return DbYear(year, schools, students, scores, answers, domains, calendar)


def read_cycle1(path: Path, year: str) -> dict[tuple[str, str], dict]:
    """(email, label) -> the database's cycle-1 row of the years before ``year`` (UK and calendar), with
    the student's record id, school, attributes and every cycle's scores and answers (the cohort rule's
    evidence). Read-only."""
    first = int(year[:4])
    labels = [years.previous_year(year), f"{first - 1}/{first - 1}", f"{first}/{first}"]
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("""SELECT lower(s.email), t.academic_year, s.knack_id, CAST(s.establishment_id AS VARCHAR),
                   s.name, s.year_group, s.gender, s.course, s.faculty, s."group",
                   (SELECT list([o.cycle, o.vision, o.effort, o.systems, o.practice, o.attitude, o.overall] ORDER BY o.cycle)
                    FROM vespa_scores o WHERE o.student_id = s.id AND o.academic_year = t.academic_year),
                   (SELECT list([CAST(q.cycle AS VARCHAR), q.question_id, CAST(q.response_value AS VARCHAR)])
                    FROM question_responses q WHERE q.student_id = s.id AND q.academic_year = t.academic_year)
            FROM vespa_scores t JOIN students s ON s.id = t.student_id AND s.academic_year = t.academic_year
            WHERE t.cycle = 1 AND list_contains($1, t.academic_year) ORDER BY 1, 2""", [labels]).fetchall()
    finally:
        con.close()
    out = {}
    for r in rows:
        cycles = {c[0]: tuple(c[1:]) for c in r[10] or []}
        answers: dict[int, dict[str, int]] = {}
        for c, q, v in r[11] or []:
            answers.setdefault(int(c), {})[q] = int(v)
        out[(r[0], r[1])] = {"six": cycles[1], "cycles": cycles, "answers": answers, "knack_id": r[2],
                             "establishment_id": r[3], "name": r[4], "year_group": r[5],
                             **dict(zip(("gender", "course", "faculty", "group"), r[6:10], strict=True))}
    return out


def read_snapshot_truth(path: Path) -> list[dict[str, str]]:
    """The snapshot truth's object_10 records imported into 2024/2025 (read-only)."""
    with path.open(encoding="utf-8", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["object"] == "object_10" and r["expected"] == "import"]


def _day(rng: random.Random, lo: date, hi: date) -> date:
    return lo + timedelta(days=rng.randint(0, max(0, (hi - lo).days)))


def _date_cell(rng: random.Random, s: Student, day: date | None) -> None:
    """The field_855 cell of ``day`` in one of Knack's styles (docs/DOMAIN.md, “Knack fields”), blank when None."""
    if day is None:
        s.date_cell = ""
        s.quirks.add("blank_date")
        return
    when = datetime.combine(day, datetime.min.time()) + timedelta(minutes=rng.randint(7 * 60, 17 * 60))
    style = rng.choices(("time", "date", "iso"), weights=(50, 40, 10))[0]
    s.date_cell = format_date(when, style)
    s.quirks.add({"time": "date_with_time", "date": "date_without_time", "iso": "date_iso"}[style])


def _calendar(school: School) -> bool:
    return years.uses_calendar_year(school.is_australian, school.use_standard_year)


def _name(email: str) -> tuple[str, str]:
    """A plausible first/last name from an email local part (the snapshot truth holds no names)."""
    parts = email.split("@")[0].rstrip("0123456789").split(".")
    return parts[0].title(), (parts[1] if len(parts) > 1 else "Student").title()


@dataclass
class Plan:
    """The planted records and their answer/score arrays, before any file is written."""

    records: list[Record] = field(default_factory=list)
    answers: list[np.ndarray] = field(default_factory=list)  # per record (3, 32)
    scores: list[np.ndarray] = field(default_factory=list)  # per record (3, 6)

    def add(self, rec: Record, answers: np.ndarray, scores: np.ndarray) -> None:
        rec.student.index = len(self.records)
        self.records.append(rec)
        self.answers.append(answers.astype(np.int8))
        self.scores.append(scores.astype(np.int8))


def _db_arrays(db: DbYear, sid: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(3, 32) answers and (3, 6) scores of a database student's answered cycles (F10 copies have
    no answers, so they are not cycles the student took)."""
    answers, scores = np.zeros((3, len(QIDS)), np.int8), np.zeros((3, 6), np.int8)
    cycles = sorted(db.answers.get(sid, {}))
    for c in cycles:
        answers[c - 1] = [db.answers[sid][c][1].get(q, 0) for q in QIDS]
        scores[c - 1] = db.scores[sid][c][0] if c in db.scores.get(sid, {}) else score_matrix(answers[c - 1][None])[0]
    return answers, scores, len(cycles)


def _pick(rng: random.Random, pool: list, k: int, taken: set) -> list:
    free = [x for x in pool if x["id"] not in taken]
    chosen = rng.sample(free, min(k, len(free)))
    taken.update(x["id"] for x in chosen)
    return chosen


def _plan_db_students(plan: Plan, db: DbYear, snap: dict[str, dict], rng: random.Random,
                      nprng: np.random.Generator, as_of: date) -> list[dict]:
    """The database's current students as Knack holds them on ``as_of``; returns the deleted ones."""
    first = years.year_start(db.year)
    dated = [r for r in db.students if any(v[1] for v in db.scores.get(r["id"], {}).values())]
    single = [r for r in dated if len(db.answers.get(r["id"], {})) == 1 and not _calendar(db.schools[r["establishment_id"]])]
    n, taken, dated_ids = len(dated), set(), {r["id"] for r in dated}
    deleted = _pick(rng, dated, max(3, round(0.02 * n)), taken)
    kinds = {x["id"]: "edited_score" for x in _pick(rng, dated, max(3, round(0.01 * n)), taken)}
    kinds |= {x["id"]: "new_cycle" for x in _pick(rng, single, max(3, round(0.03 * n)), taken)}
    no_copies = [r for r in single if len(db.scores.get(r["id"], {})) == 1]
    kinds |= {x["id"]: "f10_copy" for x in _pick(rng, no_copies, max(2, round(0.01 * n)), taken)}
    twins = [r for r in dated if r["email"] in snap and snap[r["email"]]["record_id"] != r["knack_id"]]
    kinds |= {x["id"]: "stale_twin" for x in _pick(rng, twins, max(2, round(0.005 * n)), taken)}
    gone = {x["id"] for x in deleted}
    for row in db.students:
        if row["id"] in gone:
            continue
        answers, scores, n_cycles = _db_arrays(db, row["id"])
        school = db.schools[row["establishment_id"]]
        first_name, _, last_name = (row["name"] or "").partition(" ")
        created = knack.object_id_created(row["knack_id"]).replace(tzinfo=None)
        s = Student(0, row["knack_id"], row["email"], first_name, last_name, school, created,
                    min(created + timedelta(days=rng.randint(1, 90)), datetime.combine(as_of, datetime.min.time())),
                    n_cycles, year_group=row["year_group"] or "")
        s.o29_link = rng.choices(("id", "email"), weights=(55, 45))[0]
        s.o29_email, s.has_object6 = rng.random() < 0.45, True
        kind = kinds.get(row["id"], "current" if row["id"] in dated_ids else "no_date")
        latest = db.scores.get(row["id"], {}).get(n_cycles, (None, None))[1]
        if kind == "edited_score":
            scores[n_cycles - 1, 0] = scores[n_cycles - 1, 0] % 10 + 1  # vision edited in Knack
        elif kind == "new_cycle":
            while True:  # a genuine cycle 2 never equals cycle 1's six scores (else it reads as F10)
                answers[1] = random_answers(nprng, 1)[0]
                scores[1] = score_matrix(answers[1][None])[0]
                if not (scores[1] == scores[0]).all():
                    break
            s.n_cycles, latest = 2, _day(rng, max(first + timedelta(days=150), latest), as_of - timedelta(days=1))
        elif kind == "f10_copy":
            s.bucket = "f10_copy"  # csvwrite: the current cycle copied into cycles 2 and 3 (F10)
        if latest and _calendar(school):  # calendar schools: dated in their running year (the calendar year of as_of)
            lo, hi = calendar_window(as_of)
            latest = latest if lo <= latest <= hi else lo + timedelta(days=(latest - first).days % ((hi - lo).days + 1))
        _date_cell(rng, s, latest)
        s.quirks.add(kind)
        plan.add(Record(s, kind, row), answers, scores)
        if kind == "stale_twin":  # its 2024/2025 record was never deleted from Knack (F2 bait)
            _plan_stale(plan, snap[row["email"]], school, rng, nprng, "stale_twin_old")
    return deleted


def _plan_stale(plan: Plan, snap_row: dict, school: School, rng: random.Random, nprng: np.random.Generator,
                kind: str) -> None:
    """A record dated in the archived year: the sync sets it aside, the old sync rewrote history."""
    created = knack.object_id_created(snap_row["record_id"]).replace(tzinfo=None)
    first, last = _name(snap_row["email"])
    s = Student(0, snap_row["record_id"], snap_row["email"], first, last, school, created,
                created + timedelta(days=30), rng.choice((1, 2)), bucket="stale_date")
    s.o29_link = None if kind == "stale_twin_old" else "id"
    answers, scores = _answers_and_scores(nprng, [s])
    _date_cell(rng, s, _day(rng, date(2024, 9, 2), date(2025, 7, 31)))  # docs/DOMAIN.md, “Academic years”: 2024/2025
    s.quirks.add(kind)
    plan.add(Record(s, kind), answers[0], scores[0])


NEW_QUIRKS = ("html_anchor_email", "mixed_case_email", "score_7_0", "answer_out_of_range", "answer_zero",
              "q29_percentage", "hostile_text")
# Set-aside new records: (kind, bucket, date cell or None for a dated one, email domain or None).
ODD_RECORDS = (("no_date", None, "", None), ("no_date", None, "", None), ("bad_date", None, "31/02/2026", None),
               ("bad_date", None, "next Tuesday", None), ("no_email", "no_email", None, None),
               ("no_establishment", None, None, "outlook.com"))


def _new_student(plan: Plan, rng: random.Random, nprng: np.random.Generator, school: School, k: int,
                 kind: str, lo: date, hi: date, email: str | None = None) -> Student:
    first, last = (rng.choice(("Amelia", "Noah", "Priya", "Zoë", "Aled")), rng.choice(("Khan", "Smith", "O'Brien")))
    if email is None:
        local = f"{first}.{last}".lower().replace("'", "").replace("ë", "e")
        email = f"{local}.f{k}@{school.domain}"
    created = datetime.combine(lo, datetime.min.time()) + timedelta(minutes=rng.randint(0, 60 * 24 * 20))
    s = Student(0, object_id(rng, created), email, first, last, school, created, created + timedelta(days=2),
                rng.choices((1, 2), weights=(70, 30))[0], year_group=rng.choice(("12", "13")))
    s.o29_link = rng.choices(("id", "email"), weights=(55, 45))[0]
    s.o29_email = rng.random() < 0.45
    answers, scores = _answers_and_scores(nprng, [s])
    _date_cell(rng, s, _day(rng, min(lo + timedelta(days=40 * s.n_cycles), hi), hi))
    s.quirks.add(kind)
    plan.add(Record(s, kind), answers[0], scores[0])
    return s


def _plan_new(plan: Plan, db: DbYear, snap: dict[str, dict], rng: random.Random, nprng: np.random.Generator,
              as_of: date, n_new: int) -> None:
    """New completions, new re-enrolments, stale records and the set-aside oddities."""
    lo, hi = years.year_start(db.year) + timedelta(days=20), as_of - timedelta(days=1)
    uk = [s for s in db.schools.values() if s.status != "Cancelled" and not _calendar(s)]
    for k in range(n_new):
        s = _new_student(plan, rng, nprng, uk[k % len(uk)], k, "new_student", lo, hi)
        if k < len(NEW_QUIRKS):
            s.quirks.add(NEW_QUIRKS[k])
        s.has_object6 = k % 9 != 8  # a few resolve by email domain instead (ARCHITECTURE chain step 3)
    known = {r["email"] for r in db.students}
    pool = sorted(e for e, r in snap.items() if e not in known and "dated" not in r["quirks"].split(";"))
    stale_pool = sorted(e for e, r in snap.items() if e not in known and "dated" in r["quirks"].split(";"))
    by_knack = {s.knack_id: s for s in db.schools.values()}
    k_re = max(3, round(0.01 * len(db.students)))
    for j, email in enumerate(rng.sample(pool, min(k_re, len(pool)))):  # same email, new record id (F2)
        school = by_knack[snap[email]["true_establishment_knack_id"]]
        day_lo, day_hi = (date(as_of.year, 1, 1), calendar_window(as_of)[1]) if _calendar(school) else (lo, hi)
        s = _new_student(plan, rng, nprng, school, n_new + j, "reenrolled_new", day_lo, day_hi, email)
        s.first, s.last = _name(email)
    for email in rng.sample(stale_pool, min(max(3, round(0.005 * len(db.students))), len(stale_pool))):
        _plan_stale(plan, snap[email], by_knack[snap[email]["true_establishment_knack_id"]], rng, nprng,
                    "stale_record")
    for j, (kind, bucket, cell, domain) in enumerate(ODD_RECORDS):
        school = uk[j % len(uk)]
        email = f"odd{j}.student@{domain}" if domain else None
        s = _new_student(plan, rng, nprng, school, n_new + k_re + j, kind, lo, hi, email)
        s.bucket, s.has_object6 = bucket, domain is None and bucket is None
        if bucket == "no_email":
            s.o29_link, s.o29_email = "id", False
        if cell is not None:
            s.date_cell = cell
            s.quirks.add("blank_date" if cell == "" else "unparseable_date")


def _new_six(nprng: np.random.Generator, avoid: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Answers and scores of a new cycle whose six scores differ from ``avoid``."""
    while True:
        answers = random_answers(nprng, 1)[0]
        scores = score_matrix(answers[None])[0]
        if tuple(int(v) for v in scores) != tuple(avoid):
            return answers, scores


def _plan_cohorts(plan: Plan, db: DbYear, cycle1: dict, snap: dict[str, dict], rng: random.Random,
                  nprng: np.random.Generator) -> None:
    """The cohort rule across 1 August (docs/DOMAIN.md): students of the year before with only a cycle 1 in
    the database (and no snapshot record the import would rewrite) get either their next cycle completed
    just after 1 August (same cycle 1: it continues their cohort, an archived year, so it is set aside
    as ``late_cycle_of_archived_year``) or a reset record (a new record and a new cycle 1 on 15 September:
    it starts a cohort in the current year, ``cohort_started``)."""
    taken = {r.student.email for r in plan.records} | {r["email"] for r in db.students}
    prev = years.previous_year(db.year)
    pool = [(e, v) for (e, label), v in sorted(cycle1.items()) if label == prev and max(v["cycles"]) < 3
            and sorted(v["cycles"]) == list(range(1, max(v["cycles"]) + 1)) and e not in taken
            and (e not in snap or snap[e]["expected_score_rows"] == str(len(v["cycles"])))  # the import keeps them
            and v["establishment_id"] in db.schools
            and not _calendar(db.schools[v["establishment_id"]])]
    k = max(1, min(2, len(pool) // 2))
    first = years.year_start(db.year)
    for j, (email, v) in enumerate(rng.sample(pool, min(2 * k, len(pool)))):
        late = j < k
        school = db.schools[v["establishment_id"]]
        name_first, _, name_last = (v["name"] or "Sam Student").partition(" ")
        created = datetime.combine(first - timedelta(days=300), datetime.min.time())
        rid = v["knack_id"] if late else object_id(rng, created + timedelta(days=340))
        n = max(v["cycles"]) + 1
        s = Student(0, rid, email, name_first, name_last or "Student", school, created,
                    created + timedelta(days=330), n if late else 1, year_group=v["year_group"] or "12")
        s.o29_link, s.has_object6 = "id", True
        answers, scores = np.zeros((3, len(QIDS)), np.int8), np.zeros((3, 6), np.int8)
        if late:
            for c, six in v["cycles"].items():  # the database's cycles, unchanged
                answers[c - 1] = [v["answers"].get(c, {}).get(q, 0) for q in QIDS]
                scores[c - 1] = six
            answers[n - 1], scores[n - 1] = _new_six(nprng, v["cycles"][n - 1])
            day = first + timedelta(days=rng.randint(1, 9))  # 2..10 August
        else:
            answers[0], scores[0] = _new_six(nprng, v["six"])
            day = date(first.year, 9, 15)
        _date_cell(rng, s, day)
        kind = "late_cycle" if late else "reset_record"
        s.quirks.add(kind)
        plan.add(Record(s, kind, v if late else None), answers, scores)


@dataclass
class Decision:
    """The outcome the sync must reach for one object_10 record, with its desired rows."""

    expected: str
    reason: str = ""
    year: str = ""
    year_rule: str = ""
    school: School | None = None
    establishment_rule: str = ""
    scores: dict[int, tuple] = field(default_factory=dict)  # cycle -> (six scores, completion date)
    answers: dict[int, dict[str, int]] = field(default_factory=dict)  # cycle -> question -> value


@cache
def _score(cell: str) -> int | None:
    d = knack.decode_score(cell)
    return d.value if d.ok else None


def _six(cells: dict[str, str], prefix: str) -> tuple | None:
    values = tuple(_score(cells.get(f"{prefix}_{n}", "")) for n in SCORE_COLUMNS)
    return None if None in values else values


def kept_cycles(cells: dict[str, str], day: date) -> dict[int, tuple]:
    """Score rows of a record's cells: taken cycles minus F10 copies (ARCHITECTURE: a cycle other
    than field_146 equal to the current-cycle fields and to the current cycle), the completion date
    on the latest kept cycle only (as the import writes it)."""
    cycles = {c: v for c in (1, 2, 3) if (v := _six(cells, f"c{c}")) is not None}
    cur, current = _score(cells.get("current_cycle", "")), _six(cells, "current")
    kept = {c: v for c, v in cycles.items()
            if not (c != cur and current is not None and v == current and v == cycles.get(cur))}
    if not kept:
        return {}
    latest = cur if cur in kept else max(kept)
    return {c: (v, day if c == latest else None) for c, v in kept.items()}


def _previous_label(label: str) -> str:
    first = int(label[:4]) - 1
    return f"{first}/{first}" if years.is_calendar_label(label) else f"{first}/{first + 1}"


def decide(s: Student, cells: dict[str, str], ctx: Context, year: str, calendar: str = "",
           cycle1: dict | None = None) -> Decision:
    """The sync's outcome for one object_10 record (module docstring: the rule chain). ``year`` is the
    UK running year, ``calendar`` the calendar-year schools' (default: the calendar year counted in
    ``year``). ``cycle1``: the database's cycle-1 rows (``read_cycle1``) for the cohort rule; their years
    are archived by the time the sync runs (the demo imports and archives them first)."""
    email = knack.decode_email(s.email_cell)
    if not email.ok:
        return Decision("set_aside", "no_email" if email.reason == "blank" else "invalid_email")
    school, est_rule = _establishment(s, email.value, ctx)
    if school is None:
        return Decision("set_aside", est_rule)
    d = knack.decode_date(s.date_cell)
    if not d.ok:  # F1: a record without a trustworthy date is never given today's year
        return Decision("set_aside", "no_date" if d.reason == "blank" else "bad_date", "", "", school, est_rule)
    day = knack.completion_date(d)
    label = years.academic_year_for(day, is_australian=school.is_australian,
                                    use_standard_year=school.use_standard_year)
    out = Decision("sync", "", label, "completion_date", school, est_rule)
    before = (cycle1 or {}).get((email.value, _previous_label(label)))
    if before is not None and _six(cells, "c1") is not None:
        if _six(cells, "c1") == tuple(before["six"]):
            out.expected, out.reason = "set_aside", "late_cycle_of_archived_year"
            out.year, out.year_rule = _previous_label(label), "cohort_continued"
            return out
        out.year_rule = "cohort_started"
    own = (calendar or year) if years.is_calendar_label(label) else year  # each school's own running year
    first, current_first = int(label[:4]), int(own[:4])
    if first != current_first:
        out.expected, out.reason = "set_aside", "stale_date" if first < current_first else "outside_current_year"
        return out
    out.scores = kept_cycles(cells, day)
    if not out.scores:
        out.expected, out.reason = "set_aside", "no_scores"
    return out


_canonical = cache(years.canonical)  # few distinct labels, many rows


@cache
def _answer(q29: bool, cell: str) -> int | None:
    """A decoded answer 1..5 or None; a q29 value above 5 is a percentage (docs/DOMAIN.md, “Knack fields”)."""
    pct = q29 and cell.lstrip("-").isdigit() and int(cell) > 5
    d = knack.decode_answer(cell, percentage=pct)
    return d.value if d.ok else None


def _answers(cells: dict[str, str], cycles) -> dict[int, dict[str, int]]:
    """Answer rows of the given cycles: the cells that decode to 1..5."""
    out: dict[int, dict[str, int]] = {}
    for c in cycles:
        values = ((q, _answer(q == "q29_vision_grades", cells.get(f"{q}_c{c}", ""))) for q in QIDS)
        out[c] = {q: v for q, v in values if v is not None}
    return out


def _text(v: object) -> str | None:
    return None if v is None or str(v).strip() == "" else str(v).strip()


def _attrs(rec: Record) -> dict[str, str]:
    """Attribute cells: the database's values for its students (so only planted changes drift)."""
    src = rec.db or {"gender": "", "course": "A Level", "faculty": "Sixth Form", "group": f"{rec.student.year_group}A"}
    return {k: src[k] or "" for k in ("gender", "course", "faculty", "group")}


def _score_drift(dec: Decision, have: dict[int, tuple], year: str) -> tuple[list[str], list[int]]:
    tokens, counts = [], [0, 0, 0]  # inserts, updates, deletes
    for c in sorted(set(dec.scores) | set(have)):
        if c not in have or c not in dec.scores:
            tokens.append(f"vespa_scores.c{c}:{'insert' if c not in have else 'delete'}")
            counts[0 if c not in have else 2] += 1
            continue
        (six, day), (db_six, db_day, label) = dec.scores[c], have[c]
        cols = [n for n, a, b in zip(SCORE_COLUMNS, six, db_six, strict=True) if a != b]
        cols += ["completion_date"] * (day != db_day) + ["academic_year"] * (label != _canonical(label))  # F11
        tokens += [f"vespa_scores.c{c}.{n}" for n in cols]
        counts[1] += bool(cols)
    return tokens, counts


def _answer_drift(dec: Decision, have: dict[int, tuple[str, dict[str, int]]], year: str) -> tuple[list[str], list[int]]:
    tokens, counts = [], [0, 0, 0]
    for c in sorted(set(dec.answers) | set(have)):
        want, (label, stored) = dec.answers.get(c, {}), have.get(c, (year, {}))
        both = want.keys() & stored.keys()
        changed = [q for q in both if want[q] != stored[q]]
        misspelt = label != _canonical(label)  # F11: a stored spelling other than the canonical one
        updated = len(both) if misspelt else len(changed)
        for token, n in (("insert", len(want.keys() - stored.keys())), ("delete", len(stored.keys() - want.keys()))):
            if n:
                tokens.append(f"question_responses.c{c}:{token}")
                counts[0 if token == "insert" else 2] += n
        tokens += [f"question_responses.c{c}.response_value"] * bool(changed)
        tokens += [f"question_responses.c{c}.academic_year"] * (misspelt and bool(both))
        counts[1] += updated
    return tokens, counts


def drift(dec: Decision, rec: Record, db_row: dict | None, db: DbYear) -> tuple[str, list[str], list[int]]:
    """(``new``/``changed``/``unchanged``, changed columns, [score ins, upd, del, answer ins, upd, del])."""
    if db_row is None:
        return "new", [], [len(dec.scores), 0, 0, sum(map(len, dec.answers.values())), 0, 0]
    s = rec.student
    want = {"knack_id": s.record_id, "name": f"{s.first} {s.last}", "establishment_id": dec.school.uuid,
            "year_group": s.year_group, **_attrs(rec)}
    tokens = [f"students.{c}" for c in STUDENT_ATTRS if _text(want[c]) != _text(db_row[c])]
    st, sc = _score_drift(dec, db.scores.get(db_row["id"], {}), db.year)
    at, ac = _answer_drift(dec, db.answers.get(db_row["id"], {}), db.year)
    tokens += st + at
    return ("changed" if tokens else "unchanged"), tokens, sc + ac


def _write_accounts(path: Path, pop: Population, truth: csv.writer, rng: random.Random) -> None:
    """object_6: one account per email (as ``synth._write_object6``), plus a blank-email account."""
    cols = headers("object_6", False)
    sink = Sink(path, FILES["object_6"][1], FILES["object_6"][2], [h for _, h in cols], truth)
    seen: set[str] = set()
    accounts = [s for s in pop.students if s.has_object6 and not (s.email in seen or seen.add(s.email))]
    for k, s in enumerate(accounts + accounts[:1]):
        email = s.email if k < len(accounts) else ""  # docs/DOMAIN.md, “Knack fields”: field_91 is 99.8 % populated
        cells = {"id": object_id(rng, s.created), "created": knack_time(s.created), "updated": knack_time(s.updated),
                 "email": email.upper() if k % 17 == 0 else email, "first_name": s.first, "last_name": s.last,
                 "full_name": f"{s.first} {s.last}", "establishment": s.school.name, "year_group": s.year_group,
                 "group": f"{s.year_group}A"}
        sink.write([cells.get(n, "") for n, _ in cols],
                   ["object_6", cells["id"], email, "account", "" if email else "no_email", "", s.school.knack_id,
                    *[""] * 15, "account"])
    sink.close()


def _accounts_map(path: Path) -> dict[str, str]:
    """decoded email -> field_179, read back from the written file (what the sync will see)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {d.value: r["field_179"] for r in csv.DictReader(fh) if (d := knack.decode_email(r["field_91_email"])).ok}


def _truth_row(obj: str, rid: str, s: Student, dec: Decision, answer_rows: int, kind: str = "",
               drift_: tuple = ("", [], [""] * 6), in_db: bool = False, quirks: str = "") -> list:
    school = dec.school.knack_id if dec.school else s.school.knack_id
    score_rows = len(dec.scores) if obj == "object_10" and dec.expected == "sync" else ""
    return [obj, rid, s.email, dec.expected, dec.reason, dec.year, school, dec.year_rule, dec.establishment_rule,
            score_rows, answer_rows, drift_[0], ";".join(drift_[1]), *drift_[2], "yes" if in_db else "", quirks]


def _write_records(export: Path, tag: str, pop: Population, plan: Plan, db: DbYear, ctx: Context,
                   truth: csv.writer, seed: int, cycle1: dict | None = None) -> set[tuple[str, str]]:
    """Stream object_10 then object_29 with their truth rows; returns the synced (email, year) keys."""
    rng10, rng29 = random.Random(seed + 61), random.Random(seed + 62)
    cols29 = headers("object_29", False)
    decisions = [decide(s, _score_cells(pop, r, s), ctx, db.year, db.calendar, cycle1)
                 for r, s in enumerate(pop.students)]
    o29 = {r: object29_student_row(pop, r, s, rng29, cols29) for r, s in enumerate(pop.students) if s.o29_link}
    for r, dec in enumerate(decisions):
        if dec.expected == "sync" and r in o29:
            dec.answers = _answers(o29[r][0], sorted(dec.scores))
    by_key = {(row["email"], _canonical(row["academic_year"])): row for row in db.students}
    in_db = {row["email"] for row in db.students}
    cols10 = headers("object_10", False)
    at = {n: i for i, (n, _) in enumerate(cols10)}
    sink = Sink(export / f"FullObject_10_{tag}.csv", FILES["object_10"][1], FILES["object_10"][2],
                [h for _, h in cols10], truth)
    synced = set()
    for s, row in object10_rows(pop, rng10, False):
        rec, dec = plan.records[s.index], decisions[s.index]
        for k, v in _attrs(rec).items():
            row[at[k]] = v
        d = ("", [], [""] * 6)
        if dec.expected == "sync":
            key = (knack.decode_email(s.email_cell).value, dec.year)
            synced.add(key)
            d = drift(dec, rec, by_key.get(key), db)
        quirks = set(s.quirks) | ({"multi_line_comment"} if any("\n" in c for c in row) else set())
        sink.write(row, _truth_row("object_10", s.record_id, s, dec, sum(map(len, dec.answers.values())),
                                   drift_=d, in_db=s.email in in_db, quirks=";".join(sorted(quirks))))
    sink.close()
    sink = Sink(export / f"FullObject_29_{tag}.csv", FILES["object_29"][1], FILES["object_29"][2],
                [h for _, h in cols29], truth)
    for r, (cells, row) in o29.items():
        s, dec = pop.students[r], decisions[r]
        own = Decision(dec.expected, "" if dec.expected == "sync" else "student_set_aside", dec.year, "", dec.school)
        sink.write(row, _truth_row("object_29", cells["id"], s, own, sum(map(len, dec.answers.values())),
                                   in_db=s.email in in_db, quirks=f"link_{s.o29_link}"))
    sink.close()
    return synced


def _write_extras(truth: csv.writer, db: DbYear, synced: set[tuple[str, str]], emails: set[str]) -> None:
    """Database students of the current year that no export record syncs (and not merely set aside)."""
    synced_emails = {e for e, _ in synced}
    for row in db.students:
        key = (row["email"], _canonical(row["academic_year"]))
        if key in synced or (row["email"] in emails and row["email"] not in synced_emails):
            continue
        reason = "mislabelled_calendar_year" if row["email"] in synced_emails else "deleted_from_knack"
        scores, answers = db.scores.get(row["id"], {}), db.answers.get(row["id"], {})
        n_answers = sum(len(a[1]) for a in answers.values())
        truth.writerow(["db_student", row["knack_id"], "", "", row["email"], "extra", reason, row["academic_year"],
                        db.schools[row["establishment_id"]].knack_id, "", "", 0, 0, "extra", "",
                        0, 0, len(scores), 0, 0, n_answers, "yes", ""])


def generate_fresh_export(out_dir: str | Path, *, seed: int = 2025, students: int | None = None,
                          as_of: date = date(2026, 3, 15)) -> Path:
    """Write ``out_dir/fresh_export/`` and ``out_dir/fresh_truth.csv`` (replacing them); reads
    ``production.duckdb`` and ``truth.csv`` read-only. ``students``: brand-new students to add
    (default 4 % of the current year's). Returns the export folder."""
    out = Path(out_dir)
    for need in ("production.duckdb", "truth.csv"):
        if not (out / need).is_file():
            raise SnapshotError(f"{out / need} does not exist: the fresh export continues a generated snapshot "
                                "and database. Run `python -m vespa_lib.sandbox.synth --out DIR` first.")
    db = read_db(out / "production.duckdb", as_of)
    snap = {r["email"]: r for r in read_snapshot_truth(out / "truth.csv") if r["email"]}
    rng, nprng = random.Random(seed * 1009 + 6), np.random.default_rng(seed + 606)
    plan = Plan()
    _plan_db_students(plan, db, snap, rng, nprng, as_of)
    _plan_new(plan, db, snap, rng, nprng, as_of, max(6, round(0.04 * len(db.students))) if students is None else students)
    cycle1 = read_cycle1(out / "production.duckdb", db.year)
    _plan_cohorts(plan, db, cycle1, snap, random.Random(seed * 1009 + 7), np.random.default_rng(seed + 607))
    pop = Population(list(db.schools.values()), [r.student for r in plan.records], np.stack(plan.answers),
                     np.stack(plan.scores), db.year)
    render_keys(pop, random.Random(seed + 60), False)
    export = out / "fresh_export"
    export.mkdir(parents=True, exist_ok=True)
    for old in export.glob("FullObject_*.csv"):
        old.unlink()  # one export per folder: the runbook globs FullObject_10_*.csv
    tag = as_of.isoformat()
    with (out / "fresh_truth.csv").open("w", encoding="utf-8", newline="") as fh:
        truth = csv.writer(fh, lineterminator="\n")
        truth.writerow(FRESH_TRUTH_HEADER)
        _write_accounts(export / f"FullObject_6_{tag}.csv", pop, truth, random.Random(seed + 63))
        ctx = Context({s.name: s for s in pop.schools}, _accounts_map(export / f"FullObject_6_{tag}.csv"),
                      db.domains, db.year)
        synced = _write_records(export, tag, pop, plan, db, ctx, truth, seed, cycle1)
        _write_extras(truth, db, synced, {s.email for s in pop.students})
    return export


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m vespa_lib.sandbox.synth.fresh --out DIR [--seed S] [--as-of YYYY-MM-DD] [--students N]``."""
    p = argparse.ArgumentParser(prog="python -m vespa_lib.sandbox.synth.fresh", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a folder written by `python -m vespa_lib.sandbox.synth`")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 3, 15), help="the export's date")
    p.add_argument("--students", type=int, default=None, help="brand-new students (default 4 %% of the year's)")
    a = p.parse_args(argv)
    export = generate_fresh_export(a.out, seed=a.seed, students=a.students, as_of=a.as_of)
    print(f"fresh export: {export}  truth: {Path(a.out) / 'fresh_truth.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
