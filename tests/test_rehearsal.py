"""The year rehearsal (``make rehearse-year``): its calendar, Knack's evolving state, and the short
variant end to end on a production-shaped PostgreSQL through ``vespa-ops`` (a few nights around
each key date: the import, the skipped night, 1 January, the refused night, 1 August)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from vespa_lib.sandbox.rehearsal import calendar, changes
from vespa_lib.sandbox.rehearsal.__main__ import rehearse, summary_line, violations
from vespa_lib.sandbox.rehearsal.world import KnackWorld, year_label
from vespa_lib.sources import snapshot


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

    from vespa_lib.sandbox.rehearsal import setup

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


@pytest.mark.heavy  # make test's short rehearsal covers it: its syncs of 25-26 January follow the close
@pytest.mark.postgres
@pytest.mark.notebook
@pytest.mark.slow
def test_the_syncs_after_the_january_close_apply_without_rewriting_the_closed_years_statistics(pg_server, tmp_path):
    """Found by the short rehearsal: after calendar year 2025/2025 closed on 1 January, every sync that
    changed 2025/2026 failed with the archive protection's refusal (UPDATE on school_statistics for the
    archived 2025/2025): recomputing benchmark year 2025/2026 rewrote the closed year's school
    statistics, unchanged but stored as decimal(4,2) and compared with unrounded values. Once it applied,
    the national statistics of 2025/2026 differed from the recomputation: grouped by the archive flag,
    the closed calendar year and the open UK year made two rows of one key."""
    from vespa_lib.sandbox.rehearsal import setup
    from vespa_lib.sandbox.rehearsal.night import Rehearsal
    from vespa_lib.sandbox.rehearsal.ops import Ops

    world_dir = setup.generate_world(tmp_path / "data" / "world")
    owner, admin = setup.build_database(pg_server, world_dir, f"{setup.DBNAME}_jan")
    nights = [calendar.START, date(2025, 12, 31), calendar.CALENDAR_CLOSE, date(2026, 2, 20)]
    rehearsal = Rehearsal(KnackWorld.load(world_dir, setup.schools(admin)), Ops(tmp_path / "outputs", owner), admin,
                          tmp_path / "data", nights)
    for night in nights:
        rehearsal.run_night(night)
    close, after = rehearsal.records[2], rehearsal.records[3]
    assert any(r.label().startswith("year_transition rollover approve") and r.status == "passed" for r in close.runs)
    syncs = [r for r in after.runs if r.runbook == "sync_check"]
    assert syncs[-1].status == "passed", syncs[-1].manifest.get("error") or syncs[-1].output
    assert syncs[-1].manifest.get("sync_status") == "applied"  # Knack changed 2025/2026 since 1 January
    # and one national row per benchmark year: the closed 2025/2025 counts in the open 2025/2026
    assert not after.violations, after.violations


def _edit_one_uk_score(export, day_range=("2025-09-01", "2025-11-30")):
    """Knack edits one UK student's cycle 1 vision (a record dated in the autumn, one cycle taken)."""
    import csv

    from vespa_lib.sandbox.rehearsal.world import O10, parse_day

    (path,) = export.glob("FullObject_10_*.csv")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    for row in rows:
        day = parse_day(row[O10["date"]])
        if (day and day_range[0] <= day.isoformat() <= day_range[1] and row[O10["email"]].endswith(".sch.uk")
                and row[O10["current"]].strip() == "1" and row[O10["cycles"][1][0]].strip().isdigit()):
            new = str(int(row[O10["cycles"][1][0]]) % 10 + 1)
            row[O10["cycles"][1][0]] = row[O10["current_six"][0]] = new
            break
    else:
        raise AssertionError("no UK record of the autumn with one cycle in the export")
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.heavy  # make test's short rehearsal covers it: its 1 January sync applies, then the close is approved
@pytest.mark.postgres
@pytest.mark.notebook
@pytest.mark.slow
def test_january_close_is_ready_although_the_next_nights_sync_changed_the_running_uk_year(prod_pg_legacy, tmp_path):
    """Found by the rehearsal: on 1 January the night's sync legitimately changes 2025/2026; the close
    of calendar year 2025/2025 must still find its last sync clean (only the closing year compared)."""
    _january_close(prod_pg_legacy, tmp_path)


def _january_close(db, tmp_path):
    """Import, the syncs of 31 December and 1 January, then the close's plan (ready); (ops, export, plan)."""
    import shutil

    from vespa_lib.sandbox.rehearsal.ops import STEP_STATUSES, Ops

    ops = Ops(tmp_path / "outputs", db.owner_dsn)
    common = {"snapshot_dir": str(db.world / "snapshot"), "backup_dir": str(tmp_path / "backups")}
    result = ops.run("import", **common)
    for _ in range(5):  # each step's plan approved; a plan that changed since is re-planned and reviewed again
        result = ops.run("import", **common, mode="apply", approve=result.fingerprint)
        if result.manifest.get("apply_status") == "refused":
            result = ops.run("import", **common)
        elif result.manifest.get("apply_status") not in STEP_STATUSES:
            break
    assert result.manifest.get("apply_status") == "applied", result.output
    export = tmp_path / "export"
    shutil.copytree(db.world / "fresh_export", export)
    for night in ("2025-12-31", "2026-01-01"):
        if night == "2026-01-01":
            _edit_one_uk_score(export)
        sync = {"source": f"csv:{export}", "as_of": night, "mode": "apply"}
        plan = ops.run("sync_check", **sync, approve="")
        applied = ops.run("sync_check", **sync, approve=plan.fingerprint)
        assert applied.manifest.get("sync_status") in ("applied", "no changes"), applied.output
    assert applied.manifest.get("sync_status") == "applied"  # the running UK year changed on 1 January
    rollover = ops.run("year_transition", mode="rollover", as_of="2026-01-01")
    ready = next(c for c in rollover.manifest["checks"] if c["name"] == "rollover_ready")
    assert ready["passed"], ready["detail"]
    return ops, export, rollover


def test_cohort_check_passes_when_no_student_is_in_two_years(duckdb_path):
    """Found by the rehearsal: the nights after the import (the current year still empty) the
    validation failed with KeyError 'later_year_dated' instead of passing cohort_in_one_year."""
    import duckdb

    from vespa_lib import transition
    from vespa_lib.write import schema

    con = duckdb.connect(str(duckdb_path))
    schema.create_schema(con)
    result = transition.cohort_in_one_year(con)
    assert result.passed and result.figures["students_in_two_years"] == 0


def test_dashboard_comparison_accepts_a_value_missing_on_both_sides():
    """Found by the rehearsal (validation of 2026-08-01 through vespa-ops): a statistics column empty
    in both the database and the recomputation (``eri_score`` of a year whose students have scores
    but no answers yet) made the dashboard check fail with TypeError instead of comparing equal."""
    import pandas as pd

    from vespa_lib.transition.dashboard import _compare

    db = pd.DataFrame([{"cycle": 1, "element": "vision", "mean": 5.5, "eri_score": None}])
    ref = pd.DataFrame([{"cycle": 1, "element": "vision", "mean": 5.5, "eri_score": None}])
    result = _compare(db, ref, ["cycle", "element"], {"mean": 2, "eri_score": 2})
    assert (result["missing"], result["extra"], result["differing"]) == (0, 0, 0)


class _FakeOps:
    """Stands in for vespa-ops in the rehearsal's bookkeeping tests: each run returns the manifest given."""

    def __init__(self, manifest):
        self.manifest = manifest

    def run(self, runbook, **params):
        from vespa_lib.sandbox.rehearsal.ops import RunResult

        return RunResult(runbook, params, 0 if self.manifest["status"] == "passed" else 1, None, self.manifest)


def _validation(flagged, failed=()):
    checks = [{"name": "sync_ran_every_night", "passed": not flagged,
               "figures": {"missing_nights": flagged, "failed_nights": []}}]
    checks += [{"name": name, "passed": False, "detail": f"{name} planted"} for name in failed]
    return {"status": "passed" if not flagged and not failed else "failed", "checks": checks}


@pytest.mark.parametrize(("flagged", "failed", "unsynced", "violated"), [
    ([], (), set(), False),
    (["2025-12-29"], (), {date(2025, 12, 29)}, False),  # the skipped night, named exactly
    ([], (), {date(2025, 12, 29)}, True),  # the skipped night not named
    (["2025-12-29", "2025-12-30"], (), {date(2025, 12, 29)}, True),  # a synced night named too
    ([], ("dashboard_year_switching",), set(), True),  # any other failed check
])
def test_runs_as_expected_holds_the_validation_to_exactly_the_unsynced_nights(tmp_path, flagged, failed, unsynced,
                                                                            violated):
    from vespa_lib.sandbox.rehearsal.night import NightRecord, Rehearsal

    nights = calendar.nights("compressed")
    rehearsal = Rehearsal(None, _FakeOps(_validation(flagged, failed)), "", tmp_path, nights)
    rehearsal.unsynced = set(unsynced)
    rec = NightRecord(date(2025, 12, 30))
    rehearsal._validate(rec, rec.night)
    assert bool(rec.violations.get("runs_as_expected")) is violated, rec.violations
