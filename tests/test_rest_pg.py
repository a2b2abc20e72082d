"""The Supabase REST path against a loopback PostgREST over a real PostgreSQL (tests/postgrest_server.py).

The reader (``vespa_lib.sources.rest``) and the audit runbook end to end through ``vespa-ops run audit`` with
``target=supabase:URL_VAR,KEY_VAR``: the 1,000-row cap, exact counts, 206/416, 401 "JWT expired"
with the table and the server's message, filters with reserved characters, and the checks REST
cannot evaluate (keys, RLS) reported as not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from postgrest_server import EXPIRED_KEY, KEY, PostgRESTServer

from vespa_lib.errors import TargetError
from vespa_lib.ops import cli
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.postgres import load_into_postgres
from vespa_lib.sources.rest import RestReader
from vespa_lib.sources.targets import open_target

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[1]
N = 2_345  # more than two pages of the 1,000-row cap
REST_NOT_RUN = {"single_year_keys", "expected_keys_missing", "rls_disabled"}


@pytest.fixture
def people(pg_dsn):
    """A small table with reserved characters in its values."""
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("CREATE TABLE people (id integer PRIMARY KEY, email text, year text, note text)")
        with pg.cursor().copy("COPY people (id, email, year, note) FROM STDIN") as copy:
            for i in range(1, N + 1):
                copy.write_row((i, f"first.last{i % 10}@school.ac.uk", "2024/2025" if i % 3 else "2025/2026",
                                None if i % 7 == 0 else f"a,b:c.{i % 4}"))
    with PostgRESTServer(pg_dsn) as server:
        yield server


def reader(server, key=KEY, **kw) -> RestReader:
    kw.setdefault("sleep", lambda s: None)
    return RestReader(server.url, key, env_names=("SB_URL", "SB_KEY"), **kw)


# --- PostgREST's behaviour, reproduced by the loopback server -----------------------------------


def test_loopback_caps_at_1000_and_reports_content_range(people):
    import httpx

    headers = {"apikey": KEY, "Authorization": f"Bearer {KEY}", "Prefer": "count=exact"}
    got = httpx.get(f"{people.url}/rest/v1/people?select=id&order=id.asc&limit=5000", headers=headers)
    assert got.status_code == 206 and len(got.json()) == 1000
    assert got.headers["Content-Range"] == f"0-999/{N}"
    past = httpx.get(f"{people.url}/rest/v1/people?select=id&offset={N + 5}", headers=headers)
    assert past.status_code == 416 and past.json()["code"] == "PGRST103"
    expired = httpx.get(f"{people.url}/rest/v1/people", headers={"apikey": EXPIRED_KEY,
                                                               "Authorization": f"Bearer {EXPIRED_KEY}"})
    assert expired.status_code == 401 and expired.json()["message"] == "JWT expired"


def test_read_all_pages_past_the_cap_with_exact_totals(people):
    with reader(people, page_size=5000) as r:
        rows = r.read_all("people", order_by="id", columns=["email"])
        assert r.count("people") == N
    assert len(rows) == N and set(rows[0]) == {"email"}
    pages = [q for q in people.requests if q["method"] == "GET" and "select=email" in q["query"]]
    assert len(pages) >= 3 and all("order=id.asc" in q["query"] for q in pages)  # ordered by the key


@pytest.mark.parametrize(("filters", "expected"), [
    ({"email": "first.last3@school.ac.uk"}, sum(1 for i in range(1, N + 1) if i % 10 == 3)),
    ({"note": "a,b:c.1"}, sum(1 for i in range(1, N + 1) if i % 7 and i % 4 == 1)),
    ({"note": None}, N // 7),
    ({"year": "2025/2026", "email": "first.last0@school.ac.uk"}, sum(1 for i in range(1, N + 1) if i % 3 == 0 and i % 10 == 0)),
])
def test_filters_with_reserved_characters_count_exactly(people, filters, expected):
    assert expected > 0
    with reader(people) as r:
        assert r.count("people", filters) == expected


def test_expired_key_names_the_table_the_status_and_the_message(people):
    with reader(people, key=EXPIRED_KEY) as r, pytest.raises(TargetError) as err:
        r.count("people")
    text = str(err.value)
    assert "people" in text and "HTTP 401" in text and "JWT expired" in text and "SB_KEY" in text
    assert EXPIRED_KEY not in text and KEY not in text


def test_table_list_refused_is_named_not_blank(people):
    with reader(people, key=EXPIRED_KEY) as r, pytest.raises(TargetError) as err:
        r.tables()
    assert "reading ." not in str(err.value) and "table list" in str(err.value)
    assert "JWT expired" in str(err.value)


def test_503_is_retried_then_served(people):
    slept: list[float] = []
    people.fail_next = [503, 503]
    with reader(people, sleep=slept.append, backoff=0.5) as r:
        assert r.count("people") == N
    assert slept == [0.5, 1.0]


def test_range_past_the_end_416_is_a_changed_table(people):
    def shrink(gets):  # a sync deletes rows while the audit pages
        if gets == 2:
            with psycopg.connect(people.dsn, autocommit=True) as pg:
                pg.execute("DELETE FROM people WHERE id > 100")

    people.before_get = shrink
    with reader(people) as r, pytest.raises(TargetError, match="changed while reading"):
        r.read_all("people", order_by="id")


def test_non_unique_order_key_is_refused(people):
    with reader(people) as r, pytest.raises(TargetError, match="not a unique key"):
        r.read_all("people", order_by="year")


# --- the audit runbook end to end over supabase: --------------------------------------------------


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("gen"), students=150, seed=2026)


@pytest.fixture
def rest_audit(damaged, pg_dsn, monkeypatch, tmp_path):
    """The damaged demo database (still with unique(email)) in PostgreSQL behind the loopback server."""
    load_into_postgres(damaged.database, pg_dsn)
    with PostgRESTServer(pg_dsn) as server:
        monkeypatch.setenv("AUDIT_SB_URL", server.url)
        monkeypatch.setenv("AUDIT_SB_KEY", server.key)

        def run(*params: str) -> tuple[int, dict, str]:
            argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(tmp_path / "out"), "run", "audit",
                    "-p", "target=supabase:AUDIT_SB_URL,AUDIT_SB_KEY", "-p", "backup=false"]
            for p in params:
                argv += ["-p", p]
            code = cli.main(argv)
            run_dir = Path(sorted((tmp_path / "out").glob("*/*/manifest.json"))[-1]).parent
            return code, json.loads((run_dir / "manifest.json").read_text()), (run_dir / "findings.csv").read_text() \
                if (run_dir / "findings.csv").exists() else ""

        yield run


@pytest.mark.notebook
def test_audit_over_rest_fails_when_fail_on_names_a_check_it_cannot_run(rest_audit, pg_dsn):
    with psycopg.connect(pg_dsn) as pg:  # the F2 key is really there: the DuckDB/PostgreSQL audit fails on it
        assert pg.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'students' AND indexdef LIKE "
                          "'%UNIQUE%(email)'").fetchone()[0] == 1
    code, manifest, _ = rest_audit("fail_on=[F2]")
    assert code == 1 and manifest["status"] == "failed"
    failed = {c["name"]: c for c in manifest["checks"] if not c["passed"]}
    assert set(failed) == {"single_year_keys"}
    assert "not run: not visible over REST" in failed["single_year_keys"]["detail"]
    assert failed["single_year_keys"]["figures"]["count"] is None


@pytest.mark.notebook
def test_audit_over_rest_passes_and_shows_unseen_checks_as_not_run(rest_audit, damaged):
    code, manifest, findings = rest_audit()
    assert code == 0 and manifest["status"] == "passed"
    checks = {c["name"]: c for c in manifest["checks"]}
    assert not REST_NOT_RUN & set(checks)  # never recorded as passed
    assert {c["check"] for c in manifest["checks_not_run"]} == REST_NOT_RUN
    assert all(c["reason"] == "not visible over REST" for c in manifest["checks_not_run"])
    assert checks["f10_cycle_copies"]["figures"]["count"] == damaged.damage["f10_copy_rows"]
    students = sum(r["n"] for r in manifest["counts"] if r["table"] == "students")
    with open_target(f"duckdb:{damaged.database}") as t:
        assert students == t.count("students")
    for check in REST_NOT_RUN:
        assert f"{check},".lower() in findings and "not run" in findings


@pytest.mark.notebook
def test_audit_over_rest_with_an_expired_key_names_what_was_refused(rest_audit, monkeypatch):
    monkeypatch.setenv("AUDIT_SB_KEY", EXPIRED_KEY)
    code, manifest, _ = rest_audit()
    assert code == 1 and manifest["status"] == "failed"
    assert "HTTP 401" in manifest["error"] and "JWT expired" in manifest["error"]
    assert "reading ." not in manifest["error"] and "AUDIT_SB_KEY" in manifest["error"]
    assert EXPIRED_KEY not in json.dumps(manifest)


@pytest.mark.notebook
@pytest.mark.parametrize(("runbook", "params"), [("year_transition", ["mode=validate"]),
                                                  ("sync_check", ["source=csv:{snapshot}", "mode=plan"])])
def test_runbooks_needing_a_connection_refuse_rest_clearly(rest_audit, damaged, tmp_path, runbook, params):
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(tmp_path / "other"), "run", runbook,
            "-p", "target=supabase:AUDIT_SB_URL,AUDIT_SB_KEY"]
    for p in params:
        argv += ["-p", p.format(snapshot=damaged.database.parent / "snapshot")]
    assert cli.main(argv) == 1
    manifest = json.loads(next((tmp_path / "other").glob("*/*/manifest.json")).read_text())
    assert manifest["error"].startswith("TargetError: ") and "postgres:ENV_VAR" in manifest["error"]
