"""The one authoritative sync on real DuckDB files with generated data.

Every F-case is planted into a copy of the fresh export (or, for defence in depth, into the rows a
broken builder would hand the planner) and caught before any write: the database checksums stay
the same. Generated once per module: ``synth.generate`` + ``generate_fresh_export``.
"""

from __future__ import annotations

import csv
import io
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from vespa_lib import sync
from vespa_lib.errors import ParameterError
from vespa_lib.rules import rows as rowsmod
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.fresh import generate_fresh_export
from vespa_lib.sync.source import open_source
from vespa_lib.write.guard import apply_plan, table_checksums
from vespa_lib.write.plan import Desired, plan_changes

AS_OF = date(2026, 3, 15)
YEAR, OLD, CAL = "2025/2026", "2024/2025", "2026/2026"
DATA = ["students", "vespa_scores", "question_responses", "academic_years"]
O10 = "FullObject_10_2026-03-15.csv"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Snapshot, damaged DB (migrated, 2024/2025 archived through the guard), fresh export, truth."""
    out = tmp_path_factory.mktemp("sync")
    synth.generate(out, students=300, seed=2025)
    generate_fresh_export(out, as_of=AS_OF)
    shutil.copy(out / "production.duckdb", out / "unmigrated.duckdb")  # as production was before the workbook
    con = duckdb.connect(str(out / "production.duckdb"))
    for archive in ([], [OLD]):
        want = Desired({}, years=[OLD])
        plan = plan_changes(con, want, archive_years=archive)
        apply_plan(con, want, approve=plan.fingerprint, run_id=f"setup{len(archive)}", runbook="test", actor="pytest",
                   recompute=False, archive_years=archive)
    con.close()
    return out


@pytest.fixture
def db(world, tmp_path):
    shutil.copy(world / "production.duckdb", tmp_path / "p.duckdb")
    con = duckdb.connect(str(tmp_path / "p.duckdb"))
    yield con
    con.close()


def truth(world: Path) -> list[dict]:
    with (world / "fresh_truth.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def edited_export(world: Path, dst: Path, edit) -> str:
    """A copy of the fresh export whose object_10 rows went through ``edit(rows) -> rows``."""
    shutil.copytree(world / "fresh_export", dst)
    text = (dst / O10).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = edit(list(reader))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, reader.fieldnames, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    (dst / O10).write_text(buf.getvalue(), encoding="utf-8-sig")
    return f"csv:{dst}"


def check(sp, name: str) -> dict:
    return next(c for c in sp.checks if c["name"] == name)


def new_record(world: Path) -> dict:
    """A fresh_truth object_10 record that syncs as a new student."""
    return next(r for r in truth(world) if r["object"] == "object_10" and r["drift"] == "new"
                and r["academic_year"] == YEAR)


# --- the plan on the generated export ------------------------------------------------------------


def test_drift_kinds_equal_the_fresh_truth(world, db):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sp.passed, [c for c in sp.checks if not c["passed"]]
    found = {(r.email, r.academic_year): r.drift for r in sp.drift.students.itertuples()}
    want = {(r["email"], r["academic_year"]): r["drift"] for r in truth(world)
            if r["object"] in ("object_10", "db_student") and r["expected"] in ("sync", "extra")}
    assert {k: found.get(k) for k in want} == want
    assert sum(v == "extra" for v in found.values()) == sum(v == "extra" for v in want.values())


def test_records_that_cannot_be_synced_carry_the_truths_reasons(world, db):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    got = {(r.record_id, r.reason) for r in sp.unsyncable.itertuples() if r.object == "object_10"}
    want = {(r["record_id"], r["reason"]) for r in truth(world)
            if r["object"] == "object_10" and r["expected"] == "set_aside"}
    assert got == want
    assert {"no_date", "no_email", "no_establishment", "other_year"} <= set(sp.unsyncable["group"])


def test_apply_then_replan_is_zero_and_history_records_every_run(world, db):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    before = table_checksums(db, DATA) | {"ledger": db.execute("SELECT count(*) FROM vespa_ops.ledger").fetchone()}
    assert sync.apply_sync(db, sp, approve="", run_id="p0", actor="pytest").status == "planned"
    assert table_checksums(db, DATA) | {"ledger": db.execute("SELECT count(*) FROM vespa_ops.ledger").fetchone()} \
        == before  # a plan-only run writes nothing, not even a ledger row: its evidence is the record
    archived_before = table_checksums_of_year(db, OLD)
    result = sync.apply_sync(db, sp, approve=sp.fingerprint, run_id="a1", actor="pytest")
    assert result.status == "applied"
    again = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert again.plan.is_empty and again.passed
    assert table_checksums_of_year(db, OLD) == archived_before
    hist = sync.sync_history(db)
    assert list(hist["run_id"])[:1] == ["a1"] and "p0" not in set(hist["run_id"]) and "applied" in set(hist["status"])
    assert (hist.loc[hist["run_id"] == "a1", "academic_year"] == YEAR).all()


def table_checksums_of_year(con, year: str) -> dict:
    return {t: con.execute(f"SELECT md5(string_agg(CAST(t AS VARCHAR), ',' ORDER BY CAST(t AS VARCHAR))) "
                           f"FROM {t} t WHERE academic_year = ?", [year]).fetchall()[0][0]
            for t in ("students", "vespa_scores", "question_responses")}


# --- planted F-cases: caught before any write ------------------------------------------------------


def _planted_plan(world, tmp_path, db, edit, **kw):
    before = table_checksums(db, DATA)
    sp = sync.plan_sync(edited_export(world, tmp_path / "export", edit), db, AS_OF, **kw)
    assert table_checksums(db, DATA) == before
    return sp


def _set(rows, record_id, **cells):
    for row in rows:
        if row["id"] == record_id:
            row.update(cells)
    return rows


def test_f1_a_blank_date_is_set_aside_never_given_a_year(world, db, tmp_path):
    rec = new_record(world)
    sp = _planted_plan(world, tmp_path, db, lambda rows: _set(rows, rec["record_id"], field_855_date=""))
    fig = check(sp, "years_from_own_dates")["figures"]
    assert check(sp, "years_from_own_dates")["passed"] and fig["decided_by_fallback"] == 0
    assert (sp.unsyncable.query("record_id == @rec['record_id']")["reason"] == ["no_date"]).all()
    assert rec["email"] not in sp.desired.tables["students"].column("email").to_pylist()


def _broken(world, db, edit_rows, tmp_path=None, **build_kw):
    """Rows a broken builder produced, planned and proved; then every approval is refused."""
    src = open_source(f"csv:{world / 'fresh_export'}", YEAR)
    built = rowsmod.build_rows(src, YEAR, db, year_fallback=build_kw.pop("year_fallback", None),
                               calendar_year=CAL)  # as plan_sync builds them: each school's running year
    built = edit_rows(built)
    before = table_checksums(db, DATA)
    sp = sync.plan_for_rows(built, src, db, AS_OF)
    for approve in (sp.fingerprint, "auto", "policy"):
        assert sync.apply_sync(db, sp, approve=approve, run_id=f"b-{approve[:6]}", actor="pytest").status == "refused"
    assert table_checksums(db, DATA) == before
    return sp


def test_f1_a_builder_falling_back_to_the_snapshot_year_fails_the_proof(world, db):
    sp = _broken(world, db, lambda r: r, year_fallback="snapshot_year")
    c = check(sp, "years_from_own_dates")
    assert not c["passed"] and c["figures"]["decided_by_fallback"] > 0 and c["figures"]["without_own_date"] > 0


def test_f10_copied_cycles_are_dropped_and_a_planned_copy_fails_the_proof(world, db, tmp_path):
    rec = new_record(world)

    def copy_cycles(rows):
        row = next(r for r in rows if r["id"] == rec["record_id"])
        cur = [row[f"field_{n}"] for n in range(147, 153)]
        for first in (155, 161, 167):
            row.update({f"field_{first + i}": v for i, v in enumerate(cur)})
        row["field_146"] = "1"
        return rows

    base = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    sp = _planted_plan(world, tmp_path, db, copy_cycles)
    c = check(sp, "no_f10_cycle_copies")
    assert c["passed"] and c["figures"]["copies_dropped"] == check(base, "no_f10_cycle_copies")["figures"][
        "copies_dropped"] + 2 - sum(1 for _ in ())  # cycles 2 and 3 copied from the current cycle 1

    def plant_copy(built):
        s = built.vespa_scores.to_pylist()
        one = next(r for r in s if r["cycle"] == 1 and not any(x["email"] == r["email"] and x["cycle"] == 2 for x in s))
        student = next(x for x in built.students.to_pylist() if x["email"] == one["email"])
        o10 = open_source(f"csv:{world / 'fresh_export'}", YEAR).con.execute(
            "SELECT current_cycle, current_vision FROM o10 WHERE id = ?", [student["knack_id"]]).fetchall()
        assert o10 and o10[0][0].strip() in ("1", "1.0")
        built.vespa_scores = pa.Table.from_pylist(s + [{**one, "cycle": 2, "completion_date": None}],
                                                  schema=built.vespa_scores.schema)
        return built

    broken = _broken(world, db, plant_copy)
    assert check(broken, "no_f10_cycle_copies")["figures"]["copies_planned"] == 1


def test_f8_answers_with_another_year_than_their_scores_fail_the_proof(world, db):
    def other_year(built):
        t = built.question_responses
        first = t.slice(0, 32).to_pylist()
        moved = [{**r, "academic_year": "2025/2025"} for r in first]
        built.question_responses = pa.Table.from_pylist(t.slice(32).to_pylist() + moved, schema=t.schema)
        return built

    c = check(_broken(world, db, other_year), "one_year_per_student_cycle")
    assert not c["passed"] and c["figures"]["answers_year_differs_from_scores"] >= 1


def test_a_record_of_the_archived_year_is_set_aside_and_planted_rows_are_refused(world, db, tmp_path):
    rec = new_record(world)
    sp = _planted_plan(world, tmp_path, db, lambda rows: _set(rows, rec["record_id"], field_855_date="15/03/2025"))
    assert check(sp, "no_archived_year_rows")["passed"]
    assert (sp.unsyncable.query("record_id == @rec['record_id']")["reason"] == ["stale_date"]).all()

    def archived(built):
        s = built.students.to_pylist()
        built.students = pa.Table.from_pylist(s + [{**s[0], "academic_year": OLD, "name": "Overwritten"}],
                                              schema=built.students.schema)
        return built

    c = check(_broken(world, db, archived), "no_archived_year_rows")
    assert not c["passed"] and c["figures"]["planned_rows_in_archived_years"]["students"] == 1


def test_a_record_left_only_in_another_year_does_not_keep_the_deleted_current_years_rows(world, db, tmp_path):
    """Found by the year rehearsal: a student's 2025/2026 record deleted in Knack while their old record,
    dated in 2024/2025 and set aside as stale_date, stays. The old record vouches for its own year only:
    the current year's rows are deleted as for any deleted record, the archived rows are untouched."""
    rec = new_record(world)
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sync.apply_sync(db, sp, approve="policy", run_id="n1", actor="cron",
                           policy={"max_deletes": 100_000, "max_school_loss": 1.0}).status == "applied"
    n = "SELECT count(*) FROM students WHERE lower(email) = ? AND academic_year = ?"
    assert db.execute(n, [rec["email"], YEAR]).fetchone()[0] == 1
    old = _planted_plan(world, tmp_path, db, lambda rows: _set(rows, rec["record_id"], field_855_date="15/03/2025"))
    assert (old.unsyncable.query("record_id == @rec['record_id']")["reason"] == ["stale_date"]).all()
    assert old.totals()["students"]["delete"] == 1, old.plan.summary_frame()
    assert sync.apply_sync(db, old, approve="policy", run_id="n2", actor="cron",
                           policy={"max_deletes": 100_000, "max_school_loss": 1.0, "ratio_floor": 100_000}).status == "applied"
    assert db.execute(n, [rec["email"], YEAR]).fetchone()[0] == 0


def test_f2_a_re_enrolled_email_gets_a_new_row_and_its_other_year_row_is_untouched(world, db, tmp_path):
    old_email = db.execute("SELECT email FROM students WHERE academic_year = ? AND email NOT IN "
                           "(SELECT email FROM students WHERE academic_year <> ?) ORDER BY email LIMIT 1",
                           [OLD, OLD]).fetchall()[0][0]
    rec = new_record(world)
    old_before = table_checksums_of_year(db, OLD)
    sp = _planted_plan(world, tmp_path, db, lambda rows: _set(rows, rec["record_id"], field_197_email=old_email.upper()))
    c = check(sp, "no_other_year_student_updated")
    assert c["passed"] and c["figures"]["re_enrolled_students"] >= 1
    keys = set(zip(sp.desired.tables["students"].column("email").to_pylist(),
                   sp.desired.tables["students"].column("academic_year").to_pylist(), strict=True))
    assert (old_email, YEAR) in keys and (old_email, OLD) not in keys
    assert sync.apply_sync(db, sp, approve="auto", run_id="f2", actor="pytest").status == "applied"
    assert table_checksums_of_year(db, OLD) == old_before

    others = {r[0] for r in db.execute("SELECT email FROM students WHERE academic_year <> ?", [YEAR]).fetchall()}

    def overwrite(built):
        s = built.students.to_pylist()
        mine = next(r for r in s if r["email"] in others)
        built.students = pa.Table.from_pylist(s + [{**mine, "academic_year": OLD}], schema=built.students.schema)
        return built

    assert not check(_broken(world, db, overwrite), "no_other_year_student_updated")["passed"]


def test_f16_a_deletion_outside_the_scope_is_not_planned(world, db, tmp_path):
    extra = [r for r in truth(world) if r["reason"] == "deleted_from_knack"]
    scope_est = extra[0]["establishment_knack_id"]
    other = db.execute("SELECT s.email, e.knack_id FROM students s JOIN establishments e ON e.id = s.establishment_id "
                       "WHERE s.academic_year = ? AND e.knack_id <> ? ORDER BY 1 LIMIT 1", [YEAR, scope_est]).fetchall()[0]
    sp = _planted_plan(world, tmp_path, db, lambda rows: [r for r in rows if other[0] not in r["field_197_email"].lower()],
                       establishment_scope=[scope_est])
    c = check(sp, "deletions_in_scope")
    assert c["passed"] and c["figures"]["planned_deletes"]["students"] == sum(
        r["establishment_knack_id"] == scope_est for r in extra)
    assert c["figures"]["extra_rows_outside_scope_kept"] > 0  # school B's rows, the planted one included
    full = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sp.totals()["students"]["delete"] < full.totals()["students"]["delete"]


# --- unattended policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "approved", "reason"), [
    ({"max_deletes": 0}, False, "max_deletes"),
    ({"max_deletes": 10_000, "max_school_loss": 1.0, "max_change_ratio": 0.01}, True, ""),  # no previous run: no ratio bound
    ({"max_deletes": 10_000, "max_school_loss": 1.0}, True, ""),
])
def test_policy_first_run(world, db, policy, approved, reason):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    before = table_checksums(db, DATA)
    result = sync.apply_sync(db, sp, approve="policy", run_id="cron1", actor="cron", policy=policy)
    assert (result.status == "applied") == approved
    if not approved:
        assert any(reason in r for r in result.reasons) and table_checksums(db, DATA) == before
        assert sync.sync_history(db).iloc[0]["status"] == "refused"


def test_policy_refuses_counts_out_of_bounds_of_the_previous_run(world, db, tmp_path):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sync.apply_sync(db, sp, approve="policy", run_id="n1", actor="cron",
                           policy={"max_deletes": 10_000, "max_school_loss": 1.0}).status == "applied"
    half = _planted_plan(world, tmp_path, db, lambda rows: rows[: len(rows) // 2])
    before = table_checksums(db, DATA)
    result = sync.apply_sync(db, half, approve="policy", run_id="n2", actor="cron",
                             policy={"max_deletes": 10_000, "max_school_loss": 1.0, "max_count_change": 0.2})
    assert result.status == "refused" and any("previous sync run n1" in r for r in result.reasons)
    assert table_checksums(db, DATA) == before
    assert sync.sync_history(db).set_index("run_id").loc["n2", "status"] == "refused"


@pytest.mark.parametrize(("floor", "status"), [(0, "refused"), (10_000, "applied")])
def test_ratio_floor_lets_small_changes_of_a_small_year_through(world, db, tmp_path, floor, status):
    """A year's first weeks: a few new students against a year of a few rows are a large ratio but a
    small change. Changes up to ratio_floor rows are not judged by the ratios; beyond, they are."""
    small = _planted_plan(world, tmp_path / "a", db, lambda rows: rows[:2])
    first = sync.apply_sync(db, small, approve="policy", run_id="n1", actor="cron", policy={"max_deletes": 100_000, "max_school_loss": 1.0})
    assert first.status == "applied", first.reasons
    grown = _planted_plan(world, tmp_path / "b", db, lambda rows: rows[:4])
    result = sync.apply_sync(db, grown, approve="policy", run_id="n2", actor="cron",
                             policy={"max_deletes": 100_000, "max_school_loss": 1.0, "ratio_floor": floor})
    assert result.status == status, result.reasons
    if status == "refused":
        assert any("max_change_ratio" in r for r in result.reasons)
        assert any("max_count_change" in r for r in result.reasons)


def _synced(world, db):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sync.apply_sync(db, sp, approve="policy", run_id="n1", actor="cron",
                           policy={"max_deletes": 100_000, "max_school_loss": 1.0}).status == "applied"


def test_one_student_deleted_in_knack_counts_as_the_student_and_their_completions(world, db, tmp_path):
    """Found by the year rehearsal: one student deleted in Knack (two cycles taken) was 68 deletions,
    their answers counted one by one, and max_deletes=50 refused the night. Deletions count students
    and completions; the answers go with them."""
    _synced(world, db)
    email, n = db.execute("SELECT lower(s.email), count(*) FROM students s JOIN vespa_scores v ON v.student_id = s.id "
                          "WHERE s.academic_year = ? GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 1", [YEAR]).fetchone()
    gone = _planted_plan(world, tmp_path, db, lambda rows: [r for r in rows if r["field_197_email"].strip().lower() != email])
    decision = sync.policy_decision(db, gone, {"max_deletes": 50})
    assert decision["figures"]["deleted_students_and_completions"] == 1 + n
    assert decision["figures"]["deletes"] > 50  # rows, answers included: what max_deletes counted before
    assert decision["approved"], decision["reasons"]
    assert not sync.policy_decision(db, gone, {"max_deletes": n})["approved"]


def test_an_export_missing_a_third_of_a_school_is_refused_whatever_max_deletes(world, db, tmp_path):
    _synced(world, db)
    est, = db.execute("SELECT e.knack_id FROM students s JOIN establishments e ON e.id = s.establishment_id "
                      "WHERE s.academic_year = ? GROUP BY 1 ORDER BY count(*) DESC LIMIT 1", [YEAR]).fetchone()
    emails = sorted(e for (e,) in db.execute(
        "SELECT DISTINCT lower(s.email) FROM students s JOIN establishments e ON e.id = s.establishment_id "
        "WHERE s.academic_year = ? AND e.knack_id = ?", [YEAR, est]).fetchall())
    dropped = set(emails[: len(emails) // 3 + 1])
    partial = _planted_plan(world, tmp_path, db,
                            lambda rows: [r for r in rows if r["field_197_email"].strip().lower() not in dropped])
    decision = sync.policy_decision(db, partial, {"max_deletes": 100_000, "ratio_floor": 100_000})
    (loss,) = [x for x in decision["figures"]["school_losses"] if x["establishment"] == est]
    # a dropped student who owns another year's rows is kept (their drift shows it), so not lost
    assert loss["lost"] == partial.totals()["students"]["delete"] and loss["students"] == len(emails)
    assert len(dropped) >= loss["lost"] > len(emails) / 5
    assert not decision["approved"] and any(f"establishment {est} would lose" in r for r in decision["reasons"])
    assert sync.policy_decision(db, partial, {"max_deletes": 100_000, "ratio_floor": 100_000,
                                              "max_school_loss": 0.5})["approved"]


@pytest.mark.parametrize("policy", [{"max_delete": 1}, {"max_deletes": "5"}, {"require_no_refused": 1},
                                    {"ratio_floor": 0.5}])
def test_bad_policies_are_refused(world, db, policy):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    with pytest.raises(ParameterError, match="policy"):
        sync.policy_decision(db, sp, policy)


def test_auto_approval_is_refused_for_a_postgres_target_kind(world, db):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    before = table_checksums(db, DATA)
    result = sync.apply_sync(db, sp, approve="auto", run_id="x", actor="a", target_kind="postgres")
    assert result.status == "refused" and "DuckDB rehearsals only" in result.reasons[0]
    assert table_checksums(db, DATA) == before
    assert sync.sync_history(db).iloc[0]["status"] == "refused"


@pytest.mark.parametrize("source", ["csv:", "knack:ONLY_ONE", "ftp:/x", "knack:A,"])
def test_bad_sources_are_refused(source, db):
    with pytest.raises(ParameterError, match="source"):
        sync.plan_sync(source, db, AS_OF)


@pytest.mark.parametrize(("stored", "expected_labels", "relabelled", "dropped", "conflicts"), [
    (["2025-26"], ["2025/2026"], 1, 0, 0),                       # a lone misspelling: relabelled
    (["2025-26", "2025/2026"], ["2025/2026"], 0, 1, 0),          # identical canonical copy: misspelt one dropped
    (["2025/2026"], ["2025/2026"], 0, 0, 0),                     # already canonical: untouched
])
def test_kept_rows_get_canonical_labels(stored, expected_labels, relabelled, dropped, conflicts):
    import pyarrow as pa

    from vespa_lib.sync import checks as sync_checks

    t = pa.table({"email": ["a@x.uk"] * len(stored), "academic_year": stored, "cycle": ["1"] * len(stored),
                  "question_id": ["q1"] * len(stored), "response_value": ["3"] * len(stored)})
    counts: dict = {}
    out = sync_checks._canonical_labels(t, "question_responses", counts)
    assert sorted(out.column("academic_year").to_pylist()) == expected_labels
    assert counts["question_responses"] == {"relabelled": relabelled, "identical_duplicates": dropped,
                                            "conflicts": conflicts}


def test_a_conflicting_misspelt_duplicate_is_kept_and_refuses_the_sync():
    import pyarrow as pa

    from vespa_lib.sync import checks as sync_checks

    t = pa.table({"email": ["a@x.uk"] * 2, "academic_year": ["2025-26", "2025/2026"], "cycle": ["1", "1"],
                  "question_id": ["q1", "q1"], "response_value": ["3", "4"]})
    counts: dict = {}
    out = sync_checks._canonical_labels(t, "question_responses", counts)
    assert sorted(out.column("academic_year").to_pylist()) == ["2025-26", "2025/2026"]
    proof = sync_checks.label_proof(counts)
    assert proof["name"] == "f11_labels_canonical" and not proof["passed"]
    assert sync_checks.label_proof({"students": {"relabelled": 2, "identical_duplicates": 0, "conflicts": 0}})["passed"]


def test_a_database_never_migrated_gets_a_blocked_plan_not_a_crash(world, tmp_path):
    """Before the workbook's migrations the tables have no is_archived: the plan says what to do first."""
    shutil.copy(world / "unmigrated.duckdb", tmp_path / "u.duckdb")
    con = duckdb.connect(str(tmp_path / "u.duckdb"))
    try:
        sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", con, AS_OF)
        assert sp.plan.blocked and "apply migrations first" in sp.plan.blocked
        assert not sp.passed
    finally:
        con.close()


# --- the review-before-approve path through vespa-ops (docs/ARCHITECTURE.md "Guarded writes") -----

REPO = Path(__file__).resolve().parent.parent
DEMO_PARAMS = REPO / "params" / "demo" / "sync_check.yaml"


def ops_sync(outputs: Path, source: str, target: str, *overrides: str) -> dict:
    """``vespa-ops run sync_check -f params/demo/sync_check.yaml -p source=… -p target=… -p …``: the run's
    manifest plus ``exit`` (its exit code), ``folder`` (its evidence) and ``plan`` (the saved plan)."""
    import json

    from vespa_lib.ops import cli

    code = cli.main(["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs), "run", "sync_check",
                     "-f", str(DEMO_PARAMS), "-p", f"source={source}", "-p", f"target={target}",
                     *[x for o in overrides for x in ("-p", o)]])
    (path,) = outputs.glob("*/*/manifest.json")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    plan = path.parent / "plan.json"
    saved = json.loads(plan.read_text(encoding="utf-8")) if plan.exists() else None
    saved = json.loads(saved) if isinstance(saved, str) else saved
    return manifest | {"exit": code, "folder": path.parent, "plan": saved}


def changes(plan_doc: dict) -> int:
    """Inserts + updates + deletes of a saved plan."""
    return sum(c[op] for by_year in plan_doc["counts"].values() for c in by_year.values()
               for op in ("insert", "update", "delete"))


def holds_the_plan(con, plan_doc: dict) -> bool:
    """Whether every table × year of the plan now holds exactly its inserted, updated and unchanged rows."""
    for table, by_year in plan_doc["counts"].items():
        for year, c in by_year.items():
            live = con.execute(f"SELECT count(*) FROM {table} WHERE academic_year = ?", [year]).fetchone()[0]
            if c["refused"] or live != c["insert"] + c["update"] + c["unchanged"]:
                return False
    return True


@pytest.mark.notebook
def test_plan_mode_through_vespa_ops_writes_nothing_and_apply_takes_its_fingerprint(world, tmp_path):
    """`mode: plan` (the default, read-only) on DuckDB: the file stays byte-identical, the evidence holds
    the plan and its fingerprint, no ledger row is written; `mode: apply` with that fingerprint applies
    exactly that plan."""
    from vespa_lib.ops.files import sha256_of

    target = tmp_path / "p.duckdb"
    shutil.copy(world / "production.duckdb", target)
    source, spec = f"csv:{world / 'fresh_export'}", f"duckdb:{target}"
    before = sha256_of(target)
    plan = ops_sync(tmp_path / "o1", source, spec, "mode=plan", "approve=")
    assert (plan["exit"], plan["status"], plan["sync_status"]) == (0, "passed", "planned"), plan["error"]
    assert sha256_of(target) == before and not Path(f"{target}.wal").exists()
    fingerprint = plan["plan_fingerprint"]
    assert len(fingerprint) == 64 and plan["plan"]["fingerprint"] == fingerprint and changes(plan["plan"]) > 0
    again = ops_sync(tmp_path / "o2", source, spec, "mode=plan")
    assert again["exit"] == 0 and again["plan_fingerprint"] == fingerprint and sha256_of(target) == before

    applied = ops_sync(tmp_path / "o3", source, spec, "mode=apply", f"approve={fingerprint}")
    assert (applied["exit"], applied["sync_status"]) == (0, "applied"), applied["error"]
    assert applied["plan_fingerprint"] == fingerprint
    assert {c["name"]: c["passed"] for c in applied["checks"]}["replan_is_empty"]
    with duckdb.connect(str(target), read_only=True) as con:
        assert holds_the_plan(con, plan["plan"])
        runs = {r[0]: r[1] for r in con.execute("SELECT run_id, status FROM vespa_ops.ledger "
                                                 "WHERE runbook = 'sync_check'").fetchall()}
    assert runs.get(applied["run_id"]) == "applied"
    assert plan["run_id"] not in runs and again["run_id"] not in runs  # the plan-only runs wrote nothing


@pytest.mark.notebook
def test_an_empty_nightly_sync_records_no_changes_and_counts_as_a_night_the_sync_ran(world, db, tmp_path):
    """A policy run whose plan changes nothing leaves a "no changes" ledger row, not "applied"; the
    year_transition checks read it as a night the sync ran and as the year's last sync."""
    from vespa_lib.transition import checks as transition_checks

    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", db, AS_OF)
    assert sync.apply_sync(db, sp, approve=sp.fingerprint, run_id="night0", actor="pytest").status == "applied"
    db.close()
    target = tmp_path / "p.duckdb"
    before = table_checksums_at(target)
    night = ops_sync(tmp_path / "o1", f"csv:{world / 'fresh_export'}", f"duckdb:{target}", "mode=apply",
                     "approve=policy")
    assert (night["exit"], night["sync_status"]) == (0, "no changes"), night["error"]
    assert table_checksums_at(target) == before
    with duckdb.connect(str(target), read_only=True) as con:
        hist = sync.sync_history(con)
        ran = transition_checks.sync_ran_every_night(con, AS_OF, 1)
        last = transition_checks.current_year_matches_last_sync(con, AS_OF)
    assert hist.iloc[0][["run_id", "status", "inserts", "updates", "deletes"]].tolist() == \
        [night["run_id"], "no changes", 0, 0, 0]
    assert ran.passed and ran.frame.iloc[0]["statuses"] == "no changes"  # night0 ran on another (clock) date
    assert last.passed and last.figures["sync_run"] == night["run_id"]


@pytest.mark.notebook
def test_the_first_nightly_sync_of_a_year_is_not_bounded_by_the_last_years_counts(world, db, tmp_path):
    """On 1 August the running year changes: cron's policy compares the counts with the previous sync
    run of the same running year. The first run of a year has none to compare with and says so; it is
    bounded by max_deletes and the other bounds only. The next night compares with it."""
    source = f"csv:{world / 'fresh_export'}"
    sp = sync.plan_sync(source, db, AS_OF)
    assert sync.apply_sync(db, sp, approve="policy", run_id="march", actor="cron",
                           policy={"max_deletes": 10_000, "max_school_loss": 1.0}).status == "applied"
    db.close()
    target = tmp_path / "p.duckdb"
    before = table_checksums_at(target)
    first = ops_sync(tmp_path / "o1", source, f"duckdb:{target}", "mode=apply", "approve=policy",
                     "as_of='2026-08-01'")
    assert (first["exit"], first["sync_status"]) == (0, "no changes"), first["error"]
    figures = next(c for c in first["checks"] if c["name"] == "applied")["figures"]
    assert figures["previous_run"] is None and figures["policy"]["max_deletes"] == 0
    assert "first sync run of 2026/2027" in figures["comparison"]
    assert table_checksums_at(target) == before
    second = ops_sync(tmp_path / "o2", source, f"duckdb:{target}", "mode=apply", "approve=policy",
                      "as_of='2026-08-02'")
    assert (second["exit"], second["sync_status"]) == (0, "no changes"), second["error"]
    figures = next(c for c in second["checks"] if c["name"] == "applied")["figures"]
    assert figures["previous_run"] == first["run_id"] and figures["count_change"] == 0


def table_checksums_at(path: Path) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        return table_checksums(con, DATA)


# --- the evidence of an applied sync (docs/ARCHITECTURE.md, "Evidence and privacy") ---------------


@pytest.fixture(scope="module")
def applied_sync(world, tmp_path_factory) -> dict:
    """One policy-approved apply of the fresh export through ``vespa-ops run sync_check``, its pre-images
    kept in a separate ``backup_dir``: the run's manifest (``ops_sync``) plus ``backups``."""
    base = tmp_path_factory.mktemp("applied_sync")
    target = base / "p.duckdb"
    shutil.copy(world / "production.duckdb", target)
    backups = base / "backups"
    run = ops_sync(base / "out", f"csv:{world / 'fresh_export'}", f"duckdb:{target}", "mode=apply",
                   "approve=policy", "policy={max_deletes: 10000, max_school_loss: 1.0}", f"backup_dir={backups}")
    return run | {"backups": backups}


def planted_emails(world: Path) -> set[str]:
    """The raw email of every student the fresh export plants (new, changed, extra, set aside...)."""
    return {r["email"].strip().lower() for r in truth(world) if "@" in (r.get("email") or "")}


@pytest.mark.notebook
def test_sync_check_keeps_its_raw_pre_images_out_of_the_evidence(world, applied_sync):
    """The guard's Parquet pre-images hold raw rows: an applied sync writes them owner-only under
    ``backup_dir`` (as the import does), never into the shareable run folder; the manifest says where."""
    import pyarrow.parquet as pq

    run = applied_sync
    assert (run["exit"], run["sync_status"]) == (0, "applied"), run["error"]
    assert changes(run["plan"]) > 0
    pre_images = sorted(run["backups"].rglob("*.parquet"))
    assert pre_images, "an apply that updates and deletes rows leaves pre-images"
    emails = planted_emails(world)
    kept = set()
    for path in pre_images:
        for column in ("email", "student_email"):
            table = pq.read_table(path)
            if column in table.column_names:
                kept |= {str(e).lower() for e in table.column(column).to_pylist() if e}
    assert kept & emails, "the pre-images hold raw emails of planted students: the scan has something to find"
    folder = Path(run["folder"])
    assert Path(run["pre_images_dir"]) == pre_images[0].parent and pre_images[0].is_relative_to(run["backups"])
    for path in [run["backups"], *run["backups"].rglob("*")]:
        if path.is_dir():
            assert path.stat().st_mode & 0o777 == 0o700, f"{path} is not owner-only"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix == ".parquet"]
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="ignore").lower()
        leaked = [e for e in emails if e in text]
        assert not leaked, f"{len(leaked)} raw email(s) in {path.relative_to(folder)}"


@pytest.mark.notebook
def test_sync_check_records_its_rule_counts_in_the_evidence(applied_sync):
    """How many rows each year rule decided and how many records each set-aside reason took, in the
    manifest and as a table in the report."""
    counts = applied_sync["rule_counts"]
    assert {"year_rule.completion_date", "year_rule.cohort_continued", "year_rule.cohort_started",
            "quarantine.late_cycle_of_archived_year"} <= set(counts)
    assert counts["year_rule.completion_date"] > 0
    report = next(Path(applied_sync["folder"]).glob("report.*")).read_text(encoding="utf-8")
    assert "cohort_continued" in report and "late_cycle_of_archived_year" in report
