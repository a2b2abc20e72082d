"""The sync on a real PostgreSQL: a nightly sync of 2025/2026 after 2024/2025 was archived
leaves every 2024/2025 row exactly as it was, and the database itself refuses history writes."""

from __future__ import annotations

import json
from datetime import date

import psycopg
import pytest
from test_audit import load_into_postgres

from vespa_lib import sync
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.fresh import generate_fresh_export
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.plan import Desired, plan_changes
from vespa_lib.write.sql import checksum_expr, row_text_expr

pytestmark = pytest.mark.postgres

AS_OF = date(2026, 3, 15)
OLD = "2024/2025"
YEAR_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics",
               "academic_years")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync_pg")
    synth.generate(out, students=300, seed=2025)
    generate_fresh_export(out, as_of=AS_OF)
    return out


def year_checksums(con, year: str) -> dict[str, str]:
    """md5 of every row (all columns) of ``year`` in each year-keyed table."""
    return {t: con.execute(f"SELECT {checksum_expr([row_text_expr(con, t, 't')])} FROM {t} t "
                           "WHERE t.academic_year = %s", [year]).fetchone()[0] for t in YEAR_TABLES}


def guarded(con, want: Desired, run_id: str, **kw) -> None:
    plan = plan_changes(con, want, archive_years=kw.get("archive_years", ()))
    apply_plan(con, want, approve=plan.fingerprint, run_id=run_id, runbook="test", actor="pytest", **kw)


@pytest.fixture
def pg(world, pg_dsn):
    load_into_postgres(world / "production.duckdb", pg_dsn)
    con = psycopg.connect(pg_dsn, autocommit=True)
    guarded(con, Desired({}, years=[OLD]), "migrate", recompute=False)  # F2 key, is_archived, triggers
    guarded(con, Desired({}, years=[OLD]), "archive", recompute=False, archive_years=[OLD])
    yield con
    con.close()


def test_nightly_sync_leaves_every_archived_checksum_unchanged(world, pg):
    before = year_checksums(pg, OLD)
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", pg, AS_OF)
    assert sp.passed, [c for c in sp.checks if not c["passed"]]
    assert sp.totals()["students"]["insert"] > 0 and sp.totals()["students"]["delete"] > 0
    result = sync.apply_sync(pg, sp, approve=sp.fingerprint, run_id="night1", actor="cron", target_kind="postgres")
    assert result.status == "applied"
    assert year_checksums(pg, OLD) == before
    again = sync.plan_sync(f"csv:{world / 'fresh_export'}", pg, AS_OF)
    assert again.plan.is_empty
    assert sync.sync_history(pg).iloc[0][["run_id", "status"]].tolist() == ["night1", "applied"]


def test_policy_run_on_postgres_and_auto_refused(world, pg):
    sp = sync.plan_sync(f"csv:{world / 'fresh_export'}", pg, AS_OF)
    before = year_checksums(pg, "2025/2026")
    refused = sync.apply_sync(pg, sp, approve="auto", run_id="r-auto", actor="a", target_kind="postgres")
    assert refused.status == "refused" and year_checksums(pg, "2025/2026") == before
    ok = sync.apply_sync(pg, sp, approve="policy", run_id="r-pol", actor="cron", target_kind="postgres",
                         policy={"max_deletes": 10_000, "max_school_loss": 1.0})
    assert ok.status == "applied"
    assert list(sync.sync_history(pg)["status"][:2]) == ["applied", "refused"]


def test_an_old_style_upsert_into_the_archived_year_is_refused_by_the_database(pg):
    before = year_checksums(pg, OLD)
    with pytest.raises(psycopg.Error, match="(?i)archiv"):
        pg.execute("UPDATE students SET name = 'overwritten' WHERE academic_year = %s", [OLD])
    assert year_checksums(pg, OLD) == before


# --- the review-before-approve path through vespa-ops ---------------------------------------------


def footprint(dsn: str, open_con) -> dict:
    """Everything a write to the database would change: the relations outside temporary schemas, every
    row of every table of public and vespa_ops, and each table's write counters (which count rolled-back
    writes too). Read in a read-only transaction once every other session but ``open_con`` has ended
    (a session reports its counters as it ends); ``open_con`` is made to report its own first."""
    import time

    from vespa_lib.write.guard import table_checksums

    open_con.execute("SELECT pg_stat_force_next_flush()")  # reported before the statement returns
    with psycopg.connect(dsn, autocommit=True) as con:
        for _ in range(200):
            if not con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid NOT IN (pg_backend_pid(), %s)", [open_con.info.backend_pid]).fetchone()[0]:
                break
            time.sleep(0.1)
        with con.transaction():
            con.execute("SET TRANSACTION READ ONLY")
            relations = con.execute("SELECT n.nspname, c.relname, c.relkind, c.oid::bigint FROM pg_class c "
                                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname !~ '^pg_(toast_)?temp' "
                                    "ORDER BY 1, 2").fetchall()
            tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = "
                                 "'BASE TABLE' AND table_schema IN ('public', 'vespa_ops') ORDER BY 1, 2").fetchall()
            rows = {f"{s}.{t}": table_checksums(con, [t], s)[t] for s, t in tables}
            writes = dict(con.execute("SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del "
                                      "FROM pg_stat_user_tables").fetchall())
            ledger = con.execute("SELECT count(*) FROM vespa_ops.ledger").fetchone()[0]
    return {"relations": relations, "rows": rows, "writes": writes, "ledger_rows": ledger}


@pytest.mark.notebook
def test_plan_mode_on_postgres_writes_nothing_then_the_approved_fingerprint_applies(world, pg, pg_dsn, tmp_path,
                                                                                    monkeypatch):
    """`target: postgres:ENV_VAR`, `mode: plan`: no relation created or dropped, no row and no write
    counter changed, no ledger row; the evidence holds the plan and its fingerprint; `mode: apply` with
    that fingerprint applies exactly that plan; the next night's policy run records "no changes"."""
    from test_sync import changes, ops_sync

    monkeypatch.setenv("VESPA_TEST_SYNC_DSN", pg_dsn)
    source, spec = f"csv:{world / 'fresh_export'}", "postgres:VESPA_TEST_SYNC_DSN"
    before = footprint(pg_dsn, pg)
    plan = ops_sync(tmp_path / "o1", source, spec, "mode=plan", "approve=")
    assert (plan["exit"], plan["status"], plan["sync_status"]) == (0, "passed", "planned"), plan["error"]
    assert footprint(pg_dsn, pg) == before
    fingerprint = plan["plan_fingerprint"]
    assert plan["plan"]["fingerprint"] == fingerprint and changes(plan["plan"]) > 0

    applied = ops_sync(tmp_path / "o2", source, spec, "mode=apply", f"approve={fingerprint}")
    assert (applied["exit"], applied["sync_status"], applied["plan_fingerprint"]) == (0, "applied", fingerprint), \
        applied["error"]
    row = pg.execute("SELECT status, fingerprint, CAST(counts AS TEXT) FROM vespa_ops.ledger WHERE run_id = %s",
                     [applied["run_id"]]).fetchone()
    assert row[:2] == ("applied", fingerprint)
    assert json.loads(row[2])["plan"] == plan["plan"]["counts"]
    assert pg.execute("SELECT count(*) FROM vespa_ops.ledger").fetchone()[0] == before["ledger_rows"] + 1

    night = ops_sync(tmp_path / "o3", source, spec, "mode=apply", "approve=policy")
    assert (night["exit"], night["sync_status"]) == (0, "no changes"), night["error"]
    assert sync.sync_history(pg).iloc[0][["run_id", "status"]].tolist() == [night["run_id"], "no changes"]
