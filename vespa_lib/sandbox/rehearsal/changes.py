"""One simulated day of change in Knack, the kinds the real system saw.

Every day (seeded by the date, so a rehearsal is repeatable): scores edited in Knack, students
deleted, later cycles completed (after the generated export's date, 2026-03-15), calendar-year
schools' students starting their new year from late January, UK students starting 2026/2027 from
September 2026, and archived 2024/2025 students completing again in the autumn (the same Knack
record, the same email). On fixed days: a VESPA test account, records with a blank and an
unparseable date, an F10 copy, a stale record of the closed year edited, a school joining mid-year
(``JOINING``: the night loop adds its establishment to the database that day, as the customer set-up
does). ``apply_day(world, day)`` changes the world in place and notes each change in ``world.log``.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date

from .world import O6, O10, Event, KnackWorld, Rec, parse_day

__all__ = ["JOINING", "ONE_OFFS", "apply_day"]

JOINING = {"name": "Harbourside Rehearsal Academy", "knack_id": "5f00000000000000000000aa", "day": date(2025, 11, 10),
           "domain": "harboursiderehearsal.sch.uk"}
GENERATED_UNTIL = date(2026, 3, 15)  # the base export's date: later cycles are planted by the day
CALENDAR_NEW_YEAR = (date(2026, 1, 27), date(2026, 3, 31))
UK_NEW_YEAR = (date(2026, 9, 2), date(2026, 10, 31))
RECOMPLETE = (date(2025, 9, 3), date(2025, 10, 20))


def _scores(rng: random.Random, unlike: tuple | None = None) -> tuple[int, ...]:
    while True:
        six = tuple(rng.randint(1, 10) for _ in range(6))
        if six != unlike:
            return six


def _live(world: KnackWorld, day: date, predicate=lambda r: True) -> list[Rec]:
    return [r for r in world.records.values() if r.syncs and not r.always and r.visible(day) and predicate(r)]


def _edit_score(world: KnackWorld, day: date, rng: random.Random) -> None:
    pool = _live(world, day, lambda r: not r.f10)
    if pool:
        rec = rng.choice(pool)
        last = rec.visible(day)[-1]
        six = (last.six[0] % 10 + 1, *last.six[1:])
        rec.events[rec.events.index(last)] = replace(last, six=six)
        world.note(day, "edited_score", f"cycle {last.cycle}")


def _delete(world: KnackWorld, day: date, rng: random.Random) -> None:
    pool = _live(world, day)
    if pool:
        rng.choice(pool).deleted = day
        world.note(day, "deleted_student")


def _next_cycle(world: KnackWorld, day: date, rng: random.Random) -> None:
    pool = _live(world, day, lambda r: not r.f10 and not r.calendar and len(r.events) < 3
                 and r.events[-1].day <= day.replace(day=1) and r.events[0].day >= date(2025, 8, 1))
    if pool and day.month < 8:
        rec = rng.choice(pool)
        rec.events.append(Event(day, len(rec.events) + 1, _scores(rng, rec.events[0].six)))
        world.note(day, "new_completion", f"cycle {len(rec.events)}")


def _restart(world: KnackWorld, rec: Rec, day: date, rng: random.Random, kind: str) -> None:
    """The same record completes cycle 1 of a new year: later cycles cleared, old answers gone."""
    rec.events, rec.f10, rec.o29 = [Event(day, 1, _scores(rng))], False, None
    for headers in (O10["cycles"][2], O10["cycles"][3]):
        for h in headers:
            rec.cells[h] = ""
    world.note(day, kind, "cycle 1")


def _new_year(world: KnackWorld, day: date, rng: random.Random, calendar: bool, window: tuple[date, date],
              kind: str) -> None:
    if not window[0] <= day <= window[1]:
        return
    pool = _live(world, day, lambda r: r.calendar == calendar and r.events[0].day < window[0] - _days(120))
    for rec in rng.sample(pool, min(len(pool), max(1, len(pool) // 25))):
        _restart(world, rec, day, rng, kind)


def _days(n: int):
    from datetime import timedelta  # noqa: PLC0415

    return timedelta(days=n)


def _recomplete_archived(world: KnackWorld, day: date, rng: random.Random) -> None:
    """An archived student completes again: their 2024/2025 Knack record, same email."""
    if not RECOMPLETE[0] <= day <= RECOMPLETE[1]:
        return
    known = {r.email for r in world.records.values()}
    candidates = sorted(e for e in world.snapshot if e not in known and world.snapshot[e][1] is not None
                        and world.snapshot[e][1].get(O6["school"]) in world.schools)
    if not candidates:
        return
    email = rng.choice(candidates)
    cells, account = world.snapshot[email]
    school = world.schools[account[O6["school"]]]
    if not any(a.get(O6["email"], "").strip().lower() == email for a in world.o6):
        world.o6.append(account)
    rec = Rec(cells["id"], dict(cells), email, school["calendar"], kind="archived_recompletes")
    world.records[rec.rid] = rec
    _restart(world, rec, day, rng, "archived_recompletes")


def _new_record(world: KnackWorld, day: date, rng: random.Random, school: str, local: str, *, date_cell: str | None = None,
                f10: bool = False, syncs: bool = True, kind: str) -> Rec:
    """A new student: an object_6 account at ``school`` and an object_10 record cloned from a base one."""
    domain = world.schools[school].get("domain") or school.lower().replace(" ", "") + ".sch.uk"
    email = f"{local}@{domain}"
    template = next(r for r in world.records.values() if r.syncs and not r.f10 and not r.always)
    rid = f"{int(day.strftime('%y%m%d')):06d}{rng.getrandbits(72):018x}"[:24]
    cells = dict(template.cells) | {"id": rid, O10["email"]: email, "field_187_first": local.split(".")[0].title(),
                                    "field_187_last": "Rehearsal", "field_187_full": f"{local.split('.')[0].title()} Rehearsal"}
    account = dict(world.o6[0]) | {"id": rid[::-1], O6["email"]: email, O6["school"]: school,
                                   "field_90_first": cells["field_187_first"], "field_90_last": "Rehearsal",
                                   "field_90_full": cells["field_187_full"]}
    world.o6.append(account)
    six = _scores(rng)
    for h, v in zip(O10["current_six"], six, strict=True):  # the current-cycle fields agree with cycle 1
        cells[h] = str(v)
    rec = Rec(rid, cells, email, world.schools[school]["calendar"], [Event(day, 1, six)], syncs=syncs, kind=kind)
    if f10:
        for k in (1, 2, 3):
            for h, v in zip(O10["cycles"][k], six, strict=True):
                rec.cells[h] = str(v)
        rec.cells[O10["current"]] = "1"
        rec.f10 = True
    if date_cell is not None:  # blank or unparseable: set aside, in Knack as written
        rec.cells[O10["date"]] = date_cell
        for h, v in zip(O10["cycles"][1], six, strict=True):
            rec.cells[h] = str(v)
        rec.cells[O10["current"]] = "1"
        rec.always, rec.syncs, rec.events = True, False, []
    world.records[rid] = rec
    world.note(day, kind)
    return rec


def _uk_school(world: KnackWorld) -> str:
    return sorted(n for n, s in world.schools.items() if not s["calendar"] and n != JOINING["name"])[0]


def _test_account(world, day, rng):
    rec = _new_record(world, day, rng, _uk_school(world), "rehearsal.tester", kind="test_account")
    rec.email = rec.cells[O10["email"]] = "rehearsal.tester@vespa.academy"
    world.o6[-1][O6["email"]] = rec.email


def _odd_dates(world, day, rng):
    _new_record(world, day, rng, _uk_school(world), "blank.date", date_cell="", kind="blank_date")
    _new_record(world, day, rng, _uk_school(world), "bad.date", date_cell="31/02/2026", kind="unparseable_date")


def _f10(world, day, rng):
    _new_record(world, day, rng, _uk_school(world), "copied.cycles", f10=True, kind="f10_copy")


def _stale_edit(world, day, rng):
    stale = [r for r in world.records.values() if r.always and (d := parse_day(r.cells.get(O10["date"], "")))
             and d < date(2025, 8, 1) and r.cells.get(O10["cycles"][1][0])]
    if stale:
        rec = stale[0]
        h = O10["cycles"][1][0]
        rec.cells[h] = str(int(float(rec.cells[h])) % 10 + 1)
        world.note(day, "stale_record_edited", "a 2024/2025 record's cycle 1 vision")


def _joining(world, day, rng):
    world.schools[JOINING["name"]] = {"knack_id": JOINING["knack_id"], "calendar": False, "domain": JOINING["domain"]}
    for i in range(6):
        _new_record(world, day, rng, JOINING["name"], f"joiner.student{i}", kind="school_joined")


ONE_OFFS = {date(2025, 9, 15): _test_account, date(2025, 10, 1): _odd_dates, date(2025, 10, 8): _f10,
            date(2025, 10, 20): _stale_edit, JOINING["day"]: _joining}


def apply_day(world: KnackWorld, day: date) -> None:
    """One day of change (see the module docstring)."""
    rng = random.Random(f"rehearsal-{day.isoformat()}")
    if day in ONE_OFFS:
        ONE_OFFS[day](world, day, rng)
    if rng.random() < 0.3:
        _edit_score(world, day, rng)
    if rng.random() < 0.12:
        _delete(world, day, rng)
    if day > GENERATED_UNTIL:
        for _ in range(2):
            _next_cycle(world, day, rng)
    _new_year(world, day, rng, True, CALENDAR_NEW_YEAR, "calendar_new_year")
    _new_year(world, day, rng, False, UK_NEW_YEAR, "uk_new_year")
    _recomplete_archived(world, day, rng)
