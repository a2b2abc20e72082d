"""The guarded-write protocol (docs/ARCHITECTURE.md, “Guarded writes”) on real DuckDB files and a real PostgreSQL."""

from __future__ import annotations

import json

import psycopg
import pyarrow.parquet as pq
import pytest
from test_plan import CUR, EST_A, OLD, apply, connect, desired, migrate, open_target, students

from vespa_lib.errors import GuardRefused, ValidationFailed
from vespa_lib.write.guard import LOCK_KEY, apply_plan, apply_undo, plan_undo, table_checksums, verify
from vespa_lib.write.plan import plan_changes
from vespa_lib.write.sql import scalar

DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
        "national_statistics"]


@pytest.fixture(params=["duckdb", "postgres"])
def con(request, duckdb_path):
    """A seeded, migrated target of each kind."""
    yield from open_target(request, duckdb_path)


def test_approval_mismatch_writes_nothing(con):
    want = desired(students(OLD, EST_A, 3))
    plan = plan_changes(con, want)
    before = table_checksums(con, DATA)
    with pytest.raises(GuardRefused, match="plan changed since it was approved"):
        apply_plan(con, desired(students(OLD, EST_A, 4)), approve=plan.fingerprint, run_id="r1",
                   runbook="t", actor="a", recompute=False)
    assert table_checksums(con, DATA) == before
    assert con.execute("SELECT count(*) FROM vespa_ops.ledger WHERE run_id = 'r1'").fetchone()[0] == 0


@pytest.mark.parametrize(("approve", "target_kind", "refused"), [
    ("", "duckdb", True),
    ("auto", "postgres", True),
    ("auto", "duckdb", False),
])
def test_auto_approval_only_on_duckdb(con, approve, target_kind, refused):
    dialect = "postgres" if isinstance(con, psycopg.Connection) else "duckdb"
    kw = {"run_id": "r1", "runbook": "t", "actor": "a", "recompute": False, "target_kind": target_kind}
    if refused or dialect == "postgres":
        with pytest.raises(GuardRefused, match="approv"):
            apply_plan(con, desired(students(OLD, EST_A, 1)), approve=approve, **kw)
    else:
        assert apply_plan(con, desired(students(OLD, EST_A, 1)), approve=approve, **kw).applied


def test_apply_then_repeat_changes_nothing_and_ledger_has_counts(con, tmp_path):
    want = desired(students(OLD, EST_A, 3), cycles=(1, 2))
    result = apply(con, want, "r1", backup_dir=tmp_path / "bk", parameters={"snapshot": "x", "db_password": "pw"})
    assert result.applied["applied"]["question_responses"] == {"insert": 12, "update": 0, "delete": 0}
    assert verify(con, want).is_empty
    again = plan_changes(con, want)
    assert again.is_empty and again.counts()["vespa_scores"][OLD]["unchanged"] == 6
    status, counts, params = con.execute("SELECT status, CAST(counts AS TEXT), CAST(parameters AS TEXT) "
                                         "FROM vespa_ops.ledger WHERE run_id = 'r1'").fetchone()
    assert status == "applied" and json.loads(counts)["applied"]["students"]["insert"] == 3
    assert "pw" not in params and json.loads(params)["snapshot"] == "x"
    for table in ("students", "vespa_scores", "question_responses"):
        # an insert's pre-image is its absence: the database keeps its id and year (what undo deletes and
        # counts), and the evidence folder gets no copy (it holds pre-images of changed rows only)
        cur = con.execute(f"SELECT * FROM vespa_ops.backup_{table} WHERE _run_id = 'r1'")
        names, rows = [d[0] for d in cur.description], cur.fetchall()
        kept = {n for i, n in enumerate(names) if not n.startswith("_") and any(r[i] is not None for r in rows)}
        assert len(rows) == result.applied["applied"][table]["insert"] and kept == {"id", "academic_year"}
        assert {r[names.index("_op")] for r in rows} == {"insert"}
        assert not (tmp_path / "bk" / f"backup_{table}.parquet").exists()
    # a run that changes rows: its evidence copy holds exactly their pre-images, whole
    apply(con, desired(students(OLD, EST_A, 3, name="Renamed"), cycles=(1, 2)), "r2", backup_dir=tmp_path / "bk2")
    copy = pq.read_table(tmp_path / "bk2" / "backup_students.parquet")
    backed = con.execute("SELECT CAST(id AS TEXT), name, _op FROM vespa_ops.backup_students WHERE _run_id = 'r2'").fetchall()
    assert sorted(zip(*(copy.column(c).to_pylist() for c in ("id", "name", "_op")), strict=True)) == sorted(backed)
    assert len(backed) == 3 and {b[2] for b in backed} == {"update"} and "Renamed" not in {b[1] for b in backed}


def test_update_backs_up_pre_image_and_undo_restores_exact_checksums(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    apply(con, desired(students(CUR, EST_A, 2), years=[CUR]), "r2")
    before = table_checksums(con, DATA)
    # DuckDB cannot delete a parent and its children in one transaction (its FK limitation, schema.py)
    pg = isinstance(con, psycopg.Connection)
    rows = students(OLD, EST_A, 2, name="Renamed") + students(OLD, EST_A, 5)[2 if not pg else 3:]
    result = apply(con, desired(rows, score=8, allow_delete=pg), "r3", archive_years=[OLD])
    assert result.applied["applied"]["students"] == {"insert": 2, "update": 2, "delete": int(pg)}
    assert scalar(con, "SELECT count(*) FROM students WHERE academic_year = ? AND NOT is_archived", [OLD]) == 0
    assert con.execute("SELECT count(*) FROM vespa_ops.backup_students WHERE _run_id = 'r3'").fetchone()[0] >= 5
    undo = plan_undo(con, "r3")
    assert undo.counts()["students"][OLD]["delete"] == 2
    if not pg:
        with pytest.raises(GuardRefused, match="DuckDB cannot do in one transaction"):
            apply_undo(con, "r3", approve=undo.fingerprint, undo_run_id="u3", actor="a")
        return
    apply_undo(con, "r3", approve=undo.fingerprint, undo_run_id="u3", actor="a")
    assert table_checksums(con, DATA) == before
    with pytest.raises(GuardRefused, match="only an applied run"):
        plan_undo(con, "r3")


def test_undo_of_an_update_only_run_restores_checksums(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    before = table_checksums(con, DATA)
    apply(con, desired(students(OLD, EST_A, 3, name="Changed"), score=9), "r2", archive_years=[OLD])
    assert table_checksums(con, DATA) != before
    undo = plan_undo(con, "r2")
    with pytest.raises(GuardRefused, match="plan changed"):
        apply_undo(con, "r2", approve="0" * 64, undo_run_id="u2", actor="a")
    apply_undo(con, "r2", approve=undo.fingerprint, undo_run_id="u2", actor="a")
    assert table_checksums(con, DATA) == before


def test_counts_mismatch_rolls_everything_back(con):
    before = table_checksums(con, DATA)

    def sneaky(connection, dialect, years, establishment_ids):
        connection.execute(f"INSERT INTO students (knack_id, email, academic_year) VALUES ('z', 'z@z.uk', '{OLD}')")

    with pytest.raises(ValidationFailed, match="rolled back"):
        apply(con, desired(students(OLD, EST_A, 3)), "r1", recompute=sneaky)
    assert table_checksums(con, DATA) == before
    assert con.execute("SELECT count(*) FROM vespa_ops.ledger WHERE run_id = 'r1'").fetchone()[0] == 0


def test_recompute_hook_gets_touched_years_and_runs_in_the_transaction(con):
    seen = {}

    def hook(connection, dialect, years, establishment_ids):
        seen.update(years=years, dialect=dialect,
                    n=connection.execute("SELECT count(*) FROM students").fetchone()[0])

    apply(con, desired(students(OLD, EST_A, 3)), "r1", recompute=hook)
    assert seen["years"] == [OLD] and seen["n"] == 3


@pytest.mark.postgres
def test_second_concurrent_writer_is_refused(pg_dsn):
    target = connect("postgres", pg_dsn)
    migrate(target)
    holder = psycopg.connect(pg_dsn)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])  # held inside an open transaction
        want = desired(students(OLD, EST_A, 2))
        before = table_checksums(target, DATA)
        with pytest.raises(GuardRefused, match="another guarded run holds the write lock"):
            apply(target, want, "r1")
        assert table_checksums(target, DATA) == before
        holder.rollback()
        assert apply(target, want, "r2").applied["applied"]["students"]["insert"] == 2
    finally:
        holder.close()
        target.close()


def test_apply_reports_phase_timings(con):
    result = apply(con, desired(students(OLD, EST_A, 2)), "timed")
    assert {"plan.stage.students", "plan.classify.question_responses", "merge.question_responses",
            "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["merge.question_responses"]


def test_default_statistics_hook_recomputes_benchmark_years(duckdb_path):
    """The guard's default hook (recompute=None) calls stats with canonical benchmark years: a
    calendar label counts in its benchmark year, a misspelling is canonicalised (docs/DOMAIN.md, “Academic years”, F11)."""
    import duckdb

    from vespa_lib.rules import stats
    from vespa_lib.write import guard

    calls = []
    con = duckdb.connect(str(duckdb_path))
    original = stats.recompute_statistics
    try:
        stats.recompute_statistics = lambda c, ys, ests=None: calls.append((ys, ests))
        guard.default_statistics_hook(con, "duckdb", ["2024/2024", "2025-26", "2024/2025", "junk"], None)
    finally:
        stats.recompute_statistics = original
    assert calls == [(["2024/2025", "2025/2026"], None)]
    assert guard._resolve_hook(None) is guard.default_statistics_hook
    assert guard._resolve_hook(False) is None


# --- plain writers racing a guarded run (docs/ARCHITECTURE.md "Guarded writes", the writers' lock) ---

RACES = {
    # an existing score of the year the apply archives, a row the apply itself does not change
    "update_unchanged_score": f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{OLD}' AND cycle = 2 "
                              f"AND student_id = (SELECT id FROM students WHERE academic_year = '{OLD}' "
                              "ORDER BY email LIMIT 1)",
    "insert_score": f"INSERT INTO vespa_scores (student_id, cycle, vision, academic_year) SELECT id, 3, 1, '{OLD}' "
                    f"FROM students WHERE academic_year = '{OLD}' ORDER BY email LIMIT 1",
}


@pytest.mark.postgres
@pytest.mark.parametrize("race", list(RACES))
def test_plain_write_racing_an_apply_cannot_slip_into_the_archive(pg_dsn, race):
    """While an apply that archives 2024/2025 is inside its transaction, another session writes a row of
    that year: it waits for the guarded run, then is refused; the archive holds exactly the applied rows
    and the verification re-plan has nothing to change and nothing refused."""
    import threading

    from vespa_lib import importer

    target = connect("postgres", pg_dsn)
    migrate(target)
    apply(target, desired(students(OLD, EST_A, 3), cycles=(1, 2)), "r1")
    want = desired(students(OLD, EST_A, 3, name="Renamed"), cycles=(1, 2))  # students change, scores do not
    seen: dict = {}

    def plain_writer():
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            try:
                other.execute(RACES[race])
                seen["writer"] = "written"
            except psycopg.Error as exc:
                seen["writer"] = str(exc)

    writer = threading.Thread(target=plain_writer)

    def inside_the_apply(connection, dialect, years, establishment_ids):  # the guard's open transaction
        writer.start()
        writer.join(timeout=3)
        seen["waited"] = writer.is_alive()

    try:
        apply(target, want, "archive", archive_years=[OLD], recompute=inside_the_apply)
    finally:
        if writer.ident is not None:
            writer.join(timeout=30)
    assert seen["waited"], f"the plain write did not wait for the guarded run: {seen.get('writer')}"
    assert "VESPA archive protection" in seen["writer"]
    plan, frame = importer.verify_frame(target, want)
    assert int(frame["refused"].sum()) == 0 and plan.is_empty
    assert scalar(target, "SELECT count(*) FROM vespa_scores WHERE academic_year = ? AND vision = 1", [OLD]) == 0
    target.close()


def test_verify_fails_on_a_refused_row(con):
    """A row of an archived year that differs from the source cannot be written, so the target does not
    hold the source: the verification is not empty (docs/ARCHITECTURE.md, “Guarded writes” means "the target holds every row")."""
    apply(con, desired(students(OLD, EST_A, 2)), "r1", archive_years=[OLD])
    plan = verify(con, desired(students(OLD, EST_A, 2), score=7))
    assert plan.counts()["vespa_scores"][OLD]["refused"] == 2
    assert not plan.is_empty
    assert verify(con, desired(students(OLD, EST_A, 2))).is_empty
