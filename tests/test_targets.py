"""Targets (docs/ARCHITECTURE.md, “Targets”): parsing, secrets, and the uniform read interface on all three kinds."""

from __future__ import annotations

import os
import uuid

import duckdb
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_rest import FakePostgREST, student_rows

from vespa_lib.errors import ParameterError, TargetError, VespaError
from vespa_lib.sources.targets import (
    TargetSpec,
    open_target,
    parse_target,
    redact_dsn,
    resolve_env,
    secret_values,
    to_duckdb,
)

SECRET = "S3cr3t-p@ss"
KEY = "sb-secret-KEY-3f9c2a7b1e"

# --- parse_target --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("duckdb:data/demo/prod.duckdb", TargetSpec("duckdb", path="data/demo/prod.duckdb")),
        ("duckdb:/abs/with space.duckdb", TargetSpec("duckdb", path="/abs/with space.duckdb")),
        ("postgres:VESPA_DATABASE_URL", TargetSpec("postgres", dsn_var="VESPA_DATABASE_URL")),
        ("postgres:_dsn2", TargetSpec("postgres", dsn_var="_dsn2")),
        ("supabase:SUPABASE_URL,SUPABASE_KEY", TargetSpec("supabase", url_var="SUPABASE_URL", key_var="SUPABASE_KEY")),
    ],
)
def test_parse_target_accepts(spec, expected):
    assert parse_target(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        f"postgres://u:{SECRET}@db.x.supabase.co:5432/postgres",
        f"postgresql://u:{SECRET}@h/db",
        f"postgres:postgresql://u:{SECRET}@h/db",
        f"host=h user=u password={SECRET}",
        f"supabase:https://x.supabase.co,{SECRET}",
        f"supabase:SB_URL,{SECRET}",
        "supabase:SB_URL",
        "supabase:SB_URL,SB_KEY,EXTRA",
        "https://x.supabase.co",
        "postgres:1STARTS_WITH_DIGIT",
        "postgres:",
        "duckdb:",
        "mysql:DSN",
        "data/prod.duckdb",
        "",
    ],
)
def test_parse_target_refuses_without_echoing(spec):
    with pytest.raises(ParameterError) as err:
        parse_target(spec)
    message = str(err.value)
    assert "environment variable" in message and "postgres:ENV_VAR_NAME" in message
    assert SECRET not in message and "supabase.co" not in message


# --- redact_dsn ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgres://u:p@ss:w/rd#?@h:5432/db?sslmode=require", "postgres://u@h:5432/db?sslmode=require"),
        ("postgresql://u:p%40ss%2Fx@h/db", "postgresql://u@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://:pw@h/db", "postgresql://h/db"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?sslmode=require"),
        ("postgresql://h/db?sslmode=require&password=pw", "postgresql://h/db?sslmode=require"),
        ("postgresql://h/db?a=1&password=pw&b=2", "postgresql://h/db?a=1&b=2"),
        ("host=h user=u password=pw dbname=d", "host=h user=u dbname=d"),
        ("host=h password='a b\\'c=d' dbname=d", "host=h dbname=d"),
        ("password=pw host=h", "host=h"),
        ("host=h PASSWORD = pw sslpassword=k dbname=d", "host=h dbname=d"),
        ("host=h dbname=d", "host=h dbname=d"),
    ],
)
def test_redact_dsn(dsn, expected):
    assert redact_dsn(dsn) == expected


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1))
def test_redact_dsn_removes_any_password(password):
    assert redact_dsn(f"postgresql://reader:{password}@db.example.org:5432/vespa") == (
        "postgresql://reader@db.example.org:5432/vespa"
    )
    quoted = make_conninfo(host="db.example.org", user="reader", password=password)
    redacted = redact_dsn(quoted)
    assert "password" not in conninfo_to_dict(redacted)
    assert conninfo_to_dict(redacted) == {"host": "db.example.org", "user": "reader"}


# --- secrets: environment and .env ---------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("VESPA_DSN", "SB_URL", "SB_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dotenv_in_working_directory_is_read_not_loaded(clean_env):
    (clean_env / ".env").write_text(f"VESPA_DSN=postgresql://u:{SECRET}@h.example.com:6543/postgres\n")
    assert resolve_env(["VESPA_DSN", "SB_KEY"]) == {"VESPA_DSN": f"postgresql://u:{SECRET}@h.example.com:6543/postgres"}
    assert "VESPA_DSN" not in os.environ
    spec = parse_target("postgres:VESPA_DSN")
    assert spec.describe() == "postgres:VESPA_DSN (h.example.com:6543/postgres, user u, password removed)"


def test_environment_wins_over_dotenv(clean_env, monkeypatch):
    (clean_env / ".env").write_text("SB_URL=https://from-file.supabase.co\n")
    monkeypatch.setenv("SB_URL", "https://from-env.supabase.co")
    assert resolve_env(["SB_URL"]) == {"SB_URL": "https://from-env.supabase.co"}


def test_explicit_dotenv_path(clean_env):
    other = clean_env / "conf" / "prod.env"
    other.parent.mkdir()
    other.write_text(f"SB_URL=https://proj.supabase.co\nSB_KEY='{KEY}'\n")
    spec = parse_target("supabase:SB_URL,SB_KEY", dotenv_path=other)
    assert resolve_env(["SB_URL"]) == {}  # not the working directory's .env
    assert spec.describe() == "supabase:SB_URL,SB_KEY (host proj.supabase.co, key not shown)"
    assert secret_values(spec) == [KEY]


def test_secret_values_of_a_dsn_cover_raw_and_decoded_password(clean_env, monkeypatch):
    dsn = "postgresql://u:p%40ss%3Aword@h/db"
    monkeypatch.setenv("VESPA_DSN", dsn)
    assert set(secret_values(parse_target("postgres:VESPA_DSN"))) == {dsn, "p@ss:word", "p%40ss%3Aword"}
    monkeypatch.setenv("VESPA_DSN", "host=h password='a b' dbname=d")
    assert "a b" in secret_values(parse_target("postgres:VESPA_DSN"))


def test_unset_variables_contribute_no_secret_and_refuse_to_open(clean_env):
    spec = parse_target("postgres:VESPA_DSN")
    assert secret_values(spec) == [] and spec.describe() == "postgres:VESPA_DSN (not set)"
    with pytest.raises(TargetError, match="VESPA_DSN is not set"):
        open_target(spec)


def test_connection_failure_hides_the_password(clean_env, monkeypatch):
    monkeypatch.setenv("VESPA_DSN", f"postgresql://u:{SECRET}@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(TargetError) as err:
        open_target("postgres:VESPA_DSN")
    assert "VESPA_DSN" in str(err.value) and SECRET not in str(err.value) and err.value.__cause__ is None


# --- DuckDB --------------------------------------------------------------------------------------


@pytest.fixture
def duck_file(duckdb_path):
    con = duckdb.connect(str(duckdb_path))
    con.execute("CREATE TABLE students (id INTEGER, email TEXT, academic_year TEXT)")
    con.execute("INSERT INTO students VALUES (2, 'b@x.ac.uk', '2024/2025'), (1, 'a@x.ac.uk', '2024/2025'), "
                "(3, 'c@x.ac.uk', NULL)")
    con.execute("CREATE VIEW v AS SELECT 1")
    con.close()
    return duckdb_path


def test_duckdb_target_reads(duck_file):
    with open_target(f"duckdb:{duck_file}") as t:
        assert (t.kind, t.tables()) == ("duckdb", ["students"])
        assert t.count("students") == 3
        assert t.count("students", {"academic_year": "2024/2025"}) == 2
        assert t.count("students", {"academic_year": None}) == 1
        table = t.read_table("students", columns=["id", "email"], order_by="id")
        assert table.column_names == ["id", "email"] and table.column("id").to_pylist() == [1, 2, 3]
        df = t.sql("SELECT email FROM students WHERE id > ? ORDER BY id", [1])
        assert df["email"].tolist() == ["b@x.ac.uk", "c@x.ac.uk"]
        assert t.describe() == f"duckdb:{duck_file}"


def test_duckdb_read_only_refuses_writes(duck_file):
    with open_target(f"duckdb:{duck_file}") as t, pytest.raises(duckdb.Error, match="read-only"):
        t.sql("DELETE FROM students")
    with open_target(f"duckdb:{duck_file}", read_only=False) as t:
        t.sql("DELETE FROM students WHERE id = ?", [3])
        assert t.count("students") == 2


def test_duckdb_missing_file_is_a_target_error(tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        open_target(f"duckdb:{tmp_path / 'missing.duckdb'}")


def test_to_duckdb_copies_with_counts(duck_file):
    with open_target(f"duckdb:{duck_file}") as t:
        con = to_duckdb(t, ["students"])
    assert con.sql("SELECT count(*), count(academic_year) FROM students").fetchall() == [(3, 2)]


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_reader(pg_dsn, monkeypatch):
    """A database with one table and a password-bearing role; VESPA_DSN names that role's DSN."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE students (id uuid PRIMARY KEY, email text, academic_year text, n int)")
        con.execute("INSERT INTO students SELECT gen_random_uuid(), 's' || i || '@x.ac.uk', "
                    "CASE WHEN i % 4 = 0 THEN NULL ELSE '2024/2025' END, i FROM generate_series(1, 40) i")
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        con.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    params = conninfo_to_dict(pg_dsn) | {"user": role, "password": SECRET}
    monkeypatch.setenv("VESPA_DSN", make_conninfo(**params))
    yield parse_target("postgres:VESPA_DSN")
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("DROP TABLE students")
        con.execute(f"DROP ROLE {role}")


@pytest.mark.postgres
def test_postgres_target_reads(pg_reader):
    with open_target(pg_reader) as t:
        assert (t.kind, t.tables()) == ("postgres", ["students"])
        assert t.count("students") == 40
        assert t.count("students", {"academic_year": None}) == 10
        assert t.count("students", {"academic_year": "2024/2025"}) == 30
        table = t.read_table("students", columns=["id", "n"], order_by=["n"])
        assert table.column("n").to_pylist() == list(range(1, 41))
        assert len(str(table.column("id")[0])) == 36  # uuid as text
        df = t.sql("SELECT current_setting('application_name') AS app, count(*) AS c FROM students WHERE n <= %s", [5])
        assert (df["app"][0], int(df["c"][0])) == ("vespa-ops", 5)
        con = to_duckdb(t, ["students"])
        assert con.sql("SELECT count(*) FROM students WHERE academic_year IS NULL").fetchall() == [(10,)]
        assert SECRET not in f"{t.describe()} {t!r} {t}" and "password removed" in t.describe()


@pytest.mark.postgres
def test_postgres_read_only_refuses_writes(pg_reader):
    with open_target(pg_reader) as t, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        t.sql("DELETE FROM students")
    with open_target(pg_reader, read_only=False) as t:
        t.sql("DELETE FROM students WHERE n = %s", [1])
        assert t.count("students") == 39


# --- Supabase REST -------------------------------------------------------------------------------


@pytest.fixture
def rest_env(clean_env, monkeypatch):
    monkeypatch.setenv("SB_URL", "https://abcdefgh.supabase.co")
    monkeypatch.setenv("SB_KEY", KEY)
    return FakePostgREST({"students": student_rows(2_345)}, key=KEY)


def test_supabase_target_reads_over_rest(rest_env):
    with open_target("supabase:SB_URL,SB_KEY", transport=rest_env.transport()) as t:
        assert (t.kind, t.tables()) == ("supabase", ["students"])
        assert t.count("students") == 2_345
        assert t.read_table("students").num_rows == 2_345  # > the 1,000-row cap
        with pytest.raises(TargetError, match="not available over REST"):
            t.sql("SELECT 1")
        con = to_duckdb(t, ["students"])
    assert con.sql("SELECT count(*) FROM students WHERE establishment_id IS NULL").fetchall() == [(2_345 // 7,)]


def test_supabase_target_is_read_only(rest_env):
    with pytest.raises(ParameterError, match="read-only"):
        open_target("supabase:SB_URL,SB_KEY", read_only=False, transport=rest_env.transport())


# --- no secret anywhere --------------------------------------------------------------------------


def test_no_secret_in_descriptions_reprs_or_errors(rest_env, monkeypatch, duck_file):
    monkeypatch.setenv("VESPA_DSN", f"postgresql://u:{SECRET}@127.0.0.1:1/db?connect_timeout=2")
    shown: list[str] = []
    with open_target("supabase:SB_URL,SB_KEY", transport=rest_env.transport()) as t:
        shown += [t.describe(), repr(t), str(t), repr(t.reader), repr(t.spec)]
    rest_env.key = "another-key"  # the server now rejects ours
    with open_target("supabase:SB_URL,SB_KEY", transport=rest_env.transport()) as t:
        with pytest.raises(VespaError) as err:
            t.count("students")
        shown += [str(err.value), repr(err.value)]
    with open_target(f"duckdb:{duck_file}") as t:
        shown += [t.describe(), repr(t), str(t)]
    pg = parse_target("postgres:VESPA_DSN")
    shown += [pg.describe(), repr(pg)]
    with pytest.raises(VespaError) as err:
        open_target(pg)
    shown += [str(err.value), repr(err.value)]
    text = "\n".join(shown)
    assert "SB_KEY" in text and "abcdefgh.supabase.co" in text
    for secret in (KEY, SECRET, *secret_values(pg)):
        assert secret not in text
