"""Streaming writers for the three snapshot CSV files and the truth file.

Rows are produced one at a time and handed to ``csv.writer`` (RFC 4180 quoting, comma delimiter):
nothing holds a whole file in memory. Every record's truth row is written as the record is, with
its 1-based record number and the physical line on which it starts (F5: records ≠ lines).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from vespa_lib.rules import knack
from vespa_lib.rules.fieldmap import load

from .ids import object_id
from .people import UNKNOWN_SCHOOL, Population, Student
from .scoring import QIDS, QINDEX
from .text import HOSTILE, comment_blocks, comment_cell
from .truth import Outcome, decide_answers

TRUTH_HEADER = ("object", "record_id", "record_number", "start_line", "email", "true_academic_year",
                "true_establishment_knack_id", "expected", "reason", "year_rule", "establishment_rule",
                "expected_score_rows", "expected_answer_rows", "quirks")
FILES = {"object_6": ("FullObject_6_2025.csv", "\r\n", False),  # name, record terminator, BOM
         "object_10": ("FullObject_10_2025.csv", "\n", True),
         "object_29": ("FullObject_29_2025.csv", "\n", True)}
SKIPPED = {"establishment_id", "student_record_id"}  # `_id` columns: absent from this export


def headers(obj: str, include_field_133: bool) -> list[tuple[str, str]]:
    """(logical name, header) in file order: the first spelling of each field-map column."""
    cols = load().columns(obj)
    return [(n, c.headers[0]) for n, c in cols.items()
            if n not in SKIPPED and not (obj == "object_10" and n == "establishment" and not include_field_133)]


def knack_time(when: datetime) -> str:
    return when.strftime("%d/%m/%Y %H:%M")


def render_keys(pop: Population, rng: random.Random, include_field_133: bool) -> None:
    """Fix the identity cells (email, field_133) every later step reads: truth and files agree."""
    for s in pop.students:
        e = s.email
        if s.bucket == "no_email":
            s.email_cell = ""
        elif s.bucket == "invalid_email":
            local, domain = e.split("@")
            s.email_cell = (local, f"{local}@{domain.split('.')[0]}", f"{local[:3]} {local[3:]}@{domain}")[s.index % 3]
        elif "html_anchor_email" in s.quirks:
            s.email_cell = f'<a href="mailto:{e}">{e}</a>'
        elif "mixed_case_email" in s.quirks:
            s.email_cell = f"  {e[:1].upper()}{e[1:4]}{e[4:].upper()} "
        else:
            s.email_cell = e
        if include_field_133:
            blank = s.bucket == "no_establishment" or rng.random() < 0.03
            s.field_133 = "" if blank else UNKNOWN_SCHOOL if s.bucket == "unknown_establishment" else s.school.name


class Sink:
    """One CSV file plus the truth rows of its records; tracks record numbers and physical lines."""

    def __init__(self, path: Path, terminator: str, bom: bool, header: list[str], truth: csv.writer):
        self.fh = path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="")
        self.writer = csv.writer(self.fh, delimiter=",", quotechar='"', quoting=csv.QUOTE_MINIMAL,
                                 lineterminator=terminator)
        self.writer.writerow(header)
        self.truth, self.records, self.line = truth, 0, 2

    def write(self, row: list[str], truth: list) -> None:
        self.records += 1
        self.truth.writerow([truth[0], truth[1], self.records, self.line, *truth[2:]])
        self.writer.writerow(row)
        self.line += 1 + "".join(row).count("\n")

    def close(self) -> None:
        self.fh.close()


def _truth(obj: str, rid: str, email: str, s: Student | None, out: Outcome, n_year: str,
           score_rows: int | str, answer_rows: int | str, quirks: set[str]) -> list:
    true_year = out.year or (n_year if s is not None else "")
    return [obj, rid, email, true_year, s.school.knack_id if s else "", out.expected, out.reason,
            out.year_rule, out.establishment_rule, score_rows, answer_rows, ";".join(sorted(quirks))]


def _score_cells(pop: Population, r: int, s: Student) -> dict[str, str]:
    cells: dict[str, str] = {}
    if s.n_cycles == 0:
        return cells
    fmt = (lambda v: f"{v}.0") if "score_7_0" in s.quirks else str  # F7
    names = ("vision", "effort", "systems", "practice", "attitude", "overall")
    written = 3 if s.bucket == "f10_copy" else s.n_cycles
    for c in range(1, written + 1):
        src = 0 if s.bucket == "f10_copy" else c - 1  # F10: the current cycle copied into 2 and 3
        for j, n in enumerate(names):
            cells[f"c{c}_{n}"] = fmt(int(pop.scores[r, src, j]))
    cells["current_cycle"] = str(s.n_cycles)
    for j, n in enumerate(names):
        cells[f"current_{n}"] = fmt(int(pop.scores[r, s.n_cycles - 1, j]))
    return cells


def object10_rows(pop: Population, rng: random.Random, include_field_133: bool) -> Iterator[tuple[Student, list[str]]]:
    """(student, row) for every object_10 record, text rendered on the fly."""
    cols = headers("object_10", include_field_133)
    blocks = comment_blocks(rng)
    hostile = 0  # cycle through HOSTILE so every kind appears once five records carry one
    for r, s in enumerate(pop.students):
        cells = {"id": s.record_id, "created": knack_time(s.created), "updated": knack_time(s.updated),
                 "email": s.email_cell, "first_name": s.first, "last_name": s.last,
                 "full_name": f"{s.first} {s.last}", "establishment": s.field_133 or "",
                 "student_number": f"S{s.index:06d}", "gender": rng.choice(("Male", "Female", "")),
                 "year_group": s.year_group, "group": f"{s.year_group}{'ABCD'[s.index % 4]}",
                 "course": rng.choice(("A Level", "BTEC", "IB", "")), "faculty": rng.choice(("Sixth Form", "KS4")),
                 "level": rng.choice(("Level 3", "Level 2")), "completion_date": s.date_cell,
                 **_score_cells(pop, r, s)}
        for c in range(1, min(s.n_cycles, 3) + 1):
            cells[f"c{c}_reflection"] = comment_cell(rng, blocks, s.first)
            cells[f"c{c}_goals"] = comment_cell(rng, blocks, "Goal")
        if "hostile_text" in s.quirks:
            cells["c1_reflection"] = HOSTILE[hostile % len(HOSTILE)] + "\n" + cells.get("c1_reflection", "")
            cells["c1_goals"] = HOSTILE[(hostile + 1) % len(HOSTILE)]
            hostile += 1
        yield s, [cells.get(n, "") for n, _ in cols]


def answer_cells(pop: Population, r: int, s: Student, rng: random.Random) -> dict[str, str]:
    """Per-question cells of one object_29 record: clean answers with the record's answer quirks."""
    answered = s.n_cycles + (1 if s.bucket == "answers_without_scores" else 0)
    cells: dict[str, str] = {}
    for c in range(1, answered + 1):
        for q in QIDS:
            a = int(pop.answers[r, c - 1, QINDEX[q]])
            v = str(a)
            if q == "q29_vision_grades" and "q29_percentage" in s.quirks:
                v = str(rng.randint(max(6, (a - 1) * 20 + 1), a * 20))  # docs/DOMAIN.md, “Knack fields” bands, > 5
            cells[f"{q}_c{c}"] = v
            if c == answered:
                cells[f"{q}_current"] = v
    if "answer_out_of_range" in s.quirks:
        cells["q5_c1"] = ("6", "9", "-1")[s.index % 3]
    if "answer_zero" in s.quirks:
        cells["q8_c1"] = "0"  # docs/DOMAIN.md, “Knack fields”: 0 = not answered
    cells["current_cycle"] = str(answered)
    return cells


@lru_cache(maxsize=4096)
def _answer_ok(question: str, value: str) -> bool:
    """Does ``value`` decode to an answer 1..5 (a q29 value above 5 is a percentage, docs/DOMAIN.md, “Knack fields”)?"""
    pct = question == "q29_vision_grades" and value.lstrip("-").isdigit() and int(value) > 5
    return knack.decode_answer(value, percentage=pct).ok


def count_answers(cells: dict[str, str], cycles: int) -> int:
    """Answer rows the import writes for cycles 1..cycles (cells that decode; few distinct values)."""
    return sum(_answer_ok(q, cells.get(f"{q}_c{c}", "")) for c in range(1, cycles + 1) for q in QIDS)


def object29_student_row(pop: Population, r: int, s: Student, rng: random.Random, cols) -> tuple[dict, list[str]]:
    link = s.record_id if s.o29_link == "id" else s.email
    created = s.created + timedelta(minutes=5)
    cells = {"id": object_id(rng, created), "created": knack_time(created), "updated": knack_time(s.updated),
             "email": s.email if s.o29_email else "", "student_record": link,
             "establishment": s.school.name, "full_name": f"{s.first} {s.last}", "group": s.year_group,
             "faculty": "Sixth Form", "year_group": s.year_group, "gender": "",
             "completion_date": s.date_cell, **answer_cells(pop, r, s, rng)}
    return cells, [cells.get(n, "") for n, _ in cols]


def write_object29(pop: Population, sink: Sink, rng: random.Random, outcomes: dict[int, Outcome],
                   n_extra: int) -> None:
    """Students' answer records, then answer records of students no longer in the snapshot."""
    cols = headers("object_29", False)
    by_id = {s.record_id: s for s in pop.students}
    by_email = {s.email: s for s in pop.students if outcomes[s.index].expected != "collapsed"}
    for r, s in enumerate(pop.students):
        if s.o29_link is None:
            continue
        cells, row = object29_student_row(pop, r, s, rng, cols)
        student, out = decide_answers(cells["student_record"], cells["email"], by_id, by_email, outcomes)
        kept = outcomes[student.index].rows if student is not None and out.expected == "import" else 0
        quirks = {q for q in s.quirks if q.startswith(("answer", "q29"))} | {f"link_{s.o29_link}"}
        quirks |= {"email_2732"} if cells["email"] else set()
        quirks |= {"answers_without_scores"} if s.bucket == "answers_without_scores" else set()
        sink.write(row, _truth("object_29", cells["id"], s.email, s, out, pop.snapshot_year, "",
                               count_answers(cells, kept), quirks))
    for k in range(n_extra):
        created = datetime(2022, 9, 1) + timedelta(hours=rng.randint(0, 24 * 600))
        old = object_id(rng, created)
        email = f"leaver{k}@{pop.schools[k % (len(pop.schools) - 1)].domain}"
        cells = {"id": object_id(rng, created), "created": knack_time(created), "updated": knack_time(created),
                 "student_record": old if k % 3 else email, "email": email if k % 2 else "",
                 "q1_c1": "4", "current_cycle": "1"}
        _, out = decide_answers(cells["student_record"], cells["email"], by_id, by_email, outcomes)
        sink.write([cells.get(n, "") for n, _ in cols],
                   _truth("object_29", cells["id"], email, None, out, "", "", 0, {"unlinked"}))
