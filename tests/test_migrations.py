"""Migrations on a database the workbook did not create (F2)."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import psycopg
import pytest
from test_plan import EST_A, OLD, desired, seed, students

from vespa_lib.write import protect
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.migrations import MIGRATIONS, f2_offending_keys, pending, recorded
from vespa_lib.write.plan import plan_changes


@pytest.fixture(params=["duckdb", "postgres"])
def legacy(request, duckdb_path):
    """A production-like database: docs/DOMAIN.md, “Production schema” tables only, with the F2 key unique(email)."""
    if request.param == "postgres":
        con = psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True)
    else:
        con = duckdb.connect(str(duckdb_path))
    seed(con, workbook=False, legacy=True)
    yield con
    con.close()


def _expected(con) -> list[int]:
    return [1, 2, 3, 4, 6] if isinstance(con, psycopg.Connection) else [1, 2, 3]


def test_pending_lists_every_migration_and_the_f2_key(legacy):
    assert [m.version for m in pending(legacy)] == _expected(legacy)
    assert [k["columns"] for k in f2_offending_keys(legacy)] == [["email"]]
    assert "unique(email, academic_year)" in next(m.name for m in MIGRATIONS if m.version == 3)


def test_no_data_change_is_planned_until_migrations_are_applied(legacy):
    plan = plan_changes(legacy, desired(students(OLD, EST_A, 2)))
    assert plan.counts() == {} and plan.is_empty is False
    assert plan.blocked.startswith("apply migrations first") and "F2" in plan.blocked
    assert [m["version"] for m in plan.migrations] == _expected(legacy)
    assert legacy.execute("SELECT count(*) FROM students").fetchone()[0] == 0


def test_apply_through_the_guard_records_checksums_and_is_idempotent(legacy):
    want = desired(students(OLD, EST_A, 2))
    plan = plan_changes(legacy, want)
    result = apply_plan(legacy, want, approve=plan.fingerprint, run_id="m1", runbook="migrate", actor="a",
                        recompute=False)
    assert [m["version"] for m in result.migrations] == _expected(legacy)
    assert pending(legacy) == [] and f2_offending_keys(legacy) == []
    rows = recorded(legacy)
    assert [(r["version"], r["run_id"]) for r in rows] == [(v, "m1") for v in _expected(legacy)]
    assert all(r["checksum"] == next(m.checksum for m in MIGRATIONS if m.version == r["version"]) for r in rows)
    again = plan_changes(legacy, want)
    assert again.migrations == [] and again.counts()["students"][OLD]["insert"] == 2
    assert recorded(legacy) == rows  # re-planning/applying migrations is a no-op


def test_re_enrolled_student_gets_its_own_row_after_f2_migration(legacy):
    want = desired(students(OLD, EST_A, 1))
    plan = plan_changes(legacy, want)
    apply_plan(legacy, want, approve=plan.fingerprint, run_id="m1", runbook="m", actor="a", recompute=False)
    for year, run_id in ((OLD, "r1"), ("2025/2026", "r2")):
        rows = students(year, EST_A, 1)
        want = desired(rows, years=[year])
        plan = plan_changes(legacy, want)
        apply_plan(legacy, want, approve=plan.fingerprint, run_id=run_id, runbook="m", actor="a", recompute=False)
    assert legacy.execute("SELECT count(*) FROM students").fetchone()[0] == 2


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_checksum_covers_the_definition(version):
    m = next(m for m in MIGRATIONS if m.version == version)
    assert replace(m, definition=m.definition + " ").checksum != m.checksum
    assert len({x.checksum for x in MIGRATIONS}) == len(MIGRATIONS)


# Migration 4's first version: one plpgsql call per row (~60 µs a row, docs/ARCHITECTURE.md, “Quality bars”), as it was installed.
LEGACY_ROW_TRIGGERS = """
CREATE FUNCTION vespa_ops.vespa_archive_row_guard() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.is_archived THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = 'VESPA archive protection: legacy';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $fn$;
""" + "".join(f"DROP TRIGGER IF EXISTS vespa_archive_row_{t} ON {t};\n"
              f"CREATE TRIGGER vespa_archive_row_{t} BEFORE INSERT OR UPDATE OR DELETE ON {t} "
              "FOR EACH ROW EXECUTE FUNCTION vespa_ops.vespa_archive_row_guard();\n" for t in protect.PROTECTED_TABLES)


def _trigger_levels(con) -> dict[str, str]:
    rows = con.execute("SELECT tgname, CASE WHEN tgtype & 1 = 1 THEN 'row' ELSE 'statement' END FROM pg_trigger "
                       "WHERE NOT tgisinternal AND starts_with(tgname, 'vespa_archive_')").fetchall()
    return dict(rows)


def test_row_triggers_of_the_first_version_are_replaced_by_migration_5(pg_dsn):
    con = psycopg.connect(pg_dsn, autocommit=True)
    seed(con)
    want = desired([])
    plan = plan_changes(con, want)
    apply_plan(con, want, approve=plan.fingerprint, run_id="m1", runbook="m", actor="a", recompute=False)
    assert set(_trigger_levels(con).values()) == {"statement"}
    con.execute(LEGACY_ROW_TRIGGERS)
    assert [m.version for m in pending(con)] == [5, 6]  # 5 re-installs version 1, which 6 replaces
    plan = plan_changes(con, want)
    assert [m["version"] for m in plan.migrations] == [5, 6] and "apply migrations first" in plan.blocked
    apply_plan(con, want, approve=plan.fingerprint, run_id="m5", runbook="m", actor="a", recompute=False)
    assert pending(con) == []
    assert _trigger_levels(con) == dict.fromkeys(protect.TRIGGER_NAMES, "statement")
    assert con.execute("SELECT count(*) FROM pg_proc WHERE proname = 'vespa_archive_row_guard'").fetchone()[0] == 0
    assert [(r["version"], r["run_id"]) for r in recorded(con)][-2:] == [(5, "m5"), (6, "m5")]
    con.close()
