"""The synthetic snapshot generator and the demo summary (docs/DOMAIN.md, “Reading the files”; docs/DOMAIN.md, “The system”).

Files are parsed independently (Python's csv module, DuckDB), never through the generator's own
bookkeeping; the truth file is re-derived with ``vespa_lib.rules.years`` and ``vespa_lib.rules.knack``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import duckdb
import pytest

from vespa_lib.errors import ParameterError
from vespa_lib.rules import knack, years
from vespa_lib.sandbox.demo import database_summary, snapshot_summary, step_generate
from vespa_lib.sandbox.synth import generate

N = "2024/2025"
ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")
C_FIELDS = {1: range(155, 161), 2: range(161, 167), 3: range(167, 173)}
CUR_FIELDS = range(147, 153)


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "out")


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def files(gen):
    return {o: read(p) for o, p in gen.snapshot_files.items()}


@pytest.fixture(scope="module")
def truth(gen):
    return read(gen.truth)


@pytest.fixture(scope="module")
def db(gen):
    con = duckdb.connect(str(gen.database), read_only=True)
    yield con
    con.close()


def digest(out: Path) -> dict[str, str]:
    paths = [*sorted((out / "snapshot").glob("*.csv")), out / "truth.csv"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def db_digest(path: Path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT (SELECT sum(hash(email, academic_year, knack_id)) FROM students), "
                           "(SELECT sum(hash(cycle, vision, overall, academic_year)) FROM vespa_scores), "
                           "(SELECT sum(hash(question_id, response_value, academic_year)) FROM question_responses)"
                           ).fetchall()
    finally:
        con.close()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", students=120, seed=7)
    b = generate(tmp_path / "b", students=120, seed=7)
    c = generate(tmp_path / "c", students=120, seed=8)
    assert digest(a.out_dir) == digest(b.out_dir)
    assert db_digest(a.database) == db_digest(b.database)
    assert all(digest(a.out_dir)[k] != v for k, v in digest(c.out_dir).items())
    assert db_digest(a.database) != db_digest(c.database)


def test_too_few_students_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="at least 100"):
        generate(tmp_path, students=10)


def test_records_are_not_lines_and_bom(gen, files):
    for obj, path in gen.snapshot_files.items():
        raw = path.read_bytes()
        assert gen.records[obj] == len(files[obj])
        assert gen.lines[obj] == raw.count(b"\n")
    ten = gen.snapshot_files["object_10"].read_bytes()
    assert ten.startswith(b"\xef\xbb\xbf")
    assert ten.count(b"\n") > 20 * len(files["object_10"])  # F5: ~100 lines per record
    assert b"\r\n" not in ten and gen.snapshot_files["object_6"].read_bytes().count(b"\r\n") == len(files["object_6"]) + 1
    assert "field_133" not in files["object_10"][0]


def cells(rows, column):
    return [r[column] for r in rows]


def test_object10_value_quirks(files):
    rows = files["object_10"]
    emails = cells(rows, "field_197_email")
    assert sum(e.startswith('<a href="mailto:') for e in emails) >= 3
    assert sum(e != e.strip() and e != e.lower() for e in emails) >= 3
    assert sum(e == "" for e in emails) >= 3
    assert sum(knack.decode_email(e).reason == "invalid_email" for e in emails) >= 3
    assert sum(knack.decode_email(e).value.endswith("@vespa.academy") for e in emails if knack.decode_email(e).ok) >= 2
    decoded = [knack.decode_email(e).value for e in emails if knack.decode_email(e).ok]
    assert len(decoded) - len(set(decoded)) >= 3  # duplicate records of one student
    assert any(r[f"field_{f}"].endswith(".0") for r in rows for f in [*CUR_FIELDS, *C_FIELDS[1], *C_FIELDS[2], *C_FIELDS[3]])
    dates = cells(rows, "field_855_date")
    assert sum(bool(re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d", d)) for d in dates) >= 3
    assert sum(bool(re.fullmatch(r"\d\d/\d\d/\d{4}", d)) for d in dates) >= 3
    assert sum(d == "" for d in dates) > len(dates) / 2
    text = [r[f] for r in rows for f in ("field_2302", "field_2303", "field_2304", "field_2499", "field_2493", "field_2494")]
    assert sum("\n" in t and '"' in t and "," in t for t in text) >= 10
    assert any(len(t) > 3000 for t in text)
    assert any(t.startswith("=HYPERLINK(") for t in text) and any("DROP TABLE students" in t for t in text)


def year_of(cell: str, school=None) -> str | None:
    d = knack.decode_date(cell)
    if not d.ok:
        return None
    rule = {} if school is None else {"is_australian": school[0], "use_standard_year": school[1]}
    return years.academic_year_for(knack.completion_date(d), **rule)


def test_dates_cover_stale_outside_and_bad(files):
    dates = [d for d in cells(files["object_10"], "field_855_date") if d]
    found = [year_of(d) for d in dates]
    assert sum(y is None for y in found) >= 3  # bad_date
    assert sum(y is not None and y < N for y in found) >= 3  # stale (2023/2024)
    assert sum(y is not None and y > N for y in found) >= 3  # after the snapshot's year
    assert sum(y == N for y in found) >= 15


def test_f10_copies_in_snapshot(files):
    copies = [r for r in files["object_10"] if r["field_146"] == "1" and r["field_155"]
              and all(r[f"field_{a}"] == r[f"field_{b}"] for a, b in zip(C_FIELDS[1], C_FIELDS[2], strict=True))]
    assert len(copies) >= 3


def test_object29_quirks(files):
    rows = files["object_29"]
    values = {r[f"field_{f}"] for r in rows for f in range(1953, 2046)}
    assert {"6", "9", "-1", "0"} <= values
    q29 = [int(v) for r in rows for f in (2927, 2928, 2929) if (v := r[f"field_{f}"])]
    assert sum(v > 5 for v in q29) >= 3  # percentages
    links = cells(rows, "field_792")
    assert sum(knack.is_object_id(x) for x in links) >= 50 and sum("@" in x for x in links) >= 50
    share = sum(bool(e) for e in cells(rows, "field_2732_email")) / len(rows)
    assert 0.3 < share < 0.6  # docs/DOMAIN.md, “Knack fields”: ~45 %


def test_truth_covers_every_record_at_its_line(gen, truth):
    for obj, path in gen.snapshot_files.items():
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            starts, ids, line = [], [], 2
            for row in reader:
                starts.append(line)
                ids.append(row[0])
                line = reader.line_num + 1
        rows = [t for t in truth if t["object"] == obj]
        assert [t["record_id"] for t in rows] == ids
        assert [int(t["start_line"]) for t in rows] == starts
        assert [int(t["record_number"]) for t in rows] == list(range(1, len(ids) + 1))


def expected_for(year: str) -> tuple[str, str]:
    bench = years.benchmark_year(year)
    return ("import", "") if bench == N else ("skip_other_year", "stale_date" if bench < N else "outside_import_year")


def test_truth_year_chain_recomputed(files, truth, db):
    schools = {k: (a, s) for k, a, s in db.execute(
        "SELECT knack_id, is_australian, use_standard_year FROM establishments").fetchall()}
    by_id = {r["id"]: r for r in files["object_10"]}
    checked = 0
    for t in (t for t in truth if t["object"] == "object_10" and t["year_rule"]):
        cell, school = by_id[t["record_id"]]["field_855_date"], schools[t["true_establishment_knack_id"]]
        if t["year_rule"] == "bad_date":
            assert year_of(cell) is None and t["reason"] == "bad_date"
            continue
        year = year_of(cell, school) if cell else (
            "2025/2025" if years.uses_calendar_year(*school) else N)
        assert t["true_academic_year"] == year
        if t["expected"] in ("import", "skip_other_year"):
            assert (t["expected"], t["reason"]) == expected_for(year)
        checked += 1
    assert checked > 200


def kept_cycles(r: dict[str, str]) -> int:
    """Cycles taken, minus F10 copies (cycles other than field_146 equal to the current scores)."""
    cur = [r[f"field_{f}"] for f in CUR_FIELDS]
    taken = [c for c in (1, 2, 3) if r[f"field_{C_FIELDS[c][0]}"]]
    return sum(1 for c in taken if str(c) == r["field_146"]
               or [r[f"field_{f}"] for f in C_FIELDS[c]] != cur)


def test_truth_score_rows_and_reasons(files, truth, gen):
    by_id = {r["id"]: r for r in files["object_10"]}
    rows = [t for t in truth if t["object"] == "object_10"]
    for t in rows:
        expect = kept_cycles(by_id[t["record_id"]]) if t["expected"] == "import" else 0
        assert int(t["expected_score_rows"]) == expect
    reasons = {t["reason"] for t in rows}
    assert {"no_email", "invalid_email", "bad_date", "stale_date", "outside_import_year", "no_establishment",
            "no_scores", "duplicate_record"} <= reasons
    assert {t["reason"] for t in truth if t["object"] == "object_29"} >= {"unlinked_answers", "student_set_aside"}
    assert gen.outcomes["object_10"]["import"] == sum(t["expected"] == "import" for t in rows)


def test_damaged_database(gen, db):
    idx = db.execute("SELECT expressions FROM duckdb_indexes() WHERE table_name = 'students' AND is_unique").fetchall()
    assert ("[email]",) in idx  # F2 key: unique(email) alone
    assert db.execute("SELECT count(*) - count(DISTINCT email) FROM students").fetchone()[0] == 0
    national = {y for (y,) in db.execute("SELECT DISTINCT academic_year FROM national_statistics").fetchall()}
    assert national == {"2025/2026"}  # F9: 2024/2025 missing from the dashboard's list
    assert db.execute("SELECT count(*) FROM vespa_scores WHERE academic_year = ?", [N]).fetchone()[0] > 0
    f10 = db.execute("""SELECT count(*) FROM vespa_scores a JOIN vespa_scores b ON a.student_id = b.student_id
        AND a.academic_year = b.academic_year AND b.cycle = 1 AND a.cycle > 1
        WHERE (a.vision, a.effort, a.systems, a.practice, a.attitude, a.overall, a.completion_date)
            IS NOT DISTINCT FROM (b.vision, b.effort, b.systems, b.practice, b.attitude, b.overall, b.completion_date)
        """).fetchone()[0]
    assert f10 == gen.damage["f10_copy_rows"] > 0
    f8 = db.execute("""SELECT count(DISTINCT q.student_id) FROM question_responses q WHERE NOT EXISTS (
        SELECT 1 FROM vespa_scores s WHERE s.student_id = q.student_id AND s.academic_year = q.academic_year
        AND s.cycle = q.cycle)""").fetchone()[0]
    assert f8 == gen.damage["f8_students"] > 0
    bad = dict(db.execute("""SELECT 'scores', count(*) FROM vespa_scores WHERE academic_year = '2025-26'
        UNION ALL SELECT 'answers', count(*) FROM question_responses WHERE academic_year = '2025-26'""").fetchall())
    assert bad == {"scores": gen.damage["noncanonical_score_rows"], "answers": gen.damage["noncanonical_answer_rows"]}
    assert db.execute("SELECT count(*) FROM students WHERE email LIKE '%@vespa.academy'").fetchone()[0] >= 2
    aus = db.execute("SELECT use_standard_year FROM establishments WHERE is_australian").fetchall()
    assert {(False,), (None,)} <= set(aus)
    assert db.execute("SELECT count(*) FROM establishments WHERE status = 'Cancelled'").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM academic_years WHERE is_current").fetchone()[0] == 1


def test_reenrolled_students_have_new_record_ids(files, db):
    snap = {knack.decode_email(r["field_197_email"]).value: r["id"] for r in files["object_10"]}
    current = db.execute("SELECT email, knack_id FROM students WHERE academic_year = '2025/2026'").fetchall()
    moved = [e for e, k in current if e in snap and snap[e] != k]
    assert len(moved) >= 20


def test_field_133_option(tmp_path):
    r = generate(tmp_path, students=150, include_field_133=True)
    rows = read(r.snapshot_files["object_10"])
    names = {n for (n,) in duckdb.connect(str(r.database), read_only=True).execute(
        "SELECT name FROM establishments").fetchall()}
    filled = [x["field_133"] for x in rows if x["field_133"]]
    assert len(filled) > len(rows) / 2 and sum(v in names for v in filled) >= len(filled) - 3
    t = read(r.truth)
    assert {x["establishment_rule"] for x in t if x["expected"] == "import"} >= {"connection"}
    assert "unknown_establishment" in {x["reason"] for x in t}


def test_demo_generates_once_and_summarises(tmp_path, gen):
    out = tmp_path / "demo"
    assert step_generate(out, students=120) is True
    assert step_generate(out, students=120) is False
    summary = snapshot_summary(out)
    assert all(lines >= records for _, records, lines in summary)
    tables = {(t, y) for t, y, _, _ in database_summary(out)}
    assert ("national_statistics", "2025/2026") in tables and ("national_statistics", N) not in tables
