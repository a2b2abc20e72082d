"""The audit runbook's logic (docs/ARCHITECTURE.md, “Runbooks”) on real databases: the generated damaged DuckDB, the same
data loaded into a real PostgreSQL, and a clean database. Expected figures are computed here with
plain SQL on the database itself (and compared with what the generator says it planted)."""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespa_lib import audit
from vespa_lib.errors import ParameterError
from vespa_lib.ops import cli, runbook
from vespa_lib.rules import years
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.postgres import load_into_postgres  # noqa: F401 - other test modules import it from here
from vespa_lib.sources.targets import open_target
from vespa_lib.write import schema

REPO = Path(__file__).resolve().parents[1]
YEAR_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics",
               "academic_years")
SECTIONS = (audit.noncanonical_labels, audit.keys_and_indexes, audit.duplicates, audit.orphans,
            audit.test_accounts, audit.national_coverage)
DEFECTS = [c for c, code in audit.CATALOGUE.items() if code not in ("rls", "history")]


def run_all(src) -> dict[str, int]:
    """check name -> count over every section that reads the database."""
    return {f.check: f.count for section in SECTIONS for f in section(src).findings}


# --- the damaged database ------------------------------------------------------------------------


def expected_from_db(path: Path) -> dict[str, int]:
    """Each finding's figure computed independently with plain SQL / pandas on the file."""
    con = duckdb.connect(str(path), read_only=True)
    q = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    try:
        answers = con.sql("SELECT DISTINCT student_id, cycle, academic_year FROM question_responses").df()
        scores = con.sql("SELECT DISTINCT student_id, cycle, academic_year FROM vespa_scores").df()
        qr = con.sql("SELECT student_id, cycle, academic_year FROM question_responses").df()
        nat_years = {r[0] for r in con.sql("SELECT DISTINCT academic_year FROM national_statistics").fetchall()}
        score_pairs = {(years.canonical(y), c) for y, c in con.sql("SELECT DISTINCT academic_year, cycle FROM vespa_scores").fetchall()}
        nat_pairs = set(con.sql("SELECT DISTINCT academic_year, cycle FROM national_statistics").fetchall())
        score_years = {y for y, _ in score_pairs}
        scored_cycles = set(zip(scores.student_id, scores.cycle, strict=True))
        scored_years = set(zip(scores.student_id, scores.cycle, scores.academic_year, strict=True))
        keyed = list(zip(qr.student_id, qr.cycle, qr.academic_year, strict=True))
        same = "(s.vision, s.effort, s.systems, s.practice, s.attitude, s.overall, coalesce(s.completion_date, DATE '1900-01-01'))"
        return {
            "noncanonical_year_labels": sum(
                q(f"SELECT COUNT(*) FROM {t} WHERE NOT regexp_full_match(academic_year, '\\d{{4}}/\\d{{4}}')")
                for t in YEAR_TABLES),
            "single_year_keys": q("SELECT COUNT(*) FROM duckdb_indexes() WHERE table_name = 'students' "
                                  "AND is_unique AND sql NOT LIKE '%academic_year%'"),
            "expected_keys_missing": 1 - q("SELECT COUNT(*) FROM duckdb_indexes() WHERE table_name = 'students' "
                                           "AND sql LIKE '%(email, academic_year)%'"),
            "duplicate_emails_in_year": q("SELECT COUNT(*) - COUNT(DISTINCT (lower(email), academic_year)) FROM students"),
            "f10_cycle_copies": q(f"SELECT COUNT(*) FROM vespa_scores c JOIN vespa_scores s ON s.student_id = c.student_id "
                                  f"AND s.cycle = 1 AND c.cycle > 1 AND {same.replace('s.', 'c.')} = {same}"),
            "f8_answer_year_mismatch": sum(1 for k in keyed if k[:2] in scored_cycles and k not in scored_years),
            "answers_without_scores": sum(1 for k in keyed if k[:2] not in scored_cycles),
            "orphan_scores": q("SELECT COUNT(*) FROM vespa_scores WHERE student_id NOT IN (SELECT id FROM students)"),
            "orphan_answers": q("SELECT COUNT(*) FROM question_responses WHERE student_id NOT IN (SELECT id FROM students)"),
            "orphan_students": q("SELECT COUNT(*) FROM students WHERE establishment_id NOT IN (SELECT id FROM establishments)"),
            "test_accounts_in_national_statistics": 0,  # the generator's statistics exclude test accounts
            "f9_years_missing_from_dashboard": len(score_years - nat_years),
            "national_rows_missing": len(score_pairs - nat_pairs),
            "test_students": q("SELECT COUNT(*) FROM students WHERE email LIKE '%@vespa.academy'"),
            "distinct_answer_groups": len(answers),
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("gen"), students=300, seed=2025)


@pytest.fixture(scope="module")
def expected(generated):
    return expected_from_db(generated.database)


@pytest.fixture(scope="module")
def duck_found(generated):
    with open_target(f"duckdb:{generated.database}") as t:
        src = audit.Source(t)
        return run_all(src) | {"_test_rows": audit.test_accounts(src).frame}


def test_expected_figures_match_what_the_generator_planted(generated, expected):
    planted = generated.damage
    assert expected["noncanonical_year_labels"] == planted["noncanonical_score_rows"] + planted["noncanonical_answer_rows"]
    assert expected["f10_cycle_copies"] == planted["f10_copy_rows"] > 0
    assert expected["f8_answer_year_mismatch"] == planted["f8_rows"] > 0
    assert expected["test_students"] == planted["test_accounts"] > 0
    assert expected["single_year_keys"] == 1 and expected["f9_years_missing_from_dashboard"] >= 1


@pytest.mark.parametrize("check", DEFECTS)
def test_audit_finds_each_defect_on_duckdb(duck_found, expected, check):
    assert duck_found[check] == expected[check]


def test_test_account_rows_per_table(duck_found, generated):
    con = duckdb.connect(str(generated.database), read_only=True)
    by_table = duck_found["_test_rows"].groupby("table")["n"].sum().to_dict()
    joined = "JOIN students st ON st.id = x.student_id WHERE st.email LIKE '%@vespa.academy'"
    assert by_table == {
        "students": con.execute("SELECT COUNT(*) FROM students WHERE email LIKE '%@vespa.academy'").fetchone()[0],
        "vespa_scores": con.execute(f"SELECT COUNT(*) FROM vespa_scores x {joined}").fetchone()[0],
        "question_responses": con.execute(f"SELECT COUNT(*) FROM question_responses x {joined}").fetchone()[0],
    }
    con.close()


def test_counts_are_exact_per_table_year_cycle(generated):
    con = duckdb.connect(str(generated.database), read_only=True)
    truth = con.sql("SELECT academic_year, cycle, COUNT(*) AS n FROM question_responses GROUP BY ALL").df()
    con.close()
    with open_target(f"duckdb:{generated.database}") as t:
        got = audit.counts(t).frame
    got = got[got["table"] == "question_responses"]
    as_dict = lambda df: {(y, int(c)): int(n) for y, c, n in df[["academic_year", "cycle", "n"]].itertuples(index=False)}  # noqa: E731
    assert as_dict(got) == as_dict(truth) and len(got) == len(truth)


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_same_findings_and_rls(generated, expected, duck_found, pg_dsn, monkeypatch):
    load_into_postgres(generated.database, pg_dsn)
    monkeypatch.setenv("AUDIT_TEST_DSN", pg_dsn)
    with open_target("postgres:AUDIT_TEST_DSN") as t:
        src = audit.Source(t)
        found = run_all(src)
        rls = audit.rls_state(src)
    assert {c: found[c] for c in DEFECTS} == {c: expected[c] for c in DEFECTS}
    assert rls.finding("rls_disabled").count == len(schema.PRODUCTION_TABLES)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("ALTER TABLE students ENABLE ROW LEVEL SECURITY")
        pg.execute("CREATE POLICY read_own ON students FOR SELECT USING (true)")
    with open_target("postgres:AUDIT_TEST_DSN") as t:
        frame = audit.rls_state(t).frame.set_index("table")
    assert bool(frame.loc["students", "rls_enabled"]) and frame.loc["students", "policies"] == 1
    assert not frame.drop(index="students")["rls_enabled"].any()


# --- Supabase REST ------------------------------------------------------------------------------


def rest_tables(path: Path) -> dict[str, list[dict]]:
    """The damaged database's production tables as PostgREST would serve them (JSON rows)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for table in schema.PRODUCTION_TABLES:
            cur = con.execute(f"SELECT * FROM {table.name}")
            names = [d[0] for d in cur.description]
            out[table.name] = json.loads(json.dumps([dict(zip(names, r, strict=True)) for r in cur.fetchall()], default=str))
        return out
    finally:
        con.close()


def test_rest_target_same_data_findings(generated, expected, monkeypatch):
    from test_rest import KEY, URL, FakePostgREST

    fake = FakePostgREST(rest_tables(generated.database), key=KEY)
    monkeypatch.setenv("AUDIT_SB_URL", URL)
    monkeypatch.setenv("AUDIT_SB_KEY", KEY)
    with open_target("supabase:AUDIT_SB_URL,AUDIT_SB_KEY", transport=fake.transport()) as t:
        src = audit.Source(t)
        found = run_all(src)
        keys, rls = audit.keys_and_indexes(src), audit.rls_state(src)
    catalog = {"single_year_keys", "expected_keys_missing"}
    assert {c: found[c] for c in DEFECTS if c not in catalog} == {c: expected[c] for c in DEFECTS if c not in catalog}
    assert set(keys.frame["kind"]) == {"not visible over REST"}
    assert set(rls.frame["rls"]) == {"not visible over REST"}
    not_run = {f.check: (f.count, f.not_run, f.found) for f in (*keys.findings, *rls.findings)}
    assert not_run == dict.fromkeys(["single_year_keys", "expected_keys_missing", "rls_disabled"],
                                    (None, "not visible over REST", False))


# --- a clean database ----------------------------------------------------------------------------


def build_clean(path: Path) -> None:
    """Consistent rows: same email in two years, scores and answers in the same year per cycle,
    national rows for every (year, cycle) with scores."""
    con = duckdb.connect(str(path))
    schema.create_schema(con, "duckdb")
    est = uuid.uuid4()
    con.execute("INSERT INTO establishments (id, knack_id, name) VALUES (?, 'k1', 'School')", [est])
    plan = [("a@school.ac.uk", "2024/2025", 2), ("a@school.ac.uk", "2025/2026", 1), ("b@school.ac.uk", "2025/2026", 1)]
    for k, (email, year, cycles) in enumerate(plan):
        sid = uuid.uuid4()
        con.execute("INSERT INTO students (id, knack_id, email, establishment_id, academic_year) VALUES (?, ?, ?, ?, ?)",
                    [sid, f"r{k}", email, est, year])
        for c in range(1, cycles + 1):
            day = date(int(year[:4]), 9 + c, 1)
            con.execute("INSERT INTO vespa_scores (student_id, cycle, vision, effort, systems, practice, attitude, "
                        "overall, completion_date, academic_year) VALUES (?, ?, ?, 5, 5, 5, 5, 5, ?, ?)",
                        [sid, c, 3 + c, day, year])
            con.executemany("INSERT INTO question_responses (student_id, cycle, question_id, response_value, "
                            "academic_year) VALUES (?, ?, ?, 3, ?)", [[sid, c, f"q{n}", year] for n in (1, 2)])
    for year, cycle in (("2024/2025", 1), ("2024/2025", 2), ("2025/2026", 1)):
        for element in schema.ELEMENTS:
            con.execute("INSERT INTO national_statistics (cycle, academic_year, element, mean, \"count\", distribution) "
                        "VALUES (?, ?, ?, 5, 1, ?)", [cycle, year, element, json.dumps([0] * 10)])
    con.executemany("INSERT INTO academic_years (academic_year) VALUES (?)", [["2024/2025"], ["2025/2026"]])
    con.close()


@pytest.fixture
def clean_db(tmp_path) -> Path:
    path = tmp_path / "clean.duckdb"
    build_clean(path)
    return path


def test_clean_database_has_no_findings(clean_db):
    with open_target(f"duckdb:{clean_db}") as t:
        found = run_all(audit.Source(t))
    assert found == dict.fromkeys(found, 0)
    assert set(found) == set(DEFECTS)


# --- backup and checksums ------------------------------------------------------------------------


def test_backup_is_stable_and_changes_with_a_row(clean_db, tmp_path):
    def take(folder):
        with open_target(f"duckdb:{clean_db}") as t:
            return audit.backup(t, tmp_path / folder).set_index("table")

    first, second = take("b1"), take("b2")
    assert first.drop(columns="file").equals(second.drop(columns="file"))
    assert first.loc["students", "rows"] == 3 and (tmp_path / "b1" / "students.parquet").is_file()
    con = duckdb.connect(str(clean_db))
    con.execute("UPDATE question_responses SET response_value = 4 WHERE question_id = 'q1' AND cycle = 2")
    con.close()
    third = take("b3")
    changed = first.index[first["content_sha256"] != third["content_sha256"]].tolist()
    assert changed == ["question_responses"]
    assert third.loc["question_responses", "file_sha256"] != first.loc["question_responses", "file_sha256"]


rows_strategy = st.lists(st.tuples(st.integers(-5, 5), st.one_of(st.none(), st.text(max_size=4))), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, seed=st.randoms(use_true_random=False))
def test_content_checksum_ignores_row_and_column_order(rows, seed):
    table = pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows]})
    order = list(range(len(rows)))
    seed.shuffle(order)
    shuffled = table.take(order).select(["b", "a"])
    assert audit.content_checksum(shuffled) == audit.content_checksum(table)
    changed = table.set_column(0, "a", pa.array([r[0] + (k == 0) for k, r in enumerate(rows)]))
    assert audit.content_checksum(changed) != audit.content_checksum(table)


# --- previous audits -----------------------------------------------------------------------------


def write_audit(outputs: Path, name: str, target: str, started: str, counts: pd.DataFrame, runbook_name="audit"):
    run_dir = outputs / started[:10] / name
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"runbook": runbook_name, "target": target, "started_at": started}))
    counts.to_csv(run_dir / "counts.csv", index=False)
    return run_dir


def test_find_previous_and_compare(clean_db, tmp_path):
    with open_target(f"duckdb:{clean_db}") as t:
        now = audit.counts(t).frame
        target = t.describe()
    older = now.copy()
    older.loc[older["table"] == "students", "n"] += 2  # two students more before: history lost
    write_audit(tmp_path, "a_old", target, "2025-01-01T01:00:00", now)
    newest = write_audit(tmp_path, "b_new", target, "2025-02-01T01:00:00", older)
    write_audit(tmp_path, "c_other", "duckdb:other.duckdb", "2025-03-01T01:00:00", now)
    write_audit(tmp_path, "d_profile", target, "2025-04-01T01:00:00", now, runbook_name="csv_profile")
    assert audit.find_previous(tmp_path, target) == newest
    assert audit.find_previous(tmp_path, target, exclude=newest).name == "a_old"
    assert audit.find_previous(tmp_path, "duckdb:nowhere") is None
    diff = audit.compare_previous(now, newest)
    assert diff.frame[["table", "previous", "current", "change"]].values.tolist() == [
        ["students", 3, 1, -2], ["students", 4, 2, -2]]
    assert diff.finding("rows_lost_since_previous").count == 4
    assert audit.compare_previous(now, now).frame.empty
    assert audit.compare_previous(now, None).finding("rows_lost_since_previous").count == 0


# --- verdict semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "fail_on", "passed"),
    [
        (0, [], True),
        (5, [], True),  # an observation
        (5, ["F10"], False),  # named by code
        (5, ["f10_cycle_copies"], False),  # named by check
        (0, ["F10"], True),  # nothing found
        (5, ["F2"], True),  # another finding named
    ],
)
def test_record_passes_unless_named_in_fail_on(tmp_path, count, fail_on, passed):
    run = runbook.Run("audit", "t1", tmp_path, {}, unattended=True)
    section = audit.Section("s", pd.DataFrame(), [audit.Finding("f10_cycle_copies", count, "d")])
    assert audit.record(run, section, fail_on) == [passed]
    assert run.checks[0]["figures"]["code"] == "F10" and run.checks[0]["figures"]["count"] == count


@pytest.mark.parametrize(
    ("fail_on", "checks"),
    [
        ([], []),  # not run, not named: listed as not run, no check recorded (never "passed")
        (["F2"], [False]),  # named by code: the alarm cannot be evaluated, so the run fails
        (["single_year_keys"], [False]),  # named by check
        (["F10"], []),  # another check named
    ],
)
def test_record_a_check_that_could_not_run(tmp_path, fail_on, checks):
    run = runbook.Run("audit", "t1", tmp_path, {}, unattended=True)
    section = audit.Section("s", pd.DataFrame(), [audit.Finding.unavailable("single_year_keys", "not visible over REST")])
    assert audit.record(run, section, fail_on) == [False if checks else None]
    assert [c["passed"] for c in run.checks] == checks
    assert run.records["checks_not_run"] == [{"check": "single_year_keys", "code": "F2", "reason": "not visible over REST"}]
    assert all("not run: not visible over REST" in c["detail"] and c["figures"]["count"] is None for c in run.checks)


def test_rls_on_duckdb_is_not_run(clean_db):
    with open_target(f"duckdb:{clean_db}") as t:
        finding = audit.rls_state(t).finding("rls_disabled")
    assert finding.count is None and finding.not_run.startswith("not applicable") and not finding.found


def test_unknown_fail_on_is_refused():
    with pytest.raises(ParameterError, match="F99"):
        audit.validate_fail_on(["F2", "F99"])


# --- the notebook end to end ---------------------------------------------------------------------


@pytest.mark.notebook
def test_notebook_end_to_end(generated, tmp_path, capsys):
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(tmp_path), "run", "audit",
            "-p", f"target=duckdb:{generated.database}", "-p", f"backup_dir={tmp_path / 'backups'}"]
    assert cli.main(argv) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((first / "manifest.json").read_text())
    checks = {c["name"]: c for c in manifest["checks"]}
    assert manifest["status"] == "passed" and set(DEFECTS) <= set(checks)
    assert checks["f10_cycle_copies"]["figures"]["count"] == generated.damage["f10_copy_rows"]
    assert checks["backup_matches_counts"]["passed"]
    assert {b["table"] for b in manifest["backup"]} == {t.name for t in schema.PRODUCTION_TABLES}
    # the restore point holds raw data: outside the evidence folder, owner-only (docs/ARCHITECTURE.md, “Evidence and privacy”)
    restore = Path(manifest["restore_point"])
    assert first not in restore.parents and (tmp_path / "backups") in restore.parents
    assert {p.name for p in restore.glob("*.parquet")} == {f"{t.name}.parquet" for t in schema.PRODUCTION_TABLES}
    assert restore.stat().st_mode & 0o077 == 0
    assert not list(first.rglob("*.parquet"))
    assert cli.main([*argv, "-p", "fail_on=[F10]"]) == 1
    second = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["previous_audit"] == first.name
    assert [c["name"] for c in manifest["checks"] if not c["passed"]] == ["f10_cycle_copies"]
