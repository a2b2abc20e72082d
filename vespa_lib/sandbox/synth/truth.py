"""Expected import outcomes for every generated record, by the rule chains of docs/ARCHITECTURE.md.

Read-only. The chains run on the cells exactly as written to the CSV files (decoded with
``vespa_lib.rules.knack``; years from ``vespa_lib.rules.years``), so the truth file scores an import against the
documented rules, not against the generator's intentions. Order of checks for object_10:
email → establishment → year → scores → duplicate collapse (each generated record carries at most
one reason, so the order only matters for hand-made inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

from vespa_lib.rules import knack, years

from .people import Population, School, Student

IMPORT, QUARANTINE, COLLAPSED, SKIP = "import", "quarantine", "collapsed", "skip_other_year"


@dataclass
class Outcome:
    expected: str
    reason: str = ""
    year: str = ""
    year_rule: str = ""
    establishment: School | None = None
    establishment_rule: str = ""
    rows: int = 0  # score rows (object_10) or answer rows (object_29) the import writes


@dataclass
class Context:
    """What the import can see: schools by name, object_6 accounts, existing students' domains."""

    schools_by_name: dict[str, School]
    object6: dict[str, str]  # decoded email -> field_179 identifier (school name)
    domains: dict[str, set[str]]  # email domain -> establishment uuids among existing students
    snapshot_year: str


def _establishment(s: Student, email: str, ctx: Context) -> tuple[School | None, str]:
    """Establishment chain: connection, object_6 account, unambiguous email domain."""
    if s.field_133 is not None and not knack.is_blank(s.field_133):
        school = ctx.schools_by_name.get(s.field_133.strip())
        return (school, "connection") if school else (None, "unknown_establishment")
    if email in ctx.object6:
        school = ctx.schools_by_name.get(ctx.object6[email])
        return (school, "object_6") if school else (None, "unknown_establishment")
    owners = ctx.domains.get(email.rsplit("@", 1)[1], set())
    if len(owners) == 1:
        uuid = next(iter(owners))
        return next(x for x in ctx.schools_by_name.values() if x.uuid == uuid), "email_domain"
    return None, "no_establishment"


def _year(s: Student, school: School, ctx: Context) -> tuple[str, str]:
    """Year chain: completion date, else the snapshot's year; unparseable → bad_date."""
    rule = dict(is_australian=school.is_australian, use_standard_year=school.use_standard_year)
    decoded = knack.decode_date(s.date_cell)
    if decoded.reason == "blank":
        if years.uses_calendar_year(school.is_australian, school.use_standard_year):
            # ARCHITECTURE.md: the calendar year containing N's last day (31/07/2025 → 2025/2025)
            return years.academic_year_for(years.year_end(ctx.snapshot_year), **rule), "snapshot_year"
        return ctx.snapshot_year, "snapshot_year"
    if not decoded.ok:
        return "", "bad_date"
    return years.academic_year_for(knack.completion_date(decoded), **rule), "completion_date"


def decide_result(s: Student, ctx: Context) -> Outcome:
    """The outcome of one object_10 record before duplicates are collapsed."""
    email = knack.decode_email(s.email_cell)
    if not email.ok:
        return Outcome(QUARANTINE, "no_email" if email.reason == "blank" else "invalid_email")
    school, est_rule = _establishment(s, email.value, ctx)
    if school is None:
        return Outcome(QUARANTINE, est_rule)
    year, year_rule = _year(s, school, ctx)
    out = Outcome(IMPORT, "", year, year_rule, school, est_rule)
    if year_rule == "bad_date":
        out.expected, out.reason = QUARANTINE, "bad_date"
        return out
    bench = years.benchmark_year(year)  # UK labels unchanged; Y/Y counts in Y/Y+1
    if bench != ctx.snapshot_year:
        out.expected = SKIP
        out.reason = "stale_date" if bench < ctx.snapshot_year else "outside_import_year"
        return out
    if s.n_cycles == 0:
        out.expected, out.reason = QUARANTINE, "no_scores"
        return out
    out.rows = s.n_cycles  # F10 copies (cycles ≠ field_146 equal to it) are dropped, not counted
    return out


def decide_all(pop: Population, ctx: Context) -> dict[int, Outcome]:
    """Outcomes of every object_10 record, duplicates collapsed (ARCHITECTURE.md tie-break:
    most cycles, latest completion date, latest ``updated``, highest id)."""
    outcomes = {s.index: decide_result(s, ctx) for s in pop.students}
    groups: dict[str, list[Student]] = {}
    for s in pop.students:
        if outcomes[s.index].expected == IMPORT:
            groups.setdefault(knack.decode_email(s.email_cell).value, []).append(s)
    for group in groups.values():
        if len(group) < 2:
            continue

        def key(x: Student) -> tuple:
            d = knack.decode_date(x.date_cell)
            when = knack.completion_date(d).isoformat() if d.ok else ""
            return (x.n_cycles, when, x.updated, x.record_id)

        kept = max(group, key=key)
        for x in group:
            if x is not kept:
                outcomes[x.index] = Outcome(COLLAPSED, "duplicate_record", outcomes[x.index].year,
                                            outcomes[x.index].year_rule, outcomes[x.index].establishment,
                                            outcomes[x.index].establishment_rule)
    return outcomes


def decide_answers(link_792: str, email_2732: str, by_id: dict[str, Student], by_email: dict[str, Student],
                   outcomes: dict[int, Outcome]) -> tuple[Student | None, Outcome]:
    """Link an object_29 record (field_792 id or email identifier, then field_2732) and decide it.
    ``rows`` is left 0 here: the writer counts the answer cells it actually wrote."""
    student = by_id.get(link_792.strip()) if knack.is_object_id(link_792.strip()) else None
    if student is None and not knack.is_object_id(link_792.strip()):
        e = knack.decode_email(link_792)
        student = by_email.get(e.value) if e.ok else None
    if student is None:
        e = knack.decode_email(email_2732)
        student = by_email.get(e.value) if e.ok else None
    if student is None:
        return None, Outcome(QUARANTINE, "unlinked_answers")
    own = outcomes[student.index]
    if own.expected != IMPORT:
        return student, Outcome(SKIP if own.expected == SKIP else QUARANTINE, "student_set_aside", own.year)
    return student, Outcome(IMPORT, "", own.year, own.year_rule, own.establishment, own.establishment_rule)
