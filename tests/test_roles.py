"""Archive protection with the roles production uses (docs/ARCHITECTURE.md "Archive protection").

Three non-superuser roles the server superuser creates for this module's own database:

* ``workbook``: owns the tables and ``vespa_ops``; migrates and applies through the guard (the fixture
  does both as this role), and here also writes plain SQL like any other session;
* ``app``: every right on the public tables (TRUNCATE included) and none on ``vespa_ops``, like
  Supabase's ``service_role``;
* ``staff``: SELECT/INSERT/UPDATE/DELETE on the public tables, nothing on ``vespa_ops``, like
  ``authenticated``.

Every statement the old sync scripts could run is tried by each role on the archived year
(2024/2025) and on the current year (2025/2026) in every label spelling the workbook reads as that
year (``2024-25`` means ``2024/2025``), and with labels that are no year at all. Archived: refused
by the protection (or, on ``students``, whose production check allows only ``YYYY/YYYY``, by that
check first); current: allowed; no year: refused. Each statement runs in a transaction that is
rolled back, so the cases do not depend on each other; a last test shows the data unchanged.
"""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_plan import CUR, EST_A, OLD, apply, desired, migrate, seed, students

from vespa_lib.sandbox.localpg import create_database_on, drop_database_on, dsn_with_dbname
from vespa_lib.write.guard import table_checksums

pytestmark = pytest.mark.postgres
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
        "national_statistics"]
DIST = "'[0,0,0,0,1,0,0,0,0,0]'"
SPELLINGS = {
    "archived": (OLD, "2024-2025", "2024/25", "2024-25", " 2024 / 2025 "),
    "current": (CUR, "2025-2026", "2025/26", "2025-26", " 2025 / 2026 "),
    "no_year": ("junk", "2024/2026", "2024", ""),
}
CANONICAL = {"archived": OLD, "current": CUR}
ROLES = ("workbook", "app", "staff")
PROTECTION = "VESPA archive protection"

# The old sync's statements; {label} is the label as written, {year} the canonical year of its kind.
OPERATIONS = {
    "upsert_student": "INSERT INTO students (knack_id, email, academic_year) VALUES ('k', 'new@x.school.uk', {label}) "
                      "ON CONFLICT (email, academic_year) DO UPDATE SET name = 'x'",
    "insert_score": "INSERT INTO vespa_scores (student_id, cycle, vision, academic_year) SELECT id, 3, 5, {label} "
                    "FROM students WHERE academic_year = {year} ORDER BY email LIMIT 1",
    "insert_answer": "INSERT INTO question_responses (student_id, cycle, question_id, response_value, academic_year) "
                     "SELECT id, 3, 'qx', 3, {label} FROM students WHERE academic_year = {year} ORDER BY email LIMIT 1",
    "update_scores": "UPDATE vespa_scores SET vision = 1 WHERE academic_year = {label}",
    "delete_scores": "DELETE FROM vespa_scores WHERE academic_year = {label}",
    "relabel_current_scores": f"UPDATE vespa_scores SET academic_year = {{label}} WHERE academic_year = '{CUR}'",
    "upsert_national": "INSERT INTO national_statistics (cycle, academic_year, element, mean, count, distribution) "
                       f"VALUES (2, {{label}}, 'effort', 5, 2, {DIST}) ON CONFLICT (cycle, academic_year, element) "
                       "DO UPDATE SET mean = 6",
    "upsert_school": "INSERT INTO school_statistics (establishment_id, cycle, academic_year, element, mean, count, "
                     f"distribution) VALUES ('{EST_A}', 2, {{label}}, 'effort', 5, 2, {DIST}) ON CONFLICT "
                     "(establishment_id, cycle, academic_year, element) DO UPDATE SET mean = 6",
    "upsert_academic_year": "INSERT INTO academic_years (academic_year, is_current) VALUES ({label}, false) "
                            "ON CONFLICT (academic_year) DO UPDATE SET is_current = academic_years.is_current",
}
WHERE_ONLY = {"update_scores", "delete_scores"}  # the label selects rows: no year at all selects none
WHOLE_TABLE = {  # statements without a year: they touch every year, the archived one included
    "delete_all_national": "DELETE FROM national_statistics",
    "update_all_scores": "UPDATE vespa_scores SET vision = 2",
    "truncate_answers": "TRUNCATE question_responses",
}


def _cases():
    for role in ROLES:
        for op in OPERATIONS:
            for kind, labels in SPELLINGS.items():
                for label in labels:
                    if kind == "no_year" and op in WHERE_ONLY:
                        continue
                    yield pytest.param(role, op, kind, label, id=f"{role}-{op}-{kind}-{label.strip() or 'empty'}")


def expected(op: str, kind: str, label: str) -> str:
    """``allowed``, ``refused`` (the protection), ``check`` (the production year check on students)."""
    if op == "upsert_student" and not re.fullmatch(r"\d{4}/\d{4}", label):
        return "check"
    return "allowed" if kind == "current" else "refused"


def _as(dsn: str, role: str) -> str:
    return make_conninfo(**{**conninfo_to_dict(dsn), "user": role})


@pytest.fixture(scope="module")
def world(pg_server):
    """A database owned by the non-superuser ``workbook`` role: migrated, 2025/2026 written, 2024/2025
    imported and archived through the guard, legacy rows in every spelling of both years; the other
    roles granted what production grants them."""
    tag = uuid.uuid4().hex[:8]
    names = {r: f"vespa_{r}_{tag}" for r in ROLES}
    db = f"vespa_roles_{tag}"
    create_database_on(pg_server, db)
    admin_dsn = dsn_with_dbname(pg_server, db)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db),
                                                                        sql.Identifier(names["workbook"])))
        admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(names["workbook"])))
    dsns = {r: _as(admin_dsn, n) for r, n in names.items()}
    con = psycopg.connect(dsns["workbook"], autocommit=True)
    try:
        _build(con, names)
        yield {"dsns": dsns, "names": names, "workbook": con, "before": table_checksums(con, DATA)}
    finally:
        con.close()
        drop_database_on(pg_server, db)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            for name in names.values():
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _build(con, names: dict[str, str]) -> None:
    seed(con, workbook=False)  # production-shaped: only the production year check (on students)
    migrate(con)
    apply(con, desired(students(CUR, EST_A, 2), years=[CUR]), "cur")
    apply(con, desired(students(OLD, EST_A, 2)), "old")
    for kind, year in CANONICAL.items():  # rows the old scripts wrote, in every spelling of the year
        for i, label in enumerate(SPELLINGS[kind][1:]):
            con.execute("INSERT INTO vespa_scores (student_id, cycle, vision, academic_year) SELECT id, 2, 5, %s "
                        "FROM students WHERE academic_year = %s ORDER BY email OFFSET %s LIMIT 1",
                        [label, year, i % 2])
        con.execute("INSERT INTO national_statistics (cycle, academic_year, element, mean, count, distribution) "
                    f"VALUES (1, %s, 'vision', 5, 2, {DIST})", [year])
    apply(con, desired(students(OLD, EST_A, 2)), "archive", archive_years=[OLD])
    app, staff = sql.Identifier(names["app"]), sql.Identifier(names["staff"])
    con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}, {}").format(app, staff))
    con.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(app))
    con.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(staff))
    con.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}, {}").format(app, staff))


@pytest.fixture(scope="module")
def sessions(world):
    out = {r: psycopg.connect(world["dsns"][r]) for r in ROLES}
    yield out
    for c in out.values():
        c.close()


def attempt(con, statement: str) -> tuple[str, str]:
    """Run ``statement`` in a transaction that is always rolled back: (outcome, detail)."""
    try:
        cur = con.execute(statement)
        return ("allowed", f"{cur.rowcount} row(s)") if cur.rowcount > 0 else ("no rows", "0 rows")
    except psycopg.errors.CheckViolation as exc:
        return "check", str(exc).splitlines()[0]
    except psycopg.Error as exc:
        first = str(exc).splitlines()[0]
        return ("refused" if PROTECTION in first else "error"), first
    finally:
        con.rollback()


@pytest.mark.parametrize(("role", "op", "kind", "label"), list(_cases()))
def test_old_sync_statement(sessions, role, op, kind, label):
    statement = OPERATIONS[op].format(label=_lit(label), year=_lit(CANONICAL.get(kind, CUR)))
    outcome, detail = attempt(sessions[role], statement)
    print(f"MATRIX|{role}|{op}|{kind}|{label!r}|{outcome}|{detail}")
    assert outcome == expected(op, kind, label), detail
    if outcome == "refused" and kind == "archived":
        assert f"archived year {OLD}" in detail
    if outcome == "refused" and kind == "no_year":
        assert "is not an academic year" in detail


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", list(WHOLE_TABLE))
def test_whole_table_statement_is_refused_while_a_year_is_archived(sessions, role, op):
    outcome, detail = attempt(sessions[role], WHOLE_TABLE[op])
    print(f"MATRIX|{role}|{op}|any|-|{outcome}|{detail}")
    if role == "staff" and op.startswith("truncate"):
        assert outcome == "error" and "permission denied for table" in detail  # staff has no TRUNCATE right
    else:
        assert outcome == "refused", detail


def test_roles_without_vespa_ops_rights_cannot_read_or_forge_the_ledger(sessions):
    for role in ("app", "staff"):
        con = sessions[role]
        for statement in ("SELECT count(*) FROM vespa_ops.ledger",
                          f"INSERT INTO vespa_ops.archive_grants (run_id, academic_year, granted_by) "
                          f"VALUES ('x', '{OLD}', 'me')"):
            outcome, detail = attempt(con, statement)
            assert outcome == "error" and "permission denied for schema vespa_ops" in detail, (role, detail)
        with con.transaction(force_rollback=True):  # a committed run id named by a session is no grant
            con.execute("SELECT set_config('vespa.run_id', 'archive', true)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"archived year {OLD}"):
                con.execute(f"UPDATE vespa_scores SET vision = 1 WHERE academic_year = '{OLD}'")


def test_trigger_functions_run_as_their_owner_with_a_fixed_search_path(world):
    rows = world["workbook"].execute(
        "SELECT p.proname, p.prosecdef, p.proconfig, pg_get_userbyid(p.proowner), "
        "has_function_privilege('public', p.oid, 'EXECUTE') FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'vespa_ops' ORDER BY 1").fetchall()
    assert rows, "no trigger functions installed"
    for name, definer, config, owner, public_execute in rows:
        assert owner == world["names"]["workbook"], name
        assert definer or name == "vespa_canonical_year", name  # a pure function reads nothing
        assert any(c.startswith("search_path=") for c in config or []), name
        assert not public_execute, name
    assert not world["workbook"].execute("SELECT has_schema_privilege('public', 'vespa_ops', 'USAGE')").fetchone()[0]


def test_nothing_was_changed_by_the_matrix(world):
    assert table_checksums(world["workbook"], DATA) == world["before"]
