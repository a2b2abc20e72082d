"""Archive protection inside PostgreSQL (SPEC.md §7; issue 4 item 3): the old sync cannot rewrite history.

After the guard archives 2024/2025, plain SQL from a SEPARATE connection replays what the old sync
did (F2 upsert, plain year rewrite, score update, F9 delete-all): each is refused and nothing changes;
the same statements on 2025/2026 rows still work.
"""

from __future__ import annotations

import psycopg
import pytest
from test_plan import CUR, EST_A, OLD, apply, connect, desired, migrate, students

from vespa_lib.guard import table_checksums

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

    def stats(connection, dialect, years, establishment_ids):  # a stand-in for vespa_lib.stats
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
REFUSED = [
    ("f2_upsert", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', '{EMAIL0}', '{OLD}') "
                  f"ON CONFLICT (email, academic_year) DO UPDATE SET academic_year = '{CUR}_'"),
    ("f2_year_rewrite", f"UPDATE students SET academic_year = '2026/2027' WHERE email = '{EMAIL0}' "
                        f"AND academic_year = '{OLD}'"),
    ("score_update", f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{OLD}'"),
    ("f9_delete_all", "DELETE FROM national_statistics"),
    ("truncate", "TRUNCATE national_statistics"),
    ("unarchive", f"UPDATE academic_years SET is_archived = false WHERE academic_year = '{OLD}'"),
    ("insert_into_archive", f"INSERT INTO students (knack_id, email, academic_year) VALUES ('k', 'new@x.uk', '{OLD}')"),
]


@pytest.mark.parametrize(("name", "sql"), REFUSED, ids=[r[0] for r in REFUSED])
def test_old_sync_statements_are_refused(archived, name, sql):
    con, plain = archived
    before = table_checksums(con, DATA)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="VESPA archive protection"):
        plain.execute(sql.replace(f"'{CUR}_'", f"'{CUR}'"))
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
