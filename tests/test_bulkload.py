"""Bulk-load mode (vespa_lib.write.bulkload): keys dropped and rebuilt inside the guard's transaction.

Real PostgreSQL. What must hold: the rows written equal the ordinary path's; every key, foreign key
and index comes back with its exact name and definition, also ones the workbook did not create; a
violation found while rebuilding rolls everything back; keys other tables depend on, and the replica
identity of a published table, are never dropped. Crash safety with the keys dropped is in
tests/test_crash.py.
"""

from __future__ import annotations

import pytest
from test_plan import EST_A, OLD, QUESTIONS, apply, connect, desired, migrate, students

from vespa_lib.errors import ValidationFailed
from vespa_lib.sandbox.localpg import create_database_on, drop_database_on, dsn_with_dbname
from vespa_lib.write import bulkload
from vespa_lib.write.guard import bulk_tables, table_checksums
from vespa_lib.write.plan import plan_changes

pytestmark = pytest.mark.postgres

_DEFINITIONS = """
SELECT r.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
WHERE r.relnamespace = 'public'::regnamespace
UNION ALL SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2, 3
"""
CONTENT = ["students", "vespa_scores", "question_responses"]
# what a production database may have that the workbook never made (docs/DOMAIN.md, “Production schema”: not ours)
FOREIGN_INDEX = "CREATE INDEX qr_by_question_local ON question_responses (question_id, response_value) " \
                "WHERE response_value IS NOT NULL"


def _definitions(con) -> list[tuple]:
    return con.execute(_DEFINITIONS).fetchall()


def _content(con) -> dict:
    """Rows without the generated ids and timestamps (the student by email), comparable across databases."""
    out = {}
    for table in CONTENT:
        sid = "t.id" if table == "students" else "t.student_id"
        out[table] = con.execute(
            "SELECT count(*), md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT concat_ws('|', s.email, "
            "CAST(to_jsonb(t) - 'id' - 'student_id' - 'created_at' - 'updated_at' AS TEXT)) AS x "
            f"FROM {table} t JOIN students s ON s.id = {sid}) z").fetchone()
    return out


@pytest.fixture
def pg(pg_dsn):
    con = connect("postgres", pg_dsn)
    migrate(con)
    con.execute(FOREIGN_INDEX)
    yield con
    con.close()


@pytest.fixture
def lowered(monkeypatch):
    """Bulk mode for any load (the realistic-scale thresholds would need a million rows here)."""
    monkeypatch.setattr(bulkload, "MIN_ROWS", 1)
    monkeypatch.setattr(bulkload, "MIN_SHARE", 0.0)


@pytest.mark.parametrize(("inserts", "before", "bulk"), [
    (99_999, 0, False),           # too few rows, however empty the table
    (100_000, 0, True),
    (100_000, 500_000, True),     # exactly the share
    (100_000, 500_001, False),    # a small top-up of a big table: ordinary path
    (1_000_000, 1_100_000, True),  # the realistic archive import
])
def test_thresholds(inserts, before, bulk):
    assert bulkload.is_bulk(inserts, before) is bulk


def test_bulk_apply_writes_what_the_ordinary_path_writes(pg, pg_server, lowered):
    earlier, want = desired(students(OLD, EST_A, 10), cycles=(1,)), desired(students(OLD, EST_A, 40), cycles=(1, 2))
    apply(pg, earlier, "earlier")  # rows that exist, unarchived, before the archiving load
    before = _definitions(pg)
    result = apply(pg, want, "bulk", archive_years=[OLD])
    assert result.applied["bulk_tables"] == ["question_responses", "students", "vespa_scores"]
    assert result.applied["marked"]["question_responses"] == 10 * len(QUESTIONS)  # marked in the bulk window
    assert pg.execute("SELECT count(*) FROM question_responses WHERE NOT is_archived").fetchone()[0] == 0
    assert _definitions(pg) == before  # same names, same definitions, the foreign index included
    assert plan_changes(pg, want).is_empty
    create_database_on(pg_server, "ordinary_twin")
    try:
        twin = connect("postgres", dsn_with_dbname(pg_server, "ordinary_twin"))
        migrate(twin)
        twin.execute(FOREIGN_INDEX)
        bulkload.MIN_ROWS = 10**12  # the monkeypatch restores it
        apply(twin, earlier, "earlier")
        assert apply(twin, want, "ordinary", archive_years=[OLD]).applied["bulk_tables"] == []
        assert _content(twin) == _content(pg)
        assert _definitions(twin) == before
        twin.close()
    finally:
        drop_database_on(pg_server, "ordinary_twin")


def test_small_loads_keep_their_keys(pg):
    want = desired(students(OLD, EST_A, 5))
    plan = plan_changes(pg, want)
    assert bulk_tables(pg, plan) == []
    assert apply(pg, want, "small").applied["bulk_tables"] == []


@pytest.mark.parametrize(("bad_row", "message"), [
    ("SELECT student_id, cycle, question_id, response_value, academic_year FROM question_responses LIMIT 1",
     "question_responses_student_cycle_year_question_key"),
    ("SELECT gen_random_uuid(), 1, 'q1', 3, '2024/2025'", "question_responses_student_id_fkey"),
])
def test_a_violation_found_while_rebuilding_rolls_everything_back(pg, bad_row, message):
    apply(pg, desired(students(OLD, EST_A, 3)), "seed")
    before, sums = _definitions(pg), table_checksums(pg, CONTENT)
    with pytest.raises(ValidationFailed, match=message) as caught, pg.transaction():
        pg.execute("SELECT set_config('vespa.allowed_years', '2024/2025', true)")
        with bulkload.keys_rebuilt(pg, "question_responses"):
            pg.execute("INSERT INTO question_responses (student_id, cycle, question_id, response_value, "
                       f"academic_year) {bad_row}")
    assert "rolled back" in str(caught.value)
    assert _definitions(pg) == before
    assert table_checksums(pg, CONTENT) == sums


def test_keys_others_depend_on_and_replica_identity_are_kept(pg):
    found = bulkload.definitions(pg, "students")
    assert "students_pkey" not in found.names  # scores and answers reference it
    assert "students_email_academic_year_key" in found.names
    answers = bulkload.definitions(pg, "question_responses")
    assert {"question_responses_pkey", "question_responses_student_id_fkey", "qr_by_question_local"} <= \
        set(answers.names)
    pg.execute("CREATE PUBLICATION vespa_test_pub FOR TABLE question_responses")
    try:
        published = bulkload.definitions(pg, "question_responses")
        assert "question_responses_pkey" not in published.names  # replica identity: updates must stay possible
        assert "question_responses_student_cycle_year_question_key" in published.names
    finally:
        pg.execute("DROP PUBLICATION vespa_test_pub")
