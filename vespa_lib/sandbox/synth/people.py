"""The synthetic population: schools and the 2024/2025 students of the snapshot, with their quirks.

``build_population`` is deterministic for a seed and holds no text: cells are rendered while the
CSV files are streamed (``csvwrite``). Quirk buckets that decide an import outcome are disjoint, so
every record carries at most one reason to be set aside (the truth file stays unambiguous).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from .ids import object_id, uuid_from
from .scoring import QINDEX, random_answers, score_matrix
from .text import FIRST_NAMES, KINDS, LAST_NAMES, TOWNS

TRUST_DOMAIN = "learn.northtrust.org.uk"  # shared by two schools: ambiguous email domain
UNKNOWN_DOMAIN = "outlook.com"  # no existing student uses it: no email-domain match
TEST_DOMAIN = "vespa.academy"  # docs/DOMAIN.md F15
UNKNOWN_SCHOOL = "Riverside Closed Academy"  # named by field_133 but not in the database

# Disjoint buckets: (name, rate, minimum at small scale). Rates follow docs/DOMAIN.md where it gives one.
BUCKETS = (
    ("no_email", 0.002, 3), ("invalid_email", 0.002, 3), ("bad_date", 0.001, 3),
    ("stale_date", 0.01, 4), ("outside_import_year", 0.004, 4), ("no_establishment", 0.003, 3),
    ("unknown_establishment", 0.002, 2), ("no_scores", 0.02, 5), ("duplicate", 0.005, 4),
    ("f10_copy", 0.02, 4), ("test_account", 0.002, 2), ("answers_without_scores", 0.003, 3),
    ("dated", 0.05, 20), ("reenrolled", 0.35, 40), ("db_history", 0.08, 15), ("db_f1", 0.08, 15),
)
# Independent, outcome-neutral quirks: (name, rate, minimum).
EXTRAS = (
    ("html_anchor_email", 0.03, 5), ("mixed_case_email", 0.05, 5), ("score_7_0", 0.05, 5),
    ("hostile_text", 0.01, 5), ("answer_out_of_range", 0.01, 4), ("answer_zero", 0.01, 4),
    ("q29_percentage", 0.02, 4),
)
SNAPSHOT_END = datetime(2025, 7, 31, 18, 0)


@dataclass
class School:
    index: int
    knack_id: str
    uuid: str
    name: str
    domain: str
    is_australian: bool = False
    use_standard_year: bool | None = None
    status: str = "Active"
    portal_type: str = "COACHING PORTAL"


@dataclass
class Student:
    index: int
    record_id: str
    email: str  # the true address, canonical (lower-case)
    first: str
    last: str
    school: School
    created: datetime
    updated: datetime
    n_cycles: int
    bucket: str | None = None
    quirks: set[str] = field(default_factory=set)
    date_cell: str = ""
    has_object6: bool = True
    o29_link: str | None = "id"  # id | email | None (no object_29 record)
    o29_email: bool = False
    duplicate_of: int | None = None  # index of the student this extra record duplicates
    year_group: str = "12"
    email_cell: str = ""  # the object_10 email cell as written (rendered by csvwrite.render_keys)
    field_133: str | None = None  # the establishment cell, None when the column is absent


@dataclass
class Population:
    schools: list[School]
    students: list[Student]  # object_10 records in file order (duplicates included)
    answers: np.ndarray  # (records, 3, 32) clean answers
    scores: np.ndarray  # (records, 3, 6) stored scores
    snapshot_year: str = "2024/2025"


def _count(n: int, rate: float, minimum: int) -> int:
    return max(minimum, round(rate * n))


def build_schools(rng: random.Random, count: int) -> list[School]:
    """Schools 0..count-1: #1 Australian calendar-year, #2 Australian with NULL use_standard_year,
    #3 Australian standard year, #4/#5 share a trust email domain, the last is Cancelled."""
    schools, names = [], set()
    for i in range(count):
        name = f"{TOWNS[i % len(TOWNS)]} {KINDS[(i // len(TOWNS)) % len(KINDS)]}"
        if name in names:
            name = f"{name} {i}"
        names.add(name)
        slug = name.lower().replace(" ", "")
        created = datetime(2019, 1, 1) + timedelta(days=rng.randint(0, 1400), seconds=rng.randint(0, 86399))
        s = School(i, object_id(rng, created), uuid_from(rng), name, f"{slug}.sch.uk")
        s.is_australian = i in (1, 2, 3)
        s.use_standard_year = {1: False, 2: None, 3: True}.get(i, True if i % 7 == 0 else None)
        if s.is_australian:
            s.domain = f"{slug}.vic.edu.au"
        if i == count - 1:
            s.status = "Cancelled"
        if i % 9 == 8:
            s.portal_type = "RESOURCE PORTAL"
        schools.append(s)
    return schools


def _email(first: str, last: str, n: int, domain: str) -> str:
    local = f"{first}.{last}".lower().replace("'", "").replace("é", "e").replace("ë", "e")
    return f"{local}{n}@{domain}"


def _assign_buckets(rng: random.Random, students: list[Student]) -> None:
    order = [s for s in students]
    rng.shuffle(order)
    pos = 0
    for name, rate, minimum in BUCKETS:
        k = min(_count(len(students), rate, minimum), len(order) - pos)
        for s in order[pos:pos + k]:
            s.bucket = name
        pos += k
    for name, rate, minimum in EXTRAS:
        pool = [s for s in students if s.bucket in (None, "dated", "reenrolled")]
        for s in rng.sample(pool, min(len(pool), _count(len(students), rate, minimum))):
            s.quirks.add(name)


def build_population(seed: int, n_students: int, n_schools: int, snapshot_year: str) -> Population:
    """The deterministic population for a seed (no I/O)."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    schools = build_schools(rng, n_schools)
    live = schools[:-1]
    students = []
    for i in range(n_students):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        school = live[min(int(rng.paretovariate(1.2)) - 1 + rng.randrange(len(live)), len(live) - 1)]
        created = datetime(2024, 8, 20) + timedelta(minutes=rng.randint(0, 60 * 24 * 250))
        updated = min(created + timedelta(minutes=rng.randint(10, 60 * 24 * 120)), SNAPSHOT_END)
        n_cycles = rng.choices((1, 2, 3), weights=(55, 30, 15))[0]
        s = Student(i, object_id(rng, created), _email(first, last, i, school.domain), first, last,
                    school, created, updated, n_cycles, year_group=rng.choice(("12", "13", "11", "10")))
        s.has_object6 = rng.random() < 0.94
        s.o29_link = rng.choices(("id", "email", None), weights=(50, 40, 10))[0]
        s.o29_email = rng.random() < 0.45
        students.append(s)
    _assign_buckets(rng, students)
    for s in students:
        _apply_bucket(rng, s, schools)
    records = students + [_duplicate(rng, s, len(students) + k)
                          for k, s in enumerate(x for x in students if x.bucket == "duplicate")]
    answers, stored = _answers_and_scores(nprng, records)
    return Population(schools, records, answers, stored, snapshot_year)


def format_date(when: datetime, style: str) -> str:
    """A Knack date cell: ``time`` DD/MM/YYYY HH:MM, ``date`` DD/MM/YYYY, ``iso`` YYYY-MM-DD."""
    return when.strftime({"time": "%d/%m/%Y %H:%M", "date": "%d/%m/%Y", "iso": "%Y-%m-%d"}[style])


def _dated(rng: random.Random, s: Student, start: datetime, days: int, fixed: str | None = None) -> None:
    when = start + timedelta(days=rng.randint(0, days), minutes=rng.randint(7 * 60, 17 * 60))
    style = rng.choices(("time", "date", "iso"), weights=(50, 40, 10))[0]
    s.date_cell = fixed or format_date(when, style)
    s.quirks.add({"time": "date_with_time", "date": "date_without_time", "iso": "date_iso"}[style])


BAD_DATES = ("31/02/2025", "45678", "next Tuesday", "13/13/2024 25:61")
STALE_FIXED = ("31/07/2024",)  # docs/DOMAIN.md, “Academic years”: last day of 2023/2024 (F12 boundary)
OUTSIDE_FIXED = ("01/08/2025", "22/09/2025 09:42")


def _apply_bucket(rng: random.Random, s: Student, schools: list[School]) -> None:
    """Give a student the data its bucket implies (dates, links, email domain)."""
    b = s.bucket
    if b not in (None, "dated", "reenrolled", "db_history", "db_f1") and s.school.is_australian:
        s.school = schools[0]  # outcome buckets stay on UK-rule schools: one reason per record
        s.email = _email(s.first, s.last, s.index, s.school.domain)
    if b in ("no_email", "invalid_email"):
        s.o29_link, s.o29_email = "id", False
    elif b == "bad_date":
        s.date_cell = BAD_DATES[s.index % len(BAD_DATES)]
    elif b == "stale_date":
        s.created = datetime(2023, 9, 4) + timedelta(days=rng.randint(0, 200))
        s.record_id = object_id(rng, s.created)
        _dated(rng, s, datetime(2023, 9, 10), 300, STALE_FIXED[0] if s.index % 5 == 0 else None)
    elif b == "outside_import_year":
        _dated(rng, s, datetime(2025, 8, 1), 60, OUTSIDE_FIXED[s.index % 3] if s.index % 3 < 2 else None)
    elif b == "no_establishment":
        s.has_object6 = False
        domain = TRUST_DOMAIN if s.index % 2 else UNKNOWN_DOMAIN
        s.email = _email(s.first, s.last, s.index, domain)
    elif b in ("unknown_establishment", "duplicate", "test_account"):
        s.has_object6 = True
        if b == "test_account":
            s.email = _email(s.first, s.last, s.index, TEST_DOMAIN)
    elif b == "no_scores":
        s.n_cycles, s.o29_link = 0, None
    elif b in ("f10_copy", "answers_without_scores"):
        s.n_cycles = 1
        s.o29_link = "id" if b == "answers_without_scores" else s.o29_link
    elif b == "dated":
        _dated(rng, s, datetime(2024, 8, 1), 364)
    if s.school.is_australian and s.school.use_standard_year is False and b is None:
        s.quirks.add("australian_calendar")
        # Mix blank, Aug-Dec 2024 (calendar 2024/2024) and Feb-Jul 2025 (calendar 2025/2025).
        k = s.index % 3
        if k:
            _dated(rng, s, datetime(2024, 8, 5) if k == 1 else datetime(2025, 2, 3), 140)


def _duplicate(rng: random.Random, s: Student, index: int) -> Student:
    """A second object_10 record of the same student, which the import must collapse."""
    created = s.created - timedelta(days=rng.randint(1, 15))
    d = Student(index, object_id(rng, created), s.email, s.first, s.last, s.school, created,
                s.updated - timedelta(days=1), max(1, s.n_cycles - 1), bucket="duplicate_extra",
                year_group=s.year_group)
    d.o29_link, d.duplicate_of, d.has_object6 = None, s.index, False
    d.quirks.add("mixed_case_email")
    return d


def _answers_and_scores(nprng: np.random.Generator, records: list[Student]) -> tuple[np.ndarray, np.ndarray]:
    """Clean answers for 3 cycles per record and the scores they imply (docs/DOMAIN.md, “Scores”). Genuine
    later cycles never equal the current cycle's six scores, so only planted copies look like F10."""
    n = len(records)
    answers = random_answers(nprng, n * 3).reshape(n, 3, -1)
    stored = score_matrix(answers.reshape(n * 3, -1)).reshape(n, 3, 6)
    q1 = QINDEX["q1"]
    for r, s in enumerate(records):
        cur = s.n_cycles - 1
        for c in range(max(cur, 0)):
            while (stored[r, c] == stored[r, cur]).all():
                answers[r, c, q1 + (c % 3)] = answers[r, c, q1 + (c % 3)] % 5 + 1
                stored[r, c] = score_matrix(answers[r, c][None, :])[0]
    return answers, stored
