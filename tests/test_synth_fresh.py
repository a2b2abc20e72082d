"""The fresh export of the current year and its truth file.

Checked independently of the generator's bookkeeping: the export is parsed with Python's csv
module and decoded with ``vespa_lib.rules.knack``; the database is queried with DuckDB SQL; the import
row builder (``vespa_lib.rules.rows``) reads the export as the sync will.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from datetime import date
from pathlib import Path

import duckdb
import pytest

from vespa_lib.errors import ParameterError, SnapshotError
from vespa_lib.rules import knack, years
from vespa_lib.rules.rows import build_rows
from vespa_lib.sandbox.synth import generate, generate_fresh_export
from vespa_lib.sources.snapshot import open_snapshot

N, CAL = "2025/2026", "2026/2026"
TAG = "2026-03-15"
CYCLE_FIELDS = {1: range(155, 161), 2: range(161, 167), 3: range(167, 173)}
CURRENT_FIELDS = range(147, 153)


def sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A generated snapshot + damaged database (default scale), hashed before the export."""
    return generate(tmp_path_factory.mktemp("fresh") / "out").out_dir


@pytest.fixture(scope="module")
def run(base):
    before = sha(base)
    export = generate_fresh_export(base)
    after = {k: v for k, v in sha(base).items() if not k.startswith("fresh")}
    return export, before, after


@pytest.fixture(scope="module")
def truth(run):
    return read(run[0].parent / "fresh_truth.csv")


@pytest.fixture(scope="module")
def o10(run) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in read(run[0] / f"FullObject_10_{TAG}.csv")}


@pytest.fixture(scope="module")
def db(base):
    con = duckdb.connect(str(base / "production.duckdb"), read_only=True)
    yield con
    con.close()


def cells_scores(rec: dict[str, str]) -> dict[int, tuple]:
    """Kept cycles of an export record: six decoded scores per taken cycle, F10 copies dropped."""
    def six(fields):
        vals = tuple(knack.decode_score(rec[f"field_{f}"]).value for f in fields)
        return None if None in vals else vals
    cyc = {c: v for c, f in CYCLE_FIELDS.items() if (v := six(f)) is not None}
    cur, cur_six = knack.decode_score(rec["field_146"]).value, six(CURRENT_FIELDS)
    return {c: v for c, v in cyc.items() if not (c != cur and v == cur_six == cyc.get(cur))}


def db_scores(db, email: str) -> dict[int, tuple]:
    rows = db.execute("SELECT v.cycle, v.vision, v.effort, v.systems, v.practice, v.attitude, v.overall "
                      "FROM vespa_scores v JOIN students s ON s.id = v.student_id "
                      "WHERE s.email = ? AND s.academic_year = ? AND v.academic_year IN (?, '2025-26')",
                      [email, N, N]).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_inputs_untouched(run):
    _, before, after = run
    assert before == after and "production.duckdb" in after and "truth.csv" in after


def test_deterministic_for_a_seed(base, run, tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for f in ("production.duckdb", "truth.csv"):
            shutil.copy(base / f, tmp_path / name / f)
    for name, seed in (("a", 2025), ("b", 2025), ("c", 9)):
        generate_fresh_export(tmp_path / name, seed=seed)
    a, b, c = (sha(tmp_path / n) for n in "abc")
    assert a == b
    assert {k: v for k, v in sha(base).items() if k.startswith("fresh")} == {k: v for k, v in a.items()
                                                                           if k.startswith("fresh")}
    assert a["fresh_truth.csv"] != c["fresh_truth.csv"]


def test_export_format_matches_the_snapshot(run, base):
    export = run[0]
    names = sorted(p.name for p in export.iterdir())
    assert names == [f"FullObject_10_{TAG}.csv", f"FullObject_29_{TAG}.csv", f"FullObject_6_{TAG}.csv"]
    for obj, num in (("object_10", 10), ("object_29", 29), ("object_6", 6)):
        fresh = (export / f"FullObject_{num}_{TAG}.csv").read_bytes()
        old = (base / "snapshot" / f"FullObject_{num}_2025.csv").read_bytes()
        assert fresh.split(b"\n", 1)[0] == old.split(b"\n", 1)[0], obj  # same header row, BOM included
    text = (export / f"FullObject_10_{TAG}.csv").read_text(encoding="utf-8-sig")
    records = read(export / f"FullObject_10_{TAG}.csv")
    assert text.count("\n") > 3 * len(records)  # F5: multi-line comment cells
    assert "field_133" not in records[0]
    cells = [r["field_197_email"] for r in records]
    assert any("mailto:" in c for c in cells) and any(c != c.strip() for c in cells)
    assert any(r["field_155"].endswith(".0") for r in records)  # F7


def test_every_planted_kind_present(truth):
    kinds = Counter((r["object"], r["expected"], r["reason"], r["drift"]) for r in truth)
    for key in (("object_10", "sync", "", "new"), ("object_10", "sync", "", "changed"),
                ("object_10", "sync", "", "unchanged"), ("db_student", "extra", "deleted_from_knack", "extra"),
                ("object_10", "set_aside", "stale_date", ""), ("object_10", "set_aside", "no_date", ""),
                ("object_10", "set_aside", "bad_date", ""), ("object_10", "set_aside", "no_email", ""),
                ("object_10", "set_aside", "no_establishment", ""), ("object_29", "sync", "", ""),
                ("object_29", "set_aside", "student_set_aside", "")):
        assert kinds[key] > 0, key
    tokens = Counter(t.split(".")[-1].split(":")[-1] for r in truth for t in r["changed_columns"].split(";") if t)
    assert tokens["vision"] > 0 and tokens["insert"] > 0 and tokens["delete"] > 0 and tokens["academic_year"] > 0


def test_drift_agrees_with_the_database(truth, o10, db):
    current = {e for (e,) in db.execute("SELECT email FROM students WHERE academic_year = ?", [N]).fetchall()}
    exported = {knack.decode_email(r["field_197_email"]).value for r in o10.values()}
    synced = [r for r in truth if r["object"] == "object_10" and r["expected"] == "sync"]
    for r in synced:
        email = knack.decode_email(o10[r["record_id"]]["field_197_email"]).value
        assert email == r["email"]
        assert (r["drift"] == "new") == ((email not in current) or r["academic_year"] != N), r
        kept = cells_scores(o10[r["record_id"]])
        assert int(r["expected_score_rows"]) == len(kept)
        stored = db_scores(db, email) if r["drift"] != "new" else {}
        if r["drift"] == "unchanged":
            assert kept == stored
        if "vision" in {t.split(".")[-1] for t in r["changed_columns"].split(";")}:
            assert any(kept[c][0] != stored[c][0] for c in kept.keys() & stored.keys())
    extras = {r["email"] for r in truth if r["reason"] == "deleted_from_knack"}
    assert extras == current - exported  # every deleted student listed, nothing else


def test_archived_year_records_are_set_aside(truth, o10, base):
    snap = {r["email"]: r for r in read(base / "truth.csv") if r["object"] == "object_10" and r["expected"] == "import"}
    stale = [r for r in truth if r["reason"] == "stale_date"]
    synced = {r["email"] for r in truth if r["expected"] == "sync"}
    for r in stale:
        day = knack.completion_date(knack.decode_date(o10[r["record_id"]]["field_855_date"]))
        assert years.academic_year_for(day) == "2024/2025" and r["email"] in snap
    assert any(r["email"] in synced for r in stale)  # a re-enrolled student's old record is still in Knack


def test_reenrolled_and_blank_dates(truth, o10, base):
    snap = {r["email"]: r for r in read(base / "truth.csv") if r["object"] == "object_10" and r["expected"] == "import"}
    new = [r for r in truth if "reenrolled_new" in r["quirks"].split(";")]
    # each school syncs into its own running year: N for UK-rule schools, the calendar year of as_of
    # (2026/2026 on 2026-03-15) for calendar-year schools (docs/DOMAIN.md, “Academic years”)
    assert new and all(r["drift"] == "new" and r["academic_year"] in (N, CAL) for r in new)
    assert all(r["email"] in snap and snap[r["email"]]["record_id"] != r["record_id"] for r in new)
    blank = {i for i, rec in o10.items() if knack.is_blank(rec["field_855_date"])}
    rows = {r["record_id"]: r for r in truth if r["object"] == "object_10"}
    assert blank and all((rows[i]["expected"], rows[i]["reason"]) == ("set_aside", "no_date") for i in blank)


def test_f10_record_in_export_keeps_one_cycle(truth, o10):
    f10 = [r for r in truth if "f10_copy" in r["quirks"].split(";")]
    assert f10
    for r in f10:
        rec = o10[r["record_id"]]
        copies = [tuple(rec[f"field_{f}"] for f in CYCLE_FIELDS[c]) for c in (1, 2, 3)]
        assert copies[0] == copies[1] == copies[2] and rec["field_146"] == "1"
        assert r["expected_score_rows"] == "1" and r["drift"] == "unchanged"


def test_import_row_builder_reads_the_export_alike(run, truth, db):
    """The same rule chains over the export: every synced key is built, with its score row count.
    Blank dates differ by design: the import uses the snapshot's year, the sync sets them aside (F1)."""
    rows = build_rows(open_snapshot(run[0]), N, db, calendar_year=CAL)  # as the sync builds them
    built = Counter((s["email"], s["academic_year"]) for s in rows.vespa_scores.to_pylist())
    students = {(s["email"], s["academic_year"]) for s in rows.students.to_pylist()}
    for r in truth:
        if r["object"] == "object_10" and r["expected"] == "sync":
            assert built[(r["email"], r["academic_year"])] == int(r["expected_score_rows"]), r
    synced = {(r["email"], r["academic_year"]) for r in truth if r["expected"] == "sync" and r["object"] == "object_10"}
    no_date = {r["email"] for r in truth if r["reason"] == "no_date"}
    assert synced <= students and {e for e, _ in students - synced} <= no_date


@pytest.mark.parametrize("case, as_of, remove, error", [
    ("as_of outside the database's current year", date(2026, 9, 1), None, ParameterError),
    ("database missing", date(2026, 3, 15), "production.duckdb", SnapshotError),
    ("snapshot truth missing", date(2026, 3, 15), "truth.csv", SnapshotError),
])
def test_refuses_bad_inputs(base, tmp_path, case, as_of, remove, error):
    for f in ("production.duckdb", "truth.csv"):
        if f != remove:
            shutil.copy(base / f, tmp_path / f)
    with pytest.raises(error):
        generate_fresh_export(tmp_path, as_of=as_of)


def test_calendar_year_schools_sync_in_the_calendar_year_of_the_export_date(truth, o10):
    """Generated for 2026-03-15: every synced record of a calendar-year school is dated in 2026 (from its
    late-January start or 1 January, before the export date) and syncs as 2026/2026, never 2025/2025."""
    calendar = [r for r in truth if r["object"] == "object_10" and r["expected"] == "sync"
                and years.is_calendar_label(r["academic_year"])]
    assert calendar and {r["academic_year"] for r in calendar} == {CAL}
    for r in calendar:
        day = knack.completion_date(knack.decode_date(o10[r["record_id"]]["field_855_date"]))
        assert date(2026, 1, 1) <= day < date(2026, 3, 15)
    extras = [r for r in truth if r["object"] == "db_student" and r["reason"] == "mislabelled_calendar_year"]
    assert extras and all(r["academic_year"] == N for r in extras)
