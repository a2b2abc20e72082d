"""The year rehearsal (``make rehearse-year``): its calendar, Knack's evolving state, and the short
variant end to end on a production-shaped PostgreSQL through ``vespa-ops`` (a few nights around
each key date: the import, the skipped night, 1 January, the refused night, 1 August)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from vespa_lib import snapshot
from vespa_lib.rehearsal import calendar, changes
from vespa_lib.rehearsal.__main__ import rehearse, summary_line, violations
from vespa_lib.rehearsal.world import KnackWorld, year_label


def test_compressed_calendar_has_every_night_of_the_key_weeks_and_weekly_nights_elsewhere():
    nights = calendar.nights("compressed")
    assert nights[0] == calendar.START and nights[-1] == calendar.END
    for day in (date(2025, 12, 31), calendar.CALENDAR_CLOSE, date(2026, 7, 31), calendar.ROLLOVER,
                calendar.SKIP, calendar.REFUSE):
        assert day in nights
    gaps = [(b - a).days for a, b in zip(nights, nights[1:], strict=False)]
    assert max(gaps) <= 7 and len(nights) < len(calendar.nights("full")) / 3
    assert calendar.window(calendar.SKIP + timedelta(days=1), nights) >= 2  # the skipped night is in the window
    assert calendar.window(date(2025, 10, 15), [date(2025, 10, 8), date(2025, 10, 15)]) == 1


def test_year_label_is_the_uk_year_or_the_calendar_year():
    assert year_label(date(2025, 8, 1), False) == "2025/2026" and year_label(date(2025, 7, 31), False) == "2024/2025"
    assert year_label(date(2025, 12, 31), True) == "2025/2025"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import duckdb

    from vespa_lib.rehearsal import setup

    folder = setup.generate_world(tmp_path_factory.mktemp("rehearsal_world") / "world")
    con = duckdb.connect(str(folder / "production.duckdb"), read_only=True)
    schools = {n: {"knack_id": k, "calendar": a is True and s is False} for n, k, a, s in con.execute(
        "SELECT name, knack_id, is_australian, use_standard_year FROM establishments").fetchall()}
    con.close()
    return folder, schools


def test_knack_fills_up_night_by_night_with_each_kind_of_change(world, tmp_path):
    folder, schools = world
    w = KnackWorld.load(folder, schools)
    sizes, day = {}, calendar.START
    for night in (calendar.START, date(2025, 12, 1), date(2026, 6, 1), date(2026, 9, 15)):
        while day < night:
            day += timedelta(days=1)
            changes.apply_day(w, day)
        sizes[night] = {label: sum(len(c) for c in e.values()) for label, e in w.expected(night).items()}
    assert sizes[calendar.START].get("2025/2026", 0) < sizes[date(2025, 12, 1)]["2025/2026"] < sizes[date(2026, 6, 1)]["2025/2026"]
    assert sizes[date(2026, 9, 15)]["2026/2027"] > 0 and sizes[date(2026, 6, 1)]["2026/2026"] > 0
    kinds = {kind for _, kind, _ in w.log}
    assert {"new_completion", "edited_score", "deleted_student", "archived_recompletes", "school_joined", "blank_date",
            "unparseable_date", "f10_copy", "test_account", "stale_record_edited", "calendar_new_year",
            "uk_new_year"} <= kinds
    export = w.write_export(tmp_path / "export", date(2026, 9, 15))
    snap = snapshot.open_snapshot(export)  # the sync's reader opens it as a fresh export
    assert snap.records("object_10") == sum(r.shown(date(2026, 9, 15)) for r in w.records.values())


@pytest.mark.postgres
@pytest.mark.notebook
@pytest.mark.slow
def test_short_rehearsal_runs_every_key_night_with_no_invariant_violation(pg_server, tmp_path):
    lines = []
    rehearsal, report = rehearse(tmp_path / "data", tmp_path / "outputs", "short", pg_server, print_=lines.append)
    assert [r.night for r in rehearsal.records] == calendar.nights("short")
    skipped = next(r for r in rehearsal.records if r.night == calendar.SKIP)
    assert skipped.skipped_sync and not any(r.runbook == "sync_check" for r in skipped.runs)
    assert not any(r.params.get("approve") == "auto" for rec in rehearsal.records for r in rec.runs)
    assert report.is_file() and (report.parent / "timeline.png").is_file()
    found = {rec.night: rec.violations for rec in rehearsal.records if rec.violations}
    assert violations(rehearsal) == 0, found
    assert summary_line(rehearsal).endswith(" 0 invariant violations")
