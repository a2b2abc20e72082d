"""The import's orchestration (vespa_lib.importer) on generated data in a real PostgreSQL built like
production (docs/DOMAIN.md, “Production schema” without the workbook's additions, F2 key unique(email)), and on DuckDB."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from test_audit import load_into_postgres

from vespa_lib import importer
from vespa_lib.sandbox import synth
from vespa_lib.write.guard import apply_undo, plan_undo, table_checksums
from vespa_lib.write.migrations import pending

YEAR = "2024/2025"
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
        "national_statistics", "establishments"]
ENV = "VESPA_TEST_IMPORTER_DSN"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("importer")
    synth.generate(folder)
    return folder


@pytest.fixture(scope="module")
def truth(generated) -> list[dict]:
    with (generated / "truth.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def pg(generated, pg_dsn, monkeypatch):
    """The damaged production loaded into a fresh PostgreSQL database, opened for the import."""
    load_into_postgres(generated / "production.duckdb", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as con:  # ids copied explicitly: move the serial on
        con.execute("SELECT setval(pg_get_serial_sequence('academic_years', 'id'), max(id)) FROM academic_years")
    monkeypatch.setenv(ENV, pg_dsn)
    target = importer.open_import(f"postgres:{ENV}")
    yield target
    target.close()


def _prepare(target, generated, scope=None):
    snap, _ = importer.preflight(generated / "snapshot", target)
    rows = importer.import_rows(snap, YEAR, target, convert_q29_percentage=True, establishment_scope=scope)
    desired = importer.desired_for(rows, target.con, YEAR, scope)
    return rows, desired, importer.archive_labels(desired, True)


def _apply(target, rows, desired, labels, run_id="r1"):
    plan = importer.plan_import(target.con, desired, labels)
    return importer.apply_import(target.con, desired, rows, approve=plan.fingerprint, run_id=run_id,
                                 target_kind="postgres", archive=labels, planned=plan)


def _slice(con, years: list[str]) -> dict:
    """Checksums of the rows of ``years`` in every data table (reads)."""
    out = {}
    for table in ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics"):
        rows = con.execute(f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t "
                           "WHERE academic_year = ANY(%s)", [years]).fetchone()
        out[table] = rows[0]
    return out


@pytest.mark.postgres
def test_plan_shows_migrations_first_and_no_data_until_applied(pg, generated):
    rows, desired, labels = _prepare(pg, generated)
    plan = importer.plan_import(pg.con, desired, labels)
    assert plan.kind == "migrations" and plan.counts() == {}
    assert any("unique(email)" in m["name"] for m in plan.migrations)  # F2 key replacement shown
    outcome = importer.apply_import(pg.con, desired, rows, approve=plan.fingerprint, run_id="r1",
                                    target_kind="postgres", archive=labels)
    assert outcome.status == "migrated" and [m["version"] for m in outcome.migrations] == [1, 2, 3, 4, 6]
    assert not pending(pg.con)
    data = outcome.plan
    assert data.kind == "data" and data.counts()["students"][YEAR]["insert"] > 0
    assert pg.con.execute("SELECT count(*) FROM students WHERE academic_year = %s AND is_archived",
                          [YEAR]).fetchone()[0] == 0  # migrations alone import nothing


@pytest.mark.postgres
def test_import_lands_every_truth_record_and_nothing_else(pg, generated, truth, pg_dsn):
    rows, desired, labels = _prepare(pg, generated)
    plan = importer.plan_import(pg.con, desired, labels)
    importer.apply_import(pg.con, desired, rows, approve=plan.fingerprint, run_id="m", target_kind="postgres",
                          archive=labels)
    others = _slice(pg.con, ["2023/2024", "2025/2026"])
    before = table_checksums(pg.con, DATA)
    outcome = _apply(pg, rows, desired, labels)
    assert outcome.status == "applied" and importer.applied_matches_plan(outcome)
    landed = set(pg.con.execute("SELECT s.knack_id, s.academic_year, e.knack_id FROM students s JOIN establishments e "
                                "ON e.id = s.establishment_id WHERE s.academic_year = ANY(%s)", [labels]).fetchall())
    want = {(t["record_id"], t["true_academic_year"], t["true_establishment_knack_id"]) for t in truth
            if t["object"] == "object_10" and t["expected"] == "import"}
    assert want <= landed
    stored = set(pg.con.execute("SELECT object, record_id, reason FROM vespa_ops.quarantine WHERE run_id = 'r1'"))
    set_aside = {(t["object"], t["record_id"], t["reason"]) for t in truth if t["object"] != "object_6"
                 and t["expected"] in ("quarantine", "collapsed", "skip_other_year")}
    assert set_aside <= stored
    assert _slice(pg.con, ["2023/2024", "2025/2026"]) == others  # nothing else written; F2 rows untouched
    reenrolled = pg.con.execute("SELECT count(*) FROM students a JOIN students b ON a.email = b.email "
                                "WHERE a.academic_year = %s AND b.academic_year = '2025/2026'", [YEAR]).fetchone()[0]
    assert reenrolled > 0
    again = _apply(pg, rows, desired, labels, run_id="r2")
    assert again.status == "nothing" and again.plan.is_empty
    # archive protection from a separate, plain connection (what the old sync did)
    with psycopg.connect(pg_dsn) as plain:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="archive protection"):
            plain.execute("UPDATE vespa_scores SET vision = 1 WHERE academic_year = %s", [YEAR])
        plain.rollback()
        assert plain.execute("UPDATE vespa_scores SET vision = 1 WHERE academic_year = '2025/2026'").rowcount > 0
        plain.rollback()  # the current year is writable; the change is not kept
    undo = plan_undo(pg.con, "r1")
    apply_undo(pg.con, "r1", approve=undo.fingerprint, undo_run_id="u1", actor="test", target_kind="postgres")
    assert table_checksums(pg.con, DATA) == before


@pytest.mark.postgres
def test_f16_scope_to_one_establishment_touches_no_other(pg, generated):
    _, desired, labels = _prepare(pg, generated)
    plan = importer.plan_import(pg.con, desired, labels)
    importer.apply_import(pg.con, desired, None, approve=plan.fingerprint, run_id="m", target_kind="postgres",
                          archive=labels)
    school = pg.con.execute("SELECT e.knack_id, e.id FROM establishments e JOIN students s ON s.establishment_id = e.id "
                            "GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1").fetchone()
    others = ("SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM (SELECT s.*, v.* FROM students s "
              "LEFT JOIN vespa_scores v ON v.student_id = s.id WHERE s.establishment_id IS DISTINCT FROM %s) x")
    before = pg.con.execute(others, [school[1]]).fetchone()[0]
    rows, desired, labels = _prepare(pg, generated, scope=[school[0]])
    outcome = _apply(pg, rows, desired, labels)
    assert outcome.status == "applied" and outcome.result.applied["applied"]["students"]["insert"] > 0
    assert pg.con.execute(others, [school[1]]).fetchone()[0] == before


@pytest.mark.postgres
def test_sample_rehearsal_writes_nothing_to_postgres(pg, generated):
    rows, _, _ = _prepare(pg, generated)
    before = table_checksums(pg.con, DATA)
    rehearsal = importer.rehearse(pg, rows, YEAR, 20, establishment_scope=None, archive=True)
    assert rehearsal.students == 20 and not rehearsal.applied
    assert table_checksums(pg.con, DATA) == before


def test_sample_rehearsal_on_duckdb_applies_to_a_copy_only(generated, tmp_path):
    path = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", path)
    target = importer.open_import(f"duckdb:{path}")
    try:
        rows, _, _ = _prepare(target, generated)
        before = table_checksums(target.con, DATA)
        rehearsal = importer.rehearse(target, rows, YEAR, 30, establishment_scope=None, archive=True)
        assert rehearsal.applied and rehearsal.verified
        inserted = rehearsal.counts.groupby("table")["insert"].sum()
        assert inserted["students"] + rehearsal.counts.groupby("table")["update"].sum()["students"] == 30
        assert table_checksums(target.con, DATA) == before
        assert pending(target.con)  # the target itself was not even migrated
    finally:
        target.close()


def test_sample_rows_keeps_all_rows_of_the_first_students(generated, tmp_path):
    path = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", path)
    with importer.open_import(f"duckdb:{path}") as target:
        rows, _, _ = _prepare(target, generated)
    sample = importer.sample_rows(rows, 10)
    emails = set(sample.students.column("email").to_pylist())
    assert len(emails) == 10 and emails == set(sorted(set(rows.students.column("email").to_pylist()))[:10])
    for table in ("vespa_scores", "question_responses"):
        full = [e for e in getattr(rows, table).column("email").to_pylist() if e in emails]
        assert getattr(sample, table).num_rows == len(full) > 0


@pytest.mark.parametrize(("mode", "approve", "target"), [
    ("apply", "auto", "postgres:SOME_DSN"),
    ("write", "", "duckdb:x.duckdb"),
])
def test_bad_parameters_are_refused_before_any_work(mode, approve, target):
    with pytest.raises(Exception, match="auto|mode"):
        importer.check_parameters(mode, approve, target)


def _cross_rows(con) -> set:
    return {r[0] for r in con.execute("SELECT q.id FROM question_responses q JOIN students s ON s.id = q.student_id "
                                      "WHERE q.academic_year = '2024/2025' AND s.academic_year <> '2024/2025'")
            .fetchall()}


def test_f8_repair_deletes_exactly_the_duplicates_and_the_plan_counts_every_kept_row(generated, tmp_path):
    """docs/DOMAIN.md, “Failure catalogue” F8: the planted cross-year answer copies are deleted by their own guarded run,
    nothing else is deleted, and after the import year N holds exactly insert + update + unchanged rows."""
    import duckdb

    path = tmp_path / "f8.duckdb"
    shutil.copyfile(generated / "production.duckdb", path)
    target = importer.open_import(f"duckdb:{path}")
    con = target.con
    f8_ids = _cross_rows(con)
    other_ids = {r[0] for r in con.execute("SELECT id FROM question_responses").fetchall()} - f8_ids
    snap, _ = importer.preflight(generated / "snapshot", target)
    rows = importer.import_rows(snap, YEAR, target, convert_q29_percentage=True, establishment_scope=None)
    repairs = importer.repairs_for(rows, con, YEAR)
    assert repairs.f8_rows == len(f8_ids) > 0
    desired = importer.desired_for(rows, con, YEAR, None, repairs)
    labels = importer.archive_labels(desired, True)
    outcome = importer.apply_import(con, desired, rows, approve="auto", run_id="f8", target_kind="duckdb",
                                    archive=labels, repairs=repairs)
    assert outcome.status == "applied", outcome.reason
    assert outcome.repair.applied["applied"]["question_responses"]["delete"] == len(f8_ids)
    left = {r[0] for r in con.execute("SELECT id FROM question_responses").fetchall()}
    assert not (left & f8_ids) and other_ids <= left  # only the duplicates went
    assert not _cross_rows(con)
    for label, cells in outcome.result.plan.counts()["students"].items():
        live = con.execute("SELECT count(*) FROM students WHERE academic_year = ?", [label]).fetchone()[0]
        assert live == cells["insert"] + cells["update"] + cells["unchanged"]
        assert outcome.post_apply_counts[label]["students"] == live
    kept = repairs.counts()["kept_not_in_snapshot"]
    assert importer.reconcile(con, importer.desired_for(rows, con, YEAR))["target_only"].sum() == sum(kept.values())
    assert importer.verify_frame(con, desired)[0].is_empty
    target.close()
    assert duckdb.connect(str(path), read_only=True).execute("SELECT count(*) FROM vespa_ops.ledger WHERE run_id = "
                                                             "'f8-f8'").fetchone()[0] == 1


def _differing_dictionaries(table):
    """``table`` as two chunks whose dictionary-encoded columns each have their own dictionary (what a
    reader of several record batches gives, e.g. PostgreSQL COPY read in blocks)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pa.table({c: table.column(c).cast(table.schema.field(c).type.value_type)
                      if pa.types.is_dictionary(table.schema.field(c).type) else table.column(c)
                      for c in table.column_names})
    half = plain.num_rows // 2
    batches = [pa.RecordBatch.from_arrays([pc.dictionary_encode(part.column(c).combine_chunks())
                                           if pa.types.is_dictionary(table.schema.field(c).type)
                                           else part.column(c).combine_chunks() for c in part.column_names],
                                          schema=table.schema)
               for part in (plain.slice(0, half), plain.slice(half))]
    return pa.Table.from_batches(batches, schema=table.schema)


def test_find_repairs_takes_rows_whose_chunks_have_differing_dictionaries(generated, tmp_path):
    """Arrow's hash join refuses a dictionary key whose chunks carry different dictionaries
    ("Unifying differing dictionaries"): at realistic scale the rows and the live rows arrive in
    several batches. The repairs are the same whatever the chunking."""
    from vespa_lib.rules import rows as rowsmod

    path = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", path)
    with importer.open_import(f"duckdb:{path}", read_only=True) as target:
        rows, _, _ = _prepare(target, generated)
        chunked = _differing_dictionaries(rows.question_responses)
        email = chunked.column("email")
        assert email.num_chunks == 2 and not email.chunk(0).dictionary.equals(email.chunk(1).dictionary)
        split = rowsmod.ImportRows(rows.academic_year, rows.students, rows.vespa_scores, chunked, rows.quarantine,
                                   dict(rows.rule_counts))
        want = importer.repairs_for(rows, target.con, YEAR)
        got = importer.repairs_for(split, target.con, YEAR)
    assert want.kept["question_responses"].num_rows > 0  # the join over the answers' keys has rows to match
    assert got.counts() == want.counts()
    for table, kept in want.kept.items():
        assert sorted(got.kept[table].to_pylist(), key=str) == sorted(kept.to_pylist(), key=str)


def test_rehearsal_of_an_already_imported_year_says_nothing_to_do(generated, tmp_path):
    """Re-planning after an applied import: the sample's rows are all in the target, the rehearsal
    finds nothing to do, writes nothing to the target and its re-plan verifies."""
    path = tmp_path / "p.duckdb"
    shutil.copyfile(generated / "production.duckdb", path)
    with importer.open_import(f"duckdb:{path}") as target:
        rows, _, _ = _prepare(target, generated)
        repairs = importer.repairs_for(rows, target.con, YEAR)
        desired = importer.desired_for(rows, target.con, YEAR, None, repairs)
        labels = importer.archive_labels(desired, True)
        outcome = importer.apply_import(target.con, desired, rows, approve="auto", run_id="r1", target_kind="duckdb",
                                        archive=labels, repairs=repairs)
        assert outcome.status == "applied", outcome.reason
        before = table_checksums(target.con, DATA)
        rehearsal = importer.rehearse(target, rows, YEAR, 30, establishment_scope=None, archive=True)
        assert table_checksums(target.con, DATA) == before
    assert rehearsal.students == 30 and not rehearsal.applied and rehearsal.verified is True
    assert "nothing to do" in rehearsal.note
    changing = rehearsal.counts[["insert", "update", "delete"]].to_numpy().sum()
    assert changing == 0 and rehearsal.counts["unchanged"].sum() > 0


def test_rows_missing_from_keys_keep_their_order_run_after_run():
    """The kept rows' anti-join keeps the rows' own order: a parallel join's output order varies between
    runs, ``_dedupe`` keeps a key's first row, and a different choice is a different plan whose
    fingerprint the apply cannot match (seen on a production-shaped PostgreSQL: every apply refused)."""
    n = 400_000
    rows = pa.table({"email": pa.array([f"s{i % 150_000}@x.uk" for i in range(n)]),
                     "academic_year": pa.array(["2024/2025"] * n), "value": pa.array(range(n), pa.int64())})
    keys_of = pa.table({"email": pa.array([f"s{i}@x.uk" for i in range(0, 150_000, 3)]),
                        "academic_year": pa.array(["2024/2025"] * 50_000)})
    expected = [v for v in range(n) if (v % 150_000) % 3 != 0]
    for _ in range(3):
        got = importer._missing_from(rows, keys_of, ("email", "academic_year"))
        assert got.column("value").to_pylist() == expected
        assert got.column_names == rows.column_names
