"""The cohort rule across 1 August (docs/DOMAIN.md, "Cohort rule across 1 August").

A student whose cycle 1 belongs to year N keeps later cycles in N even when completed after 1 August
(cycle 1 on 12/05/2025 + cycle 3 on 02/08/2025 -> 2024/2025); a reset record (a new cycle 1 on
15/09/2025) starts a cohort in the year of its own date (2025/2026). A late cycle of an archived year
is set aside by the sync (``late_cycle_of_archived_year``) and added by a guarded import of that year.
Real DuckDB files and a real PostgreSQL (``pg_dsn``), generated data with planted records.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path

import duckdb
import psycopg
import pytest

from vespa_lib import importer, sync, transition
from vespa_lib.rules.rows import build_rows
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.csvwrite import headers
from vespa_lib.sandbox.synth.fresh import generate_fresh_export
from vespa_lib.sources.snapshot import open_snapshot
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.plan import Desired, plan_changes

OLD, NEW = "2024/2025", "2025/2026"
AS_OF = date(2025, 9, 20)
ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")
HEAD = dict(headers("object_10", False))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Generated snapshot, database (migrated) and fresh export; two 2024/2025 students picked."""
    out = tmp_path_factory.mktemp("cohort")
    synth.generate(out, students=300, seed=2025)
    generate_fresh_export(out, as_of=date(2026, 3, 15))
    con = duckdb.connect(str(out / "production.duckdb"))
    want = Desired({}, years=[OLD])
    apply_plan(con, want, approve=plan_changes(con, want).fingerprint, run_id="migrate", runbook="test",
               actor="pytest", recompute=False)
    con.close()
    return out


def planted(world: Path) -> list[str]:
    """The generator's own late cycles (fresh_truth.csv): set aside as late cycles of 2024/2025."""
    with (world / "fresh_truth.csv").open(encoding="utf-8") as fh:
        return sorted(r["email"] for r in csv.DictReader(fh) if r["reason"] == "late_cycle_of_archived_year")


def old_students(con, world: Path, n: int = 2) -> list[dict]:
    """2024/2025 students with only a cycle-1 row, not in 2025/2026: email, cycle-1 scores, attributes."""
    attrs = ("name", "year_group", "group", "course", "faculty", "gender")
    rows = con.execute(f"""SELECT lower(s.email), {', '.join('t.' + e for e in ELEMENTS)}, s.knack_id,
               {', '.join(f's."{a}"' for a in attrs)}
        FROM students s JOIN vespa_scores t ON t.student_id = s.id AND t.cycle = 1 AND t.academic_year = s.academic_year
        WHERE s.academic_year = '{OLD}' AND lower(s.email) NOT IN
              (SELECT lower(email) FROM students WHERE academic_year <> '{OLD}')
          AND NOT EXISTS (SELECT 1 FROM vespa_scores o WHERE o.student_id = s.id AND o.cycle > 1)
        ORDER BY 1""").fetchall()
    rows = [r for r in rows if r[0] not in set(planted(world))][:n]
    return [{"email": r[0], "c1": tuple(r[1:7]), "knack_id": r[7], "attrs": dict(zip(attrs, r[8:], strict=True))}
            for r in rows]


def _other(six: tuple) -> tuple:
    return tuple(v % 10 + 1 for v in six)


def record(template: dict, rid: str, email: str, day: str, cycles: dict[int, tuple], attrs: dict) -> dict:
    """A copy of an object_10 row with its own id, email, completion date, per-cycle scores and the
    database student's attributes."""
    row = dict(template)
    row.update({"id": rid, HEAD["email"]: email, HEAD["completion_date"]: day, HEAD["first_name"]: "",
                HEAD["last_name"]: "", HEAD["full_name"]: attrs["name"] or ""})
    row.update({HEAD[k]: attrs[k] or "" for k in ("year_group", "group", "course", "faculty", "gender")})
    for c in (1, 2, 3):
        for e in ELEMENTS:
            row[HEAD[f"c{c}_{e}"]] = str(cycles[c][ELEMENTS.index(e)]) if c in cycles else ""
    latest = max(cycles)
    row[HEAD["current_cycle"]] = str(latest)
    for e in ELEMENTS:
        row[HEAD[f"current_{e}"]] = str(cycles[latest][ELEMENTS.index(e)])
    return row


def export_with(world: Path, dst: Path, new: list[dict], folder: str = "fresh_export") -> Path:
    """A copy of the fresh export (or snapshot) with ``new`` object_10 records replacing their emails'."""
    shutil.copytree(world / folder, dst)
    path = next(dst.glob("FullObject_10_*.csv"))
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    emails = {r[HEAD["email"]] for r in new}
    rows = [r for r in rows if r[HEAD["email"]].strip().lower() not in emails] + new
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return dst


def template(world: Path) -> dict:
    path = next((world / "fresh_export").glob("FullObject_10_*.csv"))
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return next(csv.DictReader(fh))


@pytest.fixture
def case(world, tmp_path):
    """A database copy whose 2024/2025 cycle 1 of student A was completed on 12/05/2025, and an export
    holding A's late cycle 3 (02/08/2025, same cycle 1) and B's reset record (new cycle 1, 15/09/2025)."""
    shutil.copy(world / "production.duckdb", tmp_path / "p.duckdb")
    con = duckdb.connect(str(tmp_path / "p.duckdb"))
    a, b = old_students(con, world)
    con.execute(f"UPDATE vespa_scores SET completion_date = DATE '2025-05-12' WHERE cycle = 1 AND academic_year = '{OLD}' "
                f"AND student_id = (SELECT id FROM students WHERE lower(email) = ? AND academic_year = '{OLD}')",
                [a["email"]])
    late = record(template(world), a["knack_id"], a["email"], "02/08/2025 10:15", {1: a["c1"], 3: _other(a["c1"])},
                  a["attrs"])
    reset = record(template(world), "68d0aa00aa00aa00aa00aa01", b["email"], "15/09/2025 09:00", {1: _other(b["c1"])}, b["attrs"])
    export = export_with(world, tmp_path / "export", [late, reset])
    yield con, export, a, b
    con.close()


def archive_old(con) -> None:
    want = Desired({}, years=[OLD])
    apply_plan(con, want, approve=plan_changes(con, want, archive_years=[OLD]).fingerprint, run_id="archive",
               runbook="test", actor="pytest", recompute=False, archive_years=[OLD])


def student_rows(rows, email: str) -> list[dict]:
    return [r for r in rows.students.to_pylist() if r["email"] == email]


# --- the rule chain ---------------------------------------------------------------------------------


def test_a_late_cycle_3_continues_the_cycle_1_year_in_the_import(case, world, tmp_path):
    con, export, a, b = case
    snap = open_snapshot(export)
    rows = build_rows(snap, OLD, con, year_fallback=None)
    mine = student_rows(rows, a["email"])
    assert [(r["academic_year"], r["_year_rule"]) for r in mine] == [(OLD, "cohort_continued")]
    scores = {r["cycle"]: r for r in rows.vespa_scores.to_pylist() if r["email"] == a["email"]}
    assert sorted(scores) == [1, 3]
    assert scores[3]["completion_date"] == date(2025, 8, 2)
    assert scores[1]["completion_date"] == date(2025, 5, 12)  # the database's date of cycle 1 is kept
    assert rows.rule_counts["year_rule.cohort_continued"] == 1 + len(planted(world))
    assert not student_rows(rows, b["email"])  # B's reset record starts 2025/2026: not in this import


def test_a_reset_record_starts_a_cohort_in_the_year_of_its_own_date(case, world):
    con, export, a, b = case
    rows = build_rows(open_snapshot(export), NEW, con, year_fallback=None)
    assert [(r["academic_year"], r["_year_rule"]) for r in student_rows(rows, b["email"])] == [(NEW, "cohort_started")]
    assert rows.rule_counts["year_rule.cohort_started"] >= 1
    assert rows.rule_counts["records.cohort_continued"] == 1 + len(planted(world))
    assert not student_rows(rows, a["email"])  # A's late cycle stays with 2024/2025


# --- the sync ---------------------------------------------------------------------------------------


def test_the_sync_sets_a_late_cycle_of_an_archived_year_aside_and_says_how_to_add_it(case, world):
    con, export, a, b = case
    archive_old(con)
    sp = sync.plan_sync(f"csv:{export}", con, AS_OF)
    assert sp.passed, [c for c in sp.checks if not c["passed"]]
    late = sp.unsyncable[sp.unsyncable["reason"] == "late_cycle_of_archived_year"]
    n = 1 + len(planted(world))
    assert sorted(late["email"].str.lower()) == sorted([a["email"], *planted(world)])
    assert "guarded import of 2024/2025" in late["detail"].iloc[0]
    assert len(sp.drift.late_cycles) == n and set(sp.drift.late_cycles["cohort_year"]) == {OLD}
    assert "late_cycles_only" in sp.drift.late_cycles["how_to_add"].iloc[0]
    students = sp.desired.tables["students"].to_pylist()
    assert not [s for s in students if s["email"] == a["email"]]  # no second copy in 2025/2026
    assert [s["academic_year"] for s in students if s["email"] == b["email"]] == [NEW]
    counts = sp.rows.rule_counts
    assert counts["records.cohort_continued"] == n and counts["quarantine.late_cycle_of_archived_year"] == n
    assert counts["year_rule.cohort_started"] >= 1


def test_the_guarded_import_of_the_archived_year_adds_only_the_late_cycle(case, world):
    con, export, a, b = case
    archive_old(con)
    before = con.execute(f"SELECT count(*) FROM vespa_scores WHERE academic_year = '{OLD}'").fetchall()[0][0]
    snap = open_snapshot(export)
    rows = importer.import_rows(snap, OLD, con, convert_q29_percentage=True, establishment_scope=None,
                                late_cycles_only=True)
    repairs = importer.repairs_for(rows, con, OLD)
    desired = importer.desired_for(rows, con, OLD, None, repairs)
    plan = importer.plan_import(con, desired, [OLD], repairs)
    totals = importer.totals(plan.counts())
    n = 1 + len(planted(world))  # the generator's late cycles and A's
    assert totals["vespa_scores"]["insert"] == n, (plan.counts(), plan.refused_reasons, plan.samples)
    assert {t: {op: totals[t][op] for op in ("update", "delete", "refused")} for t in totals} == {
        t: {"update": 0, "delete": 0, "refused": 0} for t in totals}
    assert totals["students"]["insert"] == 0
    out = importer.apply_import(con, desired, rows, approve=plan.fingerprint, run_id="late1", target_kind="duckdb",
                                archive=[OLD], planned=plan, repairs=repairs)
    assert out.status == "applied", out.reason
    after = con.execute(f"SELECT count(*) FROM vespa_scores WHERE academic_year = '{OLD}'").fetchall()[0][0]
    assert after == before + n
    assert con.execute(f"SELECT bool_and(is_archived) FROM vespa_scores WHERE academic_year = '{OLD}'").fetchall()[0][0]
    sp = sync.plan_sync(f"csv:{export}", con, AS_OF)  # the next night: nothing left to set aside
    assert sp.rows.rule_counts["quarantine.late_cycle_of_archived_year"] == n  # still late, still archived
    assert sp.passed


def test_a_late_cycle_of_an_open_year_is_written_into_that_year(case, world):
    con, export, a, b = case  # 2024/2025 not archived yet (the rollover has not run)
    sp = sync.plan_sync(f"csv:{export}", con, AS_OF)
    assert sp.passed, [c for c in sp.checks if not c["passed"]]
    counts = sp.plan.counts()
    assert counts["vespa_scores"][OLD]["insert"] == 1 + len(planted(world)) and counts["vespa_scores"][OLD]["delete"] == 0
    assert counts["students"][OLD]["delete"] == 0 and counts["students"][OLD]["update"] == 0
    result = sync.apply_sync(con, sp, approve="auto", run_id="s1", actor="pytest")
    assert result.status == "applied", result.reasons
    cycles = con.execute("SELECT t.cycle, t.completion_date FROM vespa_scores t JOIN students s ON s.id = t.student_id "
                         "WHERE lower(s.email) = ? ORDER BY 1", [a["email"]]).fetchall()
    assert cycles == [(1, date(2025, 5, 12)), (3, date(2025, 8, 2))]
    assert sync.plan_sync(f"csv:{export}", con, AS_OF).plan.is_empty


# --- the validation ---------------------------------------------------------------------------------


def _copy_into_new_year(con, email: str, dated: bool) -> None:
    """What the old scripts did: the record moved with all its cycles into 2025/2026 (with their
    completion dates when ``dated``; an F1-stamped copy has none)."""
    con.execute(f"INSERT INTO students (email, academic_year, knack_id, establishment_id) SELECT email, '{NEW}', "
                f"knack_id, establishment_id FROM students WHERE lower(email) = ? AND academic_year = '{OLD}'",
                [email])
    date_col = "completion_date" if dated else "NULL"
    con.execute(f"INSERT INTO vespa_scores (student_id, academic_year, cycle, {', '.join(ELEMENTS)}, completion_date) "
                f"SELECT (SELECT id FROM students WHERE lower(email) = ? AND academic_year = '{NEW}'), '{NEW}', cycle, "
                f"{', '.join(ELEMENTS)}, {date_col} FROM vespa_scores WHERE academic_year = '{OLD}' AND student_id = "
                f"(SELECT id FROM students WHERE lower(email) = ? AND academic_year = '{OLD}')",
                [email, email])


def test_the_validation_reports_a_cohort_split_across_two_years(case, world):
    con, export, a, b = case
    assert transition.cohort_in_one_year(con).passed  # B's two years are explained by its reset record
    rows = build_rows(open_snapshot(export), NEW, con, year_fallback=None)
    _copy_into_new_year(con, a["email"], dated=True)
    r = transition.cohort_in_one_year(con)
    assert not r.passed and len(r.frame[~r.frame["passed"]]) == 1
    assert r.figures["split_cohorts"] == 1 and r.figures["undated_copies"] == 0
    assert a["email"] not in r.frame.to_string()  # masked
    assert rows.rule_counts["year_rule.cohort_started"] >= 1


def test_an_undated_copy_is_listed_for_review_not_counted_as_a_split(case):
    """An F1-stamped copy (no completion date at all) was not moved by a date rule: it is listed and
    counted apart, and only a dated split fails the check."""
    con, export, a, b = case
    _copy_into_new_year(con, a["email"], dated=False)
    r = transition.cohort_in_one_year(con)
    assert r.passed and r.figures["undated_copies"] == 1 and r.figures["split_cohorts"] == 0
    assert "undated later-year copy" in r.detail
    assert len(r.frame[~r.frame["passed"]]) == 1  # still listed in the table


# --- PostgreSQL -------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_on_postgres_the_late_cycle_is_set_aside_and_the_import_adds_it(case, world, pg_dsn, tmp_path):
    from vespa_lib.sandbox.synth.postgres import load_into_postgres

    con, export, a, b = case
    con.close()
    load_into_postgres(tmp_path / "p.duckdb", pg_dsn)
    pg = psycopg.connect(pg_dsn, autocommit=True)
    try:
        for archive in ([], [OLD]):
            want = Desired({}, years=[OLD])
            apply_plan(pg, want, approve=plan_changes(pg, want, archive_years=archive).fingerprint,
                       run_id=f"setup{len(archive)}", runbook="test", actor="pytest", recompute=False,
                       archive_years=archive)
        sp = sync.plan_sync(f"csv:{export}", pg, AS_OF)
        assert sp.passed, [c for c in sp.checks if not c["passed"]]
        n = 1 + len(planted(world))
        assert sp.rows.rule_counts["quarantine.late_cycle_of_archived_year"] == n
        assert [s["academic_year"] for s in sp.desired.tables["students"].to_pylist()
                if s["email"] == b["email"]] == [NEW]
        assert sync.apply_sync(pg, sp, approve=sp.fingerprint, run_id="n1", actor="cron",
                               target_kind="postgres").status == "applied"
        rows = importer.import_rows(open_snapshot(export), OLD, sync._Reader(pg), convert_q29_percentage=True,
                                    establishment_scope=None, late_cycles_only=True)
        repairs = importer.repairs_for(rows, pg, OLD)
        desired = importer.desired_for(rows, pg, OLD, None, repairs)
        plan = importer.plan_import(pg, desired, [OLD], repairs)
        assert importer.totals(plan.counts())["vespa_scores"]["insert"] == n
        out = importer.apply_import(pg, desired, rows, approve=plan.fingerprint, run_id="late1",
                                    target_kind="postgres", archive=[OLD], planned=plan, repairs=repairs)
        assert out.status == "applied", out.reason
        got = pg.execute("SELECT t.academic_year, t.cycle, t.completion_date, t.is_archived FROM vespa_scores t "
                         "JOIN students s ON s.id = t.student_id WHERE lower(s.email) = %s ORDER BY 2",
                         [a["email"]]).fetchall()
        assert got == [(OLD, 1, date(2025, 5, 12), True), (OLD, 3, date(2025, 8, 2), True)]
    finally:
        pg.close()
