"""Archive protection inside PostgreSQL (docs/ARCHITECTURE.md, “Guarded writes”): the old sync cannot rewrite history.

After the guard archives 2024/2025, plain SQL from a SEPARATE connection replays what the old sync
did (F2 upsert, plain year rewrite, score update, F9 delete-all): each is refused and nothing changes;
the same statements on 2025/2026 rows still work.
"""

from __future__ import annotations

import psycopg
import pytest
from test_plan import CUR, EST_A, OLD, apply, connect, desired, migrate, students

from vespa_lib.write.guard import table_checksums

pytestmark = pytest.mark.postgres
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
        "national_statistics"]
DIST = "'[0,0,0,0,1,0,0,0,0,0]'"


@pytest.fixture
def archived(pg_dsn):
    """OLD imported and archived through the guard, CUR open; both with national statistics."""
    con = connect("postgres", pg_dsn)
    migrate(con)
    apply(con, desired(students(CUR, EST_A, 2), years=[CUR]), "cur")

    def stats(connection, dialect, years, establishment_ids):  # a stand-in for vespa_lib.rules.stats
        for year in years:
            connection.execute("INSERT INTO national_statistics (cycle, academic_year, element, mean, count, "
                                f"distribution) VALUES (1, %s, 'vision', 5, 2, {DIST})", [year])

    apply(con, desired(students(OLD, EST_A, 2)), "old", archive_years=[OLD], recompute=stats)
    con.execute("INSERT INTO national_statistics (cycle, academic_year, element, mean, count, distribution) "
                f"VALUES (1, '{CUR}', 'vision', 5, 2, {DIST})")
    plain = psycopg.connect(pg_dsn, autocommit=True)
    yield con, plain
    plain.close()
    con.close()


EMAIL0 = students(OLD, EST_A, 1)[0]["email"]
EMAIL1 = students(OLD, EST_A, 2)[1]["email"]
PROTECTED = (psycopg.errors.InsufficientPrivilege, "VESPA archive protection")
REFUSED = [
    ("f2_upsert", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', '{EMAIL0}', '{OLD}') "
                  "ON CONFLICT (email, academic_year) DO UPDATE SET academic_year = '2026/2027'", PROTECTED),
    # statement triggers run after the statement's rows: a rewrite that collides with a current-year
    # row is stopped by the unique key first; either way nothing of the statement stays written
    ("f2_upsert_colliding", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', '{EMAIL0}', "
                            f"'{OLD}') ON CONFLICT (email, academic_year) DO UPDATE SET academic_year = '{CUR}'",
     (psycopg.errors.UniqueViolation, "students_email_academic_year_key")),
    ("f2_year_rewrite", f"UPDATE students SET academic_year = '2026/2027' WHERE email = '{EMAIL0}' "
                        f"AND academic_year = '{OLD}'", PROTECTED),
    ("score_update", f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{OLD}'", PROTECTED),
    ("score_update_both_years", "UPDATE vespa_scores SET vision = 1", PROTECTED),
    ("f9_delete_all", "DELETE FROM national_statistics", PROTECTED),
    ("truncate", "TRUNCATE national_statistics", PROTECTED),
    ("unarchive", f"UPDATE academic_years SET is_archived = false WHERE academic_year = '{OLD}'", PROTECTED),
    ("unmark_row", f"UPDATE students SET is_archived = false WHERE email = '{EMAIL1}' AND academic_year = '{OLD}'",
     PROTECTED),
    ("insert_into_archive", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', 'new@x.uk', '{OLD}')",
     PROTECTED),
    ("insert_select_many", f"INSERT INTO question_responses (student_id, academic_year, cycle, question_id, "
                           f"response_value) SELECT student_id, '{OLD}', cycle, question_id || 'x', 1 "
                           "FROM question_responses", PROTECTED),
]


@pytest.mark.parametrize(("name", "sql", "refusal"), REFUSED, ids=[r[0] for r in REFUSED])
def test_old_sync_statements_are_refused(archived, name, sql, refusal):
    con, plain = archived
    before = table_checksums(con, DATA)
    error, message = refusal
    with pytest.raises(error, match=message):
        plain.execute(sql)
    assert table_checksums(con, DATA) == before


@pytest.mark.parametrize(("name", "sql", "changed"), [
    ("upsert_current", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', 'n@x.uk', '{CUR}') "
                       "ON CONFLICT (email, academic_year) DO UPDATE SET name = 'x'", "students"),
    ("score_update_current", f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{CUR}'", "vespa_scores"),
    ("delete_current_stats", f"DELETE FROM national_statistics WHERE academic_year = '{CUR}'", "national_statistics"),
])
def test_current_year_still_writable(archived, name, sql, changed):
    con, plain = archived
    before = table_checksums(con, DATA)
    plain.execute(sql)
    after = table_checksums(con, DATA)
    assert after[changed] != before[changed]
    assert {t for t in DATA if after[t] != before[t]} == {changed}


def test_made_up_run_id_is_still_refused(archived):
    con, plain = archived
    with plain.transaction():
        plain.execute("SELECT set_config('vespa.run_id', 'old', true)")  # a real, committed run id
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="archived year 2024/2025"):
            plain.execute(f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{OLD}'")
    with plain.transaction():
        plain.execute("SELECT set_config('vespa.run_id', 'made-up-run', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="archived year 2024/2025"):
            plain.execute(f"DELETE FROM national_statistics WHERE academic_year = '{OLD}'")


def test_rows_of_the_archived_year_are_marked(archived):
    con, _ = archived
    for table in ("students", "vespa_scores", "question_responses", "national_statistics"):
        unmarked = con.execute(f"SELECT count(*) FROM {table} WHERE academic_year = %s AND NOT is_archived",
                               [OLD]).fetchone()[0]
        marked = con.execute(f"SELECT count(*) FROM {table} WHERE academic_year = %s AND is_archived",
                             [OLD]).fetchone()[0]
        assert (unmarked, marked > 0) == (0, True), table
    assert con.execute("SELECT is_archived FROM academic_years WHERE academic_year = %s", [OLD]).fetchone()[0]


def test_guarded_run_with_grant_may_write_the_archived_year(archived):
    con, _ = archived
    result = apply(con, desired(students(OLD, EST_A, 2), score=7), "fix", archived_write_years=[OLD])
    assert result.applied["applied"]["vespa_scores"]["update"] == 2
