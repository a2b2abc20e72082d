"""The Knack REST source and the CSV source plan the same sync for the same records.

One list of Knack-shaped records (``tests/knack_server.py`` builders, ``_raw`` values) is served by
the loopback ``FakeKnack`` AND written as a fresh export in the snapshot format (headers: the field
map's first spellings; cells: ``knack_api.decode_record``'s rendering of the same records, so both
sides come from one definition). ``plan_sync`` then runs once per source against identical copies
of a generated target database with the same ``as_of``, and the plans must agree: counts per table
and year, fingerprint, desired rows, drift and proofs. The only allowed difference is what Knack's
date filter cannot return (records with a blank date, records dated before the read window): the
CSV source sets them aside, the Knack source never sees them; that difference is asserted exactly.
No network: an autouse guard refuses every connection that is not to 127.0.0.1.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pytest

from tests.knack_server import API_KEY, APP_ID, FakeKnack, forbid_network, record_6, record_10, record_29
from vespa_lib import sync
from vespa_lib.rules import fieldmap
from vespa_lib.sandbox import synth
from vespa_lib.sources import knack_api
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.plan import Desired, plan_changes

AS_OF = date(2026, 3, 15)
YEAR, OLD = "2025/2026", "2024/2025"
APP_VAR, KEY_VAR = "TEST_SYNC_KNACK_APP_ID", "TEST_SYNC_KNACK_API_KEY"
# Named pupils (new to the target; the domains need not match a school: the connection decides).
ANCHOR_EMAIL = "anchor.pupil@uk1.example.sch.uk"  # field_197_raw an HTML mailto anchor, upper-case text
F12_EMAIL = "boundary.pupil@uk1.example.sch.uk"  # completed 01/08/2025: first day of 2025/2026 (F12)
AU_EDGE_EMAIL = "edge.pupil@au.example.edu.au"  # 01/01/2026: first day of the calendar school's running year (F12)
AU_CLOSED_EMAIL = "closed.pupil@au.example.edu.au"  # 01/01/2025: first day of the Knack read window, a closed year
STALE_EMAIL = "stale.pupil@uk1.example.sch.uk"  # 31/07/2025: last day of 2024/2025
BLANK_EMAIL = "blank.pupil@uk2.example.sch.uk"  # no completion date
EARLY_EMAIL = "early.pupil@uk1.example.sch.uk"  # 10/10/2024: before the Knack read window


# --- the world: a generated target database and one list of records -------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch, tmp_path):
    """No network (only 127.0.0.1), credentials in named variables, no stray ``.env``."""
    forbid_network(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(APP_VAR, APP_ID)
    monkeypatch.setenv(KEY_VAR, API_KEY)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A generated damaged production database (DuckDB file), migrated and with 2024/2025 archived
    through the guard as in tests/test_sync.py; each test plans against copies of it."""
    out = tmp_path_factory.mktemp("sync_knack")
    synth.generate(out, students=100, seed=2025)
    with duckdb.connect(str(out / "production.duckdb")) as con:
        for archive in ([], [OLD]):
            want = Desired({}, years=[OLD])
            plan = plan_changes(con, want, archive_years=archive)
            apply_plan(con, want, approve=plan.fingerprint, run_id=f"setup{len(archive)}", runbook="test",
                       actor="pytest", recompute=False, archive_years=archive)
    return out / "production.duckdb"


def copy_db(target: Path, dst: Path) -> duckdb.DuckDBPyConnection:
    shutil.copy(target, dst)
    return duckdb.connect(str(dst))


def schools(target: Path) -> dict[str, tuple[str, str]]:
    """(knack id, name) of two UK schools and one calendar-year Australian school of the target."""
    with duckdb.connect(str(target), read_only=True) as con:
        rows = con.execute("SELECT name, knack_id, is_australian, use_standard_year FROM establishments "
                           "ORDER BY name").fetchall()
    uk = [(k, n) for n, k, au, _ in rows if not au]
    au = [(k, n) for n, k, a, std in rows if a and std is False]
    assert len(uk) >= 2 and au, rows
    return {"uk1": uk[0], "uk2": uk[1], "au": au[0]}


def existing_students(target: Path, school: tuple[str, str], n: int) -> list[str]:
    """Emails of ``n`` students the target already has in the current year at ``school``."""
    with duckdb.connect(str(target), read_only=True) as con:
        rows = con.execute("SELECT s.email FROM students s JOIN establishments e ON e.id = s.establishment_id "
                           "WHERE s.academic_year = ? AND e.knack_id = ? ORDER BY s.email LIMIT ?",
                           [YEAR, school[0], n]).fetchall()
    assert len(rows) == n
    return [r[0] for r in rows]


def domain(school: tuple[str, str]) -> str:
    return school[1].lower().replace(" ", "") + ".example.sch.uk"


def _scores(n: int) -> list[object]:
    # Numbers and numeric strings mixed, as the API's _raw values come (docs/DOMAIN.md, “Knack fields”).
    return [1 + n % 10, str(1 + (n + 3) % 10), f"{1 + (n + 5) % 10}.0", 1 + (n + 7) % 10, str(1 + n % 9),
            1 + (n + 2) % 10]


def student(n: int, email: str, school: tuple[str, str], completed: date | None, *, cycles: int = 1) -> dict:
    """The object_6, object_10 and object_29 records of one student (``cycles`` completed)."""
    o10 = record_10(n, email, school, completed=completed, current_cycle=cycles,
                    scores={c: _scores(n + c) for c in range(1, cycles + 1)})
    answers = {}
    for cycle, first in ((1, 1953), (2, 1955)):
        if cycle <= cycles:
            answers[f"field_{first}"] = str(1 + (n + cycle) % 5)  # q1 of that cycle
    answers |= {f"field_{f}": 1 + (n + i) % 5 for i, f in enumerate((1954, 1959, 1962))}  # q2..q4 cycle 1
    o29 = record_29(n, email, o10["id"], school, completed=completed, answers=answers)
    return {"object_6": record_6(n, email, school), "object_10": o10, "object_29": o29}


def records(target: Path, *, existing_blank: bool = False) -> dict[str, list[dict]]:
    """About 40 students over three schools: dated cycles of 2025/2026 (new and already in the
    target), the F12 boundary, a stale 2024/2025 record, a blank date, an HTML-anchor email, the
    Knack window's first day (Australian calendar year) and a record before the window.
    ``existing_blank``: one student the target already has loses his completion date."""
    sc = schools(target)
    plan = []
    for i in range(12):
        plan.append((f"new{i}@{domain(sc['uk1'])}", sc["uk1"], date(2025, 9, 10 + i), 1 + i % 2))
        plan.append((f"new{i}@{domain(sc['uk2'])}", sc["uk2"], date(2026, 1, 5 + i), 1))
    for i in range(4):  # the calendar-year school's running year on 2026-03-15 is 2026/2026 (docs/DOMAIN.md, “Academic years”)
        plan.append((f"new{i}@{domain(sc['au'])}", sc["au"], date(2026, 1 + i % 3, 12 + i), 1))
    known = existing_students(target, sc["uk1"], 2) + existing_students(target, sc["uk2"], 3)
    for i, email in enumerate(known[:4]):
        plan.append((email, sc["uk1"] if i < 2 else sc["uk2"], date(2025, 11, 3 + i), 1))
    plan.append((known[4], sc["uk2"], None if existing_blank else date(2025, 12, 1), 1))
    plan += [(F12_EMAIL, sc["uk1"], date(2025, 8, 1), 1), (AU_EDGE_EMAIL, sc["au"], date(2026, 1, 1), 1),
             (AU_CLOSED_EMAIL, sc["au"], date(2025, 1, 1), 1),
             (STALE_EMAIL, sc["uk1"], date(2025, 7, 31), 1), (BLANK_EMAIL, sc["uk2"], None, 1),
             (ANCHOR_EMAIL, sc["uk1"], date(2025, 10, 20), 1), (EARLY_EMAIL, sc["uk1"], date(2024, 10, 10), 1)]
    out: dict[str, list[dict]] = {"object_6": [], "object_10": [], "object_29": []}
    for n, (email, school, completed, cycles) in enumerate(plan, start=1):
        for obj, rec in student(n, email, school, completed, cycles=cycles).items():
            out[obj].append(rec)
    anchor = next(r for r in out["object_10"] if r["field_197_raw"] == {"email": ANCHOR_EMAIL})
    anchor["field_197_raw"] = f'<a href="mailto:{ANCHOR_EMAIL}">{ANCHOR_EMAIL.upper()}</a>'  # docs/DOMAIN.md, “Knack fields”
    return out


def write_export(recs: dict[str, list[dict]], folder: Path) -> str:
    """The same records as a fresh export: one CSV per object, headers the field map's first spellings."""
    folder.mkdir()
    fmap = fieldmap.load()
    for obj, items in recs.items():
        columns = fmap.columns(obj)
        with (folder / f"FullObject_{obj.split('_')[1]}_2026-03-15.csv").open("w", newline="",
                                                                              encoding="utf-8-sig") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow([col.headers[0] for col in columns.values()])
            for rec in items:
                row = knack_api.decode_record(rec, obj)
                writer.writerow(["" if row[name] is None else row[name] for name in columns])
    return f"csv:{folder}"


def plan_both(target: Path, tmp_path: Path, recs: dict[str, list[dict]]):
    """(csv plan, knack plan, the fake's requests) against identical copies of the target."""
    csv_db, knack_db = copy_db(target, tmp_path / "csv.duckdb"), copy_db(target, tmp_path / "knack.duckdb")
    try:
        from_csv = sync.plan_sync(write_export(recs, tmp_path / "export"), csv_db, AS_OF)
        with FakeKnack(recs) as fake:
            from_knack = sync.plan_sync(f"knack:{APP_VAR},{KEY_VAR}", knack_db, AS_OF, knack_base_url=fake.base_url,
                                        knack_sleep=lambda s: None)
        return from_csv, from_knack, fake.requests
    finally:
        csv_db.close()
        knack_db.close()


def rows_of(sp, table: str) -> list[tuple]:
    """Desired rows, sorted; ``_source_line`` (the CSV line, NULL for an API record) is left out: it
    is provenance for findings, never written, and not in the fingerprint."""
    t = sp.desired.tables[table]
    return sorted(tuple(str(v) for k, v in r.items() if k != "_source_line") for r in t.to_pylist())


def set_aside(sp) -> set[tuple[str, str, str]]:
    """(object, record id, reason): the line number is a CSV detail an API record does not have."""
    return {(r.object, r.record_id, r.reason) for r in sp.unsyncable.itertuples()}


def record_ids(recs: dict[str, list[dict]], email: str) -> dict[str, str]:
    out = {}
    for obj in ("object_10", "object_29"):
        for rec in recs[obj]:
            raw = rec.get("field_197_raw", rec.get("field_2732_raw"))
            if (raw.get("email") if isinstance(raw, dict) else raw) == email:
                out[obj] = rec["id"]
    return out


def has_student(sp, email: str, year: str) -> bool:
    t = sp.desired.tables["students"]
    return (email, year) in set(zip(t.column("email").to_pylist(), t.column("academic_year").to_pylist(), strict=True))


# --- the test ------------------------------------------------------------------------------------


def test_knack_source_plans_exactly_what_the_csv_export_plans(target, tmp_path):
    recs = records(target)
    from_csv, from_knack, requests = plan_both(target, tmp_path, recs)

    assert from_csv.source["kind"] == "csv" and from_knack.source["kind"] == "knack"
    assert {r["path"] for r in requests} == {f"/v1/objects/{o}/records" for o in ("object_6", "object_10", "object_29")}
    assert from_knack.source["window"] == ["2025-01-01", "2026-07-31"]
    # The plans: counts per table and year, the fingerprint, every desired row, drift and proofs.
    assert from_knack.plan.counts() == from_csv.plan.counts()
    assert from_knack.plan.changed_columns == from_csv.plan.changed_columns
    assert from_knack.fingerprint == from_csv.fingerprint
    for table in sync.TABLES:
        assert rows_of(from_knack, table) == rows_of(from_csv, table), table
    assert from_knack.drift.kinds() == from_csv.drift.kinds()
    assert [(c["name"], c["passed"]) for c in from_knack.checks] == [(c["name"], c["passed"]) for c in from_csv.checks]
    assert from_csv.passed and from_knack.passed, [c for c in from_csv.checks if not c["passed"]]
    totals = from_csv.totals()
    assert totals["students"]["insert"] >= 30 and totals["vespa_scores"]["insert"] > 0
    assert totals["question_responses"]["insert"] > 0 and totals["students"]["delete"] > 0

    # F12: the first day of the UK year and the first day of the Knack window are in both plans.
    for sp in (from_csv, from_knack):
        assert has_student(sp, F12_EMAIL, YEAR) and has_student(sp, AU_EDGE_EMAIL, "2026/2026")
        assert has_student(sp, ANCHOR_EMAIL, YEAR)  # the HTML anchor decoded (and lower-cased) on both sides
        for email in (STALE_EMAIL, BLANK_EMAIL, EARLY_EMAIL, AU_CLOSED_EMAIL):
            assert not any(e == email for e in sp.desired.tables["students"].column("email").to_pylist())

    # Set aside: identical, except what lies before the read window (Knack is asked only for the year's
    # window, widened for F12, plus blank dates; an export holds everything).
    blank, early, stale = (record_ids(recs, e) for e in (BLANK_EMAIL, EARLY_EMAIL, STALE_EMAIL))
    assert (blank["object_10"], "no_date") in {(r, why) for _, r, why in set_aside(from_csv)}
    assert {r for _, r, _ in set_aside(from_csv) - set_aside(from_knack)} == set(early.values())
    assert (blank["object_10"], "no_date") in {(r, why) for _, r, why in set_aside(from_knack)}
    assert set_aside(from_knack) <= set_aside(from_csv)
    assert ("object_10", stale["object_10"], "stale_date") in set_aside(from_knack)
    closed = record_ids(recs, AU_CLOSED_EMAIL)["object_10"]  # calendar year 2025/2025 closed on 1 January 2026
    assert all(("object_10", closed, "stale_date") in set_aside(sp) for sp in (from_csv, from_knack))
    assert from_knack.source["records"]["object_10"] == len(recs["object_10"]) - 1


def test_a_known_student_whose_date_was_blanked_is_kept_by_both_sources(target, tmp_path):
    recs = records(target, existing_blank=True)
    blanked = existing_students(target, schools(target)["uk2"], 3)[2]  # the one records() blanks
    from_csv, from_knack, _ = plan_both(target, tmp_path, recs)
    assert has_student(from_csv, blanked, YEAR)  # CSV: set aside as no_date, its rows kept (kept_as_is)
    assert has_student(from_knack, blanked, YEAR)  # Knack: read through the 'is blank' rule, set aside too
    assert from_knack.plan.counts() == from_csv.plan.counts()
    assert from_knack.fingerprint == from_csv.fingerprint
