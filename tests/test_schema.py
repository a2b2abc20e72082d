"""vespa_lib.write.schema: rendering, creation on DuckDB and PostgreSQL, and every key and check enforced."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg.types.json import Jsonb

from vespa_lib.errors import SchemaError
from vespa_lib.sandbox.localpg import create_database_on, drop_database_on, dsn_with_dbname
from vespa_lib.write import schema

DIALECTS = [pytest.param("duckdb", id="duckdb"),
            pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]
TABLES = {t.name: t for t in schema.all_tables()}


def _open(dialect: str, request: pytest.FixtureRequest, tmp_path: Path):
    """A connection to a fresh empty database of ``dialect``."""
    if dialect == "duckdb":
        return duckdb.connect(str(tmp_path / "t.duckdb"))
    return psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True)


@pytest.fixture(params=DIALECTS)
def con(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    connection = _open(request.param, request, tmp_path)
    yield connection
    connection.close()


# --- rows ----------------------------------------------------------------------------------------

E1, E2, S1, S2, V1, V2, Q1, Q2, SS1, SS2, NS1, NS2, QQ1, QQ2 = (uuid.UUID(int=i) for i in range(1, 15))
MISSING = uuid.UUID(int=999)
Y, D10, D9 = "2024/2025", list(range(10)), list(range(9))

BASE = {  # committed once per database, in this order (parents first)
    "establishments": {"id": E1, "knack_id": "E1", "name": "School One"},
    "students": {"id": S1, "knack_id": "K1", "email": "a@school.ac.uk", "establishment_id": E1, "academic_year": Y},
    "vespa_scores": {"id": V1, "student_id": S1, "cycle": 1, "vision": 5, "academic_year": Y},
    "question_responses": {"id": Q1, "student_id": S1, "cycle": 1, "question_id": "q1", "response_value": 3,
                           "academic_year": Y},
    "school_statistics": {"id": SS1, "establishment_id": E1, "cycle": 1, "academic_year": Y, "element": "vision",
                          "distribution": D10},
    "national_statistics": {"id": NS1, "cycle": 1, "academic_year": Y, "element": "vision", "distribution": D10},
    "academic_years": {"id": 1, "academic_year": Y},
    "ledger": {"run_id": "R1", "runbook": "import", "actor": "test", "status": "applied"},
    "archive_grants": {"run_id": "R1", "academic_year": Y},
    "schema_migrations": {"version": 1, "name": "init", "checksum": "abc"},
    "quarantine": {"id": QQ1, "run_id": "R1", "reason": "bad_date"},
}
FRESH = {  # a valid row that collides with nothing in BASE; cases override some of its values
    "establishments": {"id": E2, "knack_id": "E2", "name": "School Two"},
    "students": {**BASE["students"], "id": S2, "knack_id": "K2", "email": "b@school.ac.uk"},
    "vespa_scores": {**BASE["vespa_scores"], "id": V2, "cycle": 2},
    "question_responses": {**BASE["question_responses"], "id": Q2, "question_id": "q2"},
    "school_statistics": {**BASE["school_statistics"], "id": SS2, "cycle": 2},
    "national_statistics": {**BASE["national_statistics"], "id": NS2, "cycle": 2},
    "academic_years": {"id": 2, "academic_year": "2025/2026"},
    "ledger": {**BASE["ledger"], "run_id": "R2"},
    "archive_grants": {"run_id": "R1", "academic_year": "2023/2024"},
    "schema_migrations": {"version": 2, "name": "next", "checksum": "def"},
    "quarantine": {**BASE["quarantine"], "id": QQ2},
    **{f"backup_{t}": {**BASE[t], "_run_id": "R1", "_op": "update"} for t in
       ("establishments", "students", "vespa_scores", "question_responses", "school_statistics",
        "national_statistics", "academic_years")},
}

# (constraint refused, table, values of the accepted row, values of the refused row), over FRESH.
_SCORES = ("vision", "effort", "systems", "practice", "attitude", "overall")
VIOLATIONS = [
    *((f"{t}_pkey", t, {}, {k: BASE[t][k] for k in TABLES[t].primary_key}) for t in BASE),
    ("establishments_knack_id_key", "establishments", {}, {"knack_id": "E1"}),
    # F2: the same email in another year is a new row; in the same year it is a duplicate
    ("students_email_academic_year_key", "students", {"email": "a@school.ac.uk", "academic_year": "2025/2026"},
     {"email": "a@school.ac.uk"}),
    ("vespa_scores_student_id_cycle_academic_year_key", "vespa_scores", {"cycle": 1, "academic_year": "2025/2026"},
     {"cycle": 1}),
    ("question_responses_student_cycle_year_question_key", "question_responses", {"cycle": 2},
     {"question_id": "q1"}),
    ("school_statistics_establishment_cycle_year_element_key", "school_statistics", {"cycle": 1, "element": "ERI"},
     {"cycle": 1}),
    ("national_statistics_cycle_academic_year_element_key", "national_statistics", {"cycle": 1, "element": "effort"},
     {"cycle": 1}),
    ("academic_years_academic_year_key", "academic_years", {}, {"academic_year": Y}),
    *((f"{t}_academic_year_check", t, {"academic_year": "2023/2024"}, {"academic_year": bad})
      for t in ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics",
                "academic_years", "archive_grants") for bad in ("2024-25", "2024-2025", "2024/25")),
    *((f"{t}_cycle_check", t, {"cycle": good}, {"cycle": bad})
      for t in ("vespa_scores", "question_responses", "school_statistics", "national_statistics")
      for good, bad in ((3, 0), (3, 4))),
    *((f"vespa_scores_{s}_check", "vespa_scores", {s: good}, {s: bad})
      for s in _SCORES for good, bad in ((10, 11), (0, -1))),
    *(("question_responses_response_value_check", "question_responses", {"response_value": good},
       {"response_value": bad}) for good, bad in ((1, 0), (5, 6))),
    *((f"{t}_element_check", t, {"element": good}, {"element": bad})
      for t in ("school_statistics", "national_statistics")
      for good, bad in (("ERI", "eri"), ("overall", "Vision"), ("attitude", "grit"))),
    *((f"{t}_distribution_check", t, {"distribution": D10}, {"distribution": bad})
      for t in ("school_statistics", "national_statistics") for bad in (D9, [*D10, 1])),
    *((f"backup_{t}__op_check", f"backup_{t}", {"_op": "delete"}, {"_op": "upsert"})
      for t in ("establishments", "students", "vespa_scores", "question_responses", "school_statistics",
                "national_statistics", "academic_years")),
    ("students_establishment_id_fkey", "students", {"establishment_id": E1}, {"establishment_id": MISSING}),
    ("vespa_scores_student_id_fkey", "vespa_scores", {}, {"student_id": MISSING}),
    ("question_responses_student_id_fkey", "question_responses", {}, {"student_id": MISSING}),
    ("archive_grants_run_id_fkey", "archive_grants", {"run_id": "R1"}, {"run_id": "R-missing"}),
]
_CASE_IDS = [f"{c[0]}-{json.dumps(c[3], default=str)}" for c in VIOLATIONS]


def _insert(con, dialect: str, table: str, row: dict) -> None:
    """Insert one row, values as parameters (lists become JSON)."""
    values = [(Jsonb(v) if dialect == "postgres" else json.dumps(v)) if isinstance(v, list) else v
              for v in row.values()]
    marks = ", ".join(["%s" if dialect == "postgres" else "?"] * len(row))
    names = ", ".join(f'"{c}"' for c in row)
    con.execute(f"INSERT INTO {TABLES[table].qualified} ({names}) VALUES ({marks})", values)


@pytest.fixture(scope="module", params=DIALECTS)
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """(connection, dialect) of one database per module: full schema plus the BASE rows."""
    dialect = request.param
    if dialect == "duckdb":
        con = duckdb.connect(str(tmp_path_factory.mktemp("seeded") / "t.duckdb"))
    else:
        server = request.getfixturevalue("pg_server")
        name = f"vespa_test_{uuid.uuid4().hex[:12]}"
        create_database_on(server, name)
        con = psycopg.connect(dsn_with_dbname(server, name))
    schema.create_schema(con)
    for table, row in BASE.items():
        _insert(con, dialect, table, row)
    con.commit()
    yield con, dialect
    con.close()
    if dialect == "postgres":
        drop_database_on(server, name)


_DUCK_MESSAGES = {"primary_key": "primary key constraint", "unique": "unique constraint",
                  "check": "CHECK constraint failed", "foreign_key": "foreign key"}


def _kind(name: str) -> str:
    return {"pkey": "primary_key", "key": "unique", "check": "check", "fkey": "foreign_key"}[name.rsplit("_", 1)[1]]


def _accepts(con, dialect: str, table: str, row: dict) -> None:
    """Insert ``row`` against the BASE rows only, then roll it back."""
    if dialect == "postgres":
        with con.transaction(force_rollback=True):
            _insert(con, dialect, table, row)
        return
    con.begin()
    try:
        _insert(con, dialect, table, row)
    finally:
        con.rollback()


@pytest.mark.parametrize(("constraint", "table", "good", "bad"), VIOLATIONS, ids=_CASE_IDS)
def test_database_refuses_each_violation_and_accepts_the_valid_row(seeded, constraint, table, good, bad):
    con, dialect = seeded
    _accepts(con, dialect, table, {**FRESH[table], **good})  # the valid twin passes: the test can fail
    if dialect == "postgres":
        with pytest.raises(psycopg.errors.IntegrityError) as refused:
            _accepts(con, dialect, table, {**FRESH[table], **bad})
        assert refused.value.diag.constraint_name == constraint
    else:
        with pytest.raises(duckdb.ConstraintException) as refused:
            _accepts(con, dialect, table, {**FRESH[table], **bad})
        assert _DUCK_MESSAGES[_kind(constraint)] in str(refused.value)


def test_violation_table_covers_every_key_and_check():
    defined = set()
    for t in schema.all_tables():
        defined |= {f"{t.name}_pkey"} if t.primary_key else set()
        defined |= set(t.uniques) | set(t.all_checks()) | set(t.foreign_keys)
    assert defined == {case[0] for case in VIOLATIONS}


# --- creation and introspection --------------------------------------------------------------------


def test_create_schema_is_idempotent_and_builds_every_table(con):
    dialect = schema.dialect_of(con)
    assert schema.create_schema(con) == schema.ddl(dialect)
    assert schema.create_schema(con) == []
    for table in schema.all_tables():
        columns = schema.table_columns(con, table.name, table.schema or "public")
        assert [c["name"] for c in columns] == [c.name for c in table.columns]
        assert [c["nullable"] for c in columns] == [c.nullable for c in table.columns]


@pytest.mark.parametrize(("legacy", "second_year_accepted"), [(True, False), (False, True)])
def test_legacy_email_key_refuses_a_re_enrolled_student(con, legacy, second_year_accepted):
    dialect = schema.dialect_of(con)
    schema.create_schema(con, workbook=False, legacy_email_key=legacy)
    _insert(con, dialect, "students", {"knack_id": "K1", "email": "a@s.uk", "academic_year": "2023/2024"})
    try:  # F2 / docs/DOMAIN.md, “Known data points” 8: same email in two years -> two rows
        _insert(con, dialect, "students", {"knack_id": "K2", "email": "a@s.uk", "academic_year": Y})
        accepted = True
    except (duckdb.ConstraintException, psycopg.errors.UniqueViolation):
        accepted = False
    assert accepted is second_year_accepted
    keys = {(c["name"], tuple(c["columns"])) for c in schema.constraints(con)
            if c["table"] == "students" and c["kind"] == "unique"}
    expected = ("students_email_key", ("email",)) if legacy else (
        "students_email_academic_year_key", ("email", "academic_year"))
    assert keys == {expected}


def test_constraints_report_every_defined_key_and_check(con):
    dialect = schema.dialect_of(con)
    schema.create_schema(con)
    found = schema.constraints(con)
    expected = set()
    for t in schema.all_tables():
        where = t.schema or "public"
        expected |= {(where, t.name, "primary_key", t.primary_key)} if t.primary_key else set()
        expected |= {(where, t.name, "unique", cols) for cols in t.uniques.values()}
        expected |= {(where, t.name, "foreign_key", fk.columns) for fk in t.foreign_keys.values()}
    assert {(c["schema"], c["table"], c["kind"], tuple(c["columns"])) for c in found
            if c["kind"] != "check"} == expected
    checks = {(c["table"], c["name"]) for c in found if c["kind"] == "check"}
    # DuckDB ignores CONSTRAINT names, but its generated check names follow the same <table>_<column>_check
    assert checks == {(t.name, name) for t in schema.all_tables() for name in t.all_checks()}
    if dialect == "postgres":  # named constraints are kept by name (a migration can drop them)
        named = {c["name"] for c in found}
        assert {n for t in schema.all_tables() for n in [*t.uniques, *t.foreign_keys]} <= named


def test_indexes_report_the_unique_keys_and_lookups(con):
    schema.create_schema(con)
    found = {(i["table"], i["name"]): i for i in schema.indexes(con)}
    for t in schema.all_tables():
        for name, cols in [*t.uniques.items(), *t.indexes.items()]:
            assert found[(t.name, name)]["columns"] == list(cols)
            assert found[(t.name, name)]["unique"] is (name in t.uniques)
            assert found[(t.name, name)]["schema"] == (t.schema or "public")


def test_workbook_false_builds_production_as_someone_else_created_it(con):
    schema.create_schema(con, workbook=False)
    assert schema.table_columns(con, "ledger", schema.WORKBOOK_SCHEMA) == []
    for name in ("students", "vespa_scores", "academic_years"):
        assert "is_archived" not in {c["name"] for c in schema.table_columns(con, name)}
    assert not any(c["name"].endswith("_academic_year_check") and c["table"] != "students"
                   for c in schema.constraints(con))


def test_upsert_on_the_named_unique_key_works(con):
    # the import's merge relies on ON CONFLICT against the (email, academic_year) key on both engines
    dialect = schema.dialect_of(con)
    schema.create_schema(con)
    mark = "%s" if dialect == "postgres" else "?"
    upsert = (f"INSERT INTO students (knack_id, email, academic_year, name) VALUES ({mark}, {mark}, {mark}, {mark}) "
              "ON CONFLICT (email, academic_year) DO UPDATE SET name = excluded.name")
    con.execute(upsert, ("K1", "a@s.uk", Y, "Ann"))
    con.execute(upsert, ("K1", "a@s.uk", Y, "Anne"))
    assert con.execute("SELECT name, count(*) FROM students GROUP BY name").fetchall() == [("Anne", 1)]


# --- rendering (no database) -----------------------------------------------------------------------


def test_rendering_differs_where_the_engines_differ():
    pg, duck = "\n".join(schema.ddl("postgres")), "\n".join(schema.ddl("duckdb"))
    assert 'CONSTRAINT "students_email_academic_year_key" UNIQUE ("email", "academic_year")' in pg
    assert 'CREATE UNIQUE INDEX IF NOT EXISTS "students_email_academic_year_key" ON "students" ("email", "academic_year")' in duck
    assert 'REFERENCES "students" ("id") ON DELETE CASCADE' in pg and "CASCADE" not in duck
    assert "JSONB" in pg and "JSONB" not in duck and '"distribution" JSON' in duck
    assert "academic_year ~ '^\\d{4}/\\d{4}$'" in pg and "regexp_full_match(academic_year" in duck
    assert "gen_random_uuid()" in pg and "uuid()" in duck
    assert '"id" SERIAL NOT NULL' in pg and "CREATE SEQUENCE IF NOT EXISTS academic_years_id_seq" in duck


@pytest.mark.parametrize("dialect", schema.DIALECTS)
def test_every_statement_is_idempotent_and_names_fit_postgres(dialect):
    for statement in schema.ddl(dialect):
        assert "IF NOT EXISTS" in statement.split("(")[0]
    for t in schema.all_tables():  # PostgreSQL truncates identifiers past 63 bytes
        assert all(len(n) <= 63 for n in [t.name, *t.uniques, *t.all_checks(), *t.foreign_keys, *t.indexes])


def test_workbook_additions_are_flagged_on_exactly_the_archived_tables():
    flagged = {t.name for t in schema.PRODUCTION_TABLES for c in t.columns if c.workbook_addition}
    assert flagged == {"students", "vespa_scores", "question_responses", "school_statistics",
                       "national_statistics", "academic_years"}
    assert all(c.name == "is_archived" and c.default == "false" and not c.nullable
               for t in schema.PRODUCTION_TABLES for c in t.columns if c.workbook_addition)
    assert "is_archived" not in "\n".join(schema.ddl("postgres", workbook=False))
    assert "vespa_ops" not in "\n".join(schema.ddl("duckdb", workbook=False))


def test_legacy_key_replaces_the_f2_key_in_rendering():
    pg = "\n".join(schema.ddl("postgres", legacy_email_key=True))
    assert 'CONSTRAINT "students_email_key" UNIQUE ("email")' in pg
    assert "students_email_academic_year_key" not in pg


@pytest.mark.parametrize("bad", ["sqlite", object()])
def test_unknown_dialect_or_connection_is_refused(bad):
    with pytest.raises(SchemaError):
        schema.ddl(bad) if isinstance(bad, str) else schema.dialect_of(bad)
