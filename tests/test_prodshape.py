"""The production-shaped PostgreSQL fixture (vespa_lib.sandbox.prodshape) has production's shape, read from the
catalog: a non-superuser owner role, decimal(4,2) statistics, the student key of its variant, row level
security, production's extra columns, and the damaged history with the old system's current year."""

from __future__ import annotations

import psycopg
import pytest

from vespa_lib.sandbox import prodshape

pytestmark = pytest.mark.postgres


def _one(dsn: str, sql: str, params: list | None = None):
    with psycopg.connect(dsn, autocommit=True) as con:
        return con.execute(sql, params).fetchall()


def _numeric(dsn: str, table: str) -> dict[str, tuple[int, int]]:
    rows = _one(dsn, "SELECT column_name, numeric_precision, numeric_scale FROM information_schema.columns "
                     "WHERE table_schema = 'public' AND table_name = %s AND data_type = 'numeric'", [table])
    return {c: (p, s) for c, p, s in rows}


def _student_keys(dsn: str) -> list[list[str]]:
    rows = _one(dsn, "SELECT ARRAY(SELECT a.attname FROM unnest(k.conkey) u(n) JOIN pg_attribute a "
                     "ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY a.attname) FROM pg_constraint k "
                     "WHERE k.conrelid = 'public.students'::regclass AND k.contype = 'u'")
    return sorted(list(r[0]) for r in rows)


def test_the_owner_role_is_not_a_superuser_and_owns_every_table(prod_pg_legacy):
    db = prod_pg_legacy
    (who, superuser, createdb, bypass), = _one(db.owner_dsn, "SELECT current_user, rolsuper, rolcreatedb, rolbypassrls "
                                                           "FROM pg_roles WHERE rolname = current_user")
    assert (who, superuser, createdb, bypass) == (prodshape.OWNER_ROLE, False, False, False)
    owners = dict(_one(db.admin_dsn, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"))
    assert owners == {t: prodshape.OWNER_ROLE for t in prodshape.TABLES}
    (db_owner_super, may_create), = _one(db.owner_dsn, "SELECT r.rolsuper, has_database_privilege(current_database(), "
                                                       "'CREATE') FROM pg_database d JOIN pg_roles r ON r.oid = "
                                                       "d.datdba WHERE d.datname = current_database()")
    assert db_owner_super and may_create  # a database the workbook did not create, but may add a schema to


def test_statistics_are_decimal_4_2_and_production_extra_columns_exist(prod_pg_legacy):
    dsn = prod_pg_legacy.admin_dsn
    national, school = _numeric(dsn, "national_statistics"), _numeric(dsn, "school_statistics")
    assert national["mean"] == national["std_dev"] == school["mean"] == school["std_dev"] == (4, 2)
    assert school["average"] == (4, 2) and national["skewness"] == (6, 3) and national["eri_score"] == (3, 2)
    extras = _one(dsn, "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = "
                       "'public' AND column_name IN ('student_email', 'average', 'additional_stats', 'trust_id')")
    assert sorted(r[0] for r in extras) == ["establishments.trust_id", "national_statistics.additional_stats",
                                            "school_statistics.average", "vespa_scores.student_email"]
    (serial,), = _one(dsn, "SELECT pg_get_serial_sequence('academic_years', 'id') IS NOT NULL")
    assert serial
    assert not _one(dsn, "SELECT 1 FROM information_schema.columns WHERE column_name = 'is_archived'")


def test_row_level_security_is_enabled_with_policies(prod_pg_legacy):
    dsn = prod_pg_legacy.admin_dsn
    rls = dict(_one(dsn, "SELECT relname, relrowsecurity FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                         "AND relkind = 'r'"))
    assert rls == {t: True for t in prodshape.TABLES}
    policies = _one(dsn, "SELECT tablename, count(*) FROM pg_policies WHERE schemaname = 'public' GROUP BY 1")
    assert dict(policies) == {t: 2 for t in prodshape.TABLES}


def test_legacy_variant_has_unique_email_and_the_other_the_year_key(prod_pg_legacy, prod_pg_yearkey):
    assert _student_keys(prod_pg_legacy.admin_dsn) == [["email"]]
    assert _student_keys(prod_pg_yearkey.admin_dsn) == [["academic_year", "email"]]


def test_data_is_the_damaged_history_and_the_old_systems_current_year(prod_pg_legacy):
    dsn = prod_pg_legacy.owner_dsn
    per_year = dict(_one(dsn, "SELECT academic_year, count(*) FROM vespa_scores GROUP BY 1"))
    assert per_year["2025/2026"] > 0 and per_year["2024/2025"] > 0 and per_year.get("2025-26", 0) > 0  # F11
    assert [r[0] for r in _one(dsn, "SELECT DISTINCT academic_year FROM national_statistics")] == ["2025/2026"]  # F9
    (rounded,), = _one(dsn, "SELECT bool_and(mean = round(mean, 2)) AND count(*) > 0 FROM national_statistics")
    assert rounded
    (emails, average, extra), = _one(dsn, "SELECT (SELECT count(*) FROM vespa_scores WHERE student_email IS NULL), "
                                          "(SELECT count(*) FROM school_statistics WHERE average IS DISTINCT FROM mean), "
                                          "(SELECT count(*) FROM national_statistics WHERE additional_stats IS NULL)")
    assert (emails, average, extra) == (0, 0, 0)
    (ledger,), = _one(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'vespa_ops'")
    assert ledger == 0  # nothing of the workbook yet
