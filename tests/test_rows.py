"""build_rows: the rows of one academic year, scored against the generator's truth file, and the
failure catalogue (docs/DOMAIN.md, “Failure catalogue”) reproduced on purpose: F1, F2, F4, F6, F7, F8, F10, F16."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vespa_lib.errors import ParameterError
from vespa_lib.rules import rows_sql
from vespa_lib.rules.knack import q29_from_percentage
from vespa_lib.rules.rows import QUARANTINE_REASONS, ImportRows, _answer_row, build_rows
from vespa_lib.sandbox import synth
from vespa_lib.sources.snapshot import open_snapshot

YEAR = "2024/2025"
O10_FILE = "FullObject_10_2025.csv"


# ----------------------------------------------------------------------------------- fixtures

def _build(folder: Path, year: str = YEAR, convert: bool = True, **kw) -> ImportRows:
    snap = open_snapshot(folder / "snapshot")
    with duckdb.connect(str(folder / "production.duckdb"), read_only=True) as ref:
        return build_rows(snap, year, ref, convert_q29_percentage=convert, **kw)


def _truth(folder: Path) -> list[dict]:
    with (folder / "truth.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    """Generate the default scale at most once per variant (with / without field_133) per module."""
    cache: dict[bool, tuple[Path, ImportRows, list[dict]]] = {}

    def get(include_field_133: bool) -> tuple[Path, ImportRows, list[dict]]:
        if include_field_133 not in cache:
            folder = tmp_path_factory.mktemp(f"synth_{include_field_133}")
            synth.generate(folder, include_field_133=include_field_133)
            cache[include_field_133] = (folder, _build(folder), _truth(folder))
        return cache[include_field_133]
    return get


@pytest.fixture(scope="module", params=[False, True], ids=["no_field_133", "field_133"])
def generated(request, synth_cache) -> tuple[Path, ImportRows, list[dict]]:
    return synth_cache(request.param)


@pytest.fixture(scope="module")
def default(synth_cache) -> tuple[Path, ImportRows, list[dict]]:
    return synth_cache(False)


def _edited(src: Path, dst: Path, edits: dict[str, dict[str, str]]) -> Path:
    """A copy of a generated snapshot with some object_10 cells replaced (record id -> header -> cell)."""
    shutil.copytree(src / "snapshot", dst / "snapshot")
    shutil.copy(src / "production.duckdb", dst / "production.duckdb")
    path = dst / "snapshot" / O10_FILE
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header, records = reader.fieldnames, list(reader)
    for rec in records:
        rec.update(edits.get(rec["id"], {}))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return dst


def _imported(truth: list[dict], quirk: str | None = None) -> list[dict]:
    return [t for t in truth if t["object"] == "object_10" and t["expected"] == "import"
            and (quirk is None or quirk in t["quirks"].split(";"))]


# ------------------------------------------------------------------------------ truth scoring

def test_students_are_exactly_the_truths_imports(generated):
    _, rows, truth = generated
    want = {(t["email"], t["true_academic_year"], t["true_establishment_knack_id"], t["record_id"],
             t["year_rule"], t["establishment_rule"]) for t in _imported(truth)}
    got = {(s["email"], s["academic_year"], s["establishment_knack_id"], s["knack_id"], s["_year_rule"],
            s["_establishment_rule"]) for s in rows.students.to_pylist()}
    assert got == want
    assert rows.students.num_rows == len(want)  # one row per student


def test_score_and_answer_rows_per_student_match_the_truth(generated):
    _, rows, truth = generated
    want_scores = {t["email"]: int(t["expected_score_rows"]) for t in _imported(truth)}
    assert Counter(rows.vespa_scores.column("email").to_pylist()) == want_scores
    want_answers = Counter()
    for t in truth:
        if t["object"] == "object_29" and t["expected"] == "import" and int(t["expected_answer_rows"]):
            want_answers[t["email"]] += int(t["expected_answer_rows"])
    assert Counter(rows.question_responses.column("email").to_pylist()) == want_answers


def test_quarantine_is_exactly_the_truths_set_asides(generated):
    _, rows, truth = generated
    want = {(t["object"], t["record_id"], t["reason"]) for t in truth
            if t["object"] != "object_6" and t["expected"] in ("quarantine", "collapsed", "skip_other_year")}
    # a cycle answered without scores sets that record/cycle aside while its other cycles import
    want |= {("object_29", t["record_id"], "answers_without_scores") for t in truth
             if t["object"] == "object_29" and "answers_without_scores" in t["quirks"].split(";")
             and t["expected"] == "import"}
    got = {(q["object"], q["record_id"], q["reason"]) for q in rows.quarantine.to_pylist()}
    assert got == want
    assert set(rows.quarantine.column("reason").to_pylist()) <= set(QUARANTINE_REASONS)


def test_quarantine_points_at_the_file_line(generated):
    folder, rows, truth = generated
    lines = {(t["object"], t["record_id"]): int(t["start_line"]) for t in truth}
    for q in rows.quarantine.to_pylist():
        assert q["line_number"] == lines[(q["object"], q["record_id"])]
        assert Path(q["source_file"]).parent == folder / "snapshot"
        assert q["detail"]


def test_duplicates_collapse_into_the_truths_kept_record(default):
    _, rows, truth = default
    kept = {t["email"]: t["record_id"] for t in _imported(truth)}
    collapsed = [t for t in truth if t["expected"] == "collapsed"]
    assert collapsed, "the generator plants duplicate records"
    details = {q["record_id"]: q["detail"] for q in rows.quarantine.to_pylist() if q["reason"] == "duplicate_record"}
    for t in collapsed:
        assert details[t["record_id"]] == f"collapsed into {kept[t['email']]}"
    assert rows.rule_counts["duplicate_record"] == len(collapsed)


def test_rule_counts_add_up_to_the_records(generated):
    _, rows, _ = generated
    rc = rows.rule_counts
    n = rows.students.num_rows
    assert rc["year_rule.completion_date"] + rc["year_rule.snapshot_year"] == n
    assert sum(rc[f"establishment_rule.{r}"] for r in ("connection", "object_6", "email_domain")) == n
    q = Counter((r["object"], r["reason"]) for r in rows.quarantine.to_pylist())
    o10_set_aside = sum(k for (obj, _), k in q.items() if obj == "object_10")
    assert n + o10_set_aside + rc["out_of_scope"] == rc["object_10_records"]
    o29_whole = sum(k for (obj, reason), k in q.items() if obj == "object_29" and reason != "answers_without_scores")
    assert rc["object_29_linked"] + o29_whole + rc["out_of_scope.object_29"] == rc["object_29_records"]
    by_reason = Counter(r["reason"] for r in rows.quarantine.to_pylist())
    assert {r: rc[f"quarantine.{r}"] for r in QUARANTINE_REASONS} == {r: by_reason[r] for r in QUARANTINE_REASONS}
    assert (rc["students"], rc["vespa_scores"], rc["question_responses"]) == (
        n, rows.vespa_scores.num_rows, rows.question_responses.num_rows)


# --------------------------------------------------------------------- the failure catalogue

def test_f1_a_blank_date_takes_the_snapshot_year_never_the_clock(default, tmp_path):
    folder, rows, truth = default
    blank = {t["email"] for t in _imported(truth, "blank_date")}
    assert blank
    by_email = {s["email"]: s for s in rows.students.to_pylist()}
    assert all(by_email[e]["_year_rule"] == "snapshot_year" and by_email[e]["academic_year"] == YEAR
               for e in blank)
    # The snapshot's year is the import's year, a parameter: importing 2023/2024 puts the same
    # blank-dated records there, and dated 2024/2025 records become later than the import.
    other = _build(folder, "2023/2024")
    years = {s["email"]: s["academic_year"] for s in other.students.to_pylist()}
    assert {e for e in blank if e in years} == blank and set(years.values()) == {"2023/2024"}
    stale = {t["email"] for t in truth if t["reason"] == "stale_date"}
    assert {s["email"] for s in other.students.to_pylist() if s["_year_rule"] == "completion_date"} <= stale
    # No SQL of the import reads the clock.
    source = Path(rows_sql.__file__).read_text().lower()
    assert not any(word in source for word in ("current_date", "now()", "today", "current_timestamp"))


def test_f2_re_enrolled_students_get_a_row_for_the_import_year(default):
    folder, rows, _ = default
    with duckdb.connect(str(folder / "production.duckdb"), read_only=True) as ref:
        elsewhere = {r[0] for r in ref.sql(
            "SELECT DISTINCT lower(email) FROM students WHERE academic_year <> $y", params={"y": YEAR}).fetchall()}
    ours = {s["email"]: s["academic_year"] for s in rows.students.to_pylist()}
    re_enrolled = elsewhere & set(ours)
    assert re_enrolled and all(ours[e] == YEAR for e in re_enrolled)
    assert rows.rule_counts["re_enrolled"] == len(re_enrolled)


def test_f4_without_field_133_establishments_come_from_object_6_and_domain(default):
    _, rows, truth = default
    rc = rows.rule_counts
    assert rc["establishment_rule.connection"] == 0
    assert rc["establishment_rule.object_6"] > 0 and rc["establishment_rule.email_domain"] > 0
    assert all(s["establishment_id"] for s in rows.students.to_pylist())
    assert rc["quarantine.no_establishment"] == sum(1 for t in truth if t["reason"] == "no_establishment")


DATE_CASES = [  # (field_855 cell, completion date written, year, reason set aside)
    ("29/09/2024 04:50", date(2024, 9, 29), YEAR, None),  # F6: day-first with a time
    ("05/03/2025", date(2025, 3, 5), YEAR, None),  # 5 March, not 3 May
    ("31/07/2025", date(2025, 7, 31), YEAR, None),  # docs/DOMAIN.md, “Academic years”: last day of the year (F12)
    ("2024-08-01", date(2024, 8, 1), YEAR, None),  # ISO, first day of the year
    ("31/07/2024", None, None, "stale_date"),
    ("01/08/2025", None, None, "outside_import_year"),
    ("12/31/2024", None, None, "bad_date"),  # month-first is never guessed
    ("45678", None, None, "bad_date"),  # Excel serial
]
SCORE_CASES = [  # (field_155 = cycle 1 vision cell, decoded score, reason set aside)
    ("7.0", 7, None), ("7", 7, None), (" 10 ", 10, None), ("0", 0, None),
    ("7.5", None, "bad_score"), ("11", None, "bad_score"), ("seven", None, "bad_score"),
]


@pytest.fixture(scope="module")
def edited(default, tmp_path_factory) -> tuple[ImportRows, list[dict], list[dict]]:
    """One copy of the snapshot with every DATE_CASE and SCORE_CASE planted on its own plain record."""
    folder, _, truth = default
    plain = [t for t in _imported(truth, "blank_date")
             if not set(t["quirks"].split(";")) & {"duplicate", "f10_copy", "answers_without_scores"}]
    dated, scored = plain[:len(DATE_CASES)], plain[len(DATE_CASES):len(DATE_CASES) + len(SCORE_CASES)]
    edits = {t["record_id"]: {"field_855_date": case[0]} for t, case in zip(dated, DATE_CASES, strict=True)}
    edits |= {t["record_id"]: {"field_155": case[0]} for t, case in zip(scored, SCORE_CASES, strict=True)}
    return _build(_edited(folder, tmp_path_factory.mktemp("edited"), edits)), dated, scored


def _set_aside(rows: ImportRows, record_id: str) -> list[dict]:
    return [q for q in rows.quarantine.to_pylist() if q["record_id"] == record_id]


@pytest.mark.parametrize("case", range(len(DATE_CASES)), ids=[c[0] for c in DATE_CASES])
def test_f6_completion_dates_are_day_first_and_decide_the_year(edited, case):
    rows, targets, _ = edited
    _, day, year, reason = DATE_CASES[case]
    target = targets[case]
    student = [s for s in rows.students.to_pylist() if s["knack_id"] == target["record_id"]]
    if reason:
        assert not student and [q["reason"] for q in _set_aside(rows, target["record_id"])] == [reason]
        return
    assert student[0]["academic_year"] == year and student[0]["_year_rule"] == "completion_date"
    dates = [s["completion_date"] for s in rows.vespa_scores.to_pylist() if s["email"] == target["email"]]
    assert sorted(dates, key=lambda d: d is None) == [day] + [None] * (len(dates) - 1)  # latest cycle only


@pytest.mark.parametrize("case", range(len(SCORE_CASES)), ids=[c[0] for c in SCORE_CASES])
def test_f7_scores_decode_with_the_knack_rules(edited, case):
    rows, _, targets = edited
    _, value, reason = SCORE_CASES[case]
    target = targets[case]
    if reason:
        got = _set_aside(rows, target["record_id"])
        assert [q["reason"] for q in got] == [reason] and "c1_vision" in got[0]["detail"]
        return
    c1 = [s for s in rows.vespa_scores.to_pylist() if s["email"] == target["email"] and s["cycle"] == 1]
    assert c1[0]["vision"] == value


def test_f7_stringly_scores_from_the_generator_are_integers(default):
    _, rows, truth = default
    emails = {t["email"] for t in _imported(truth, "score_7_0")}
    assert emails
    for s in rows.vespa_scores.to_pylist():
        if s["email"] in emails:
            assert all(isinstance(s[e], int) and 0 <= s[e] <= 10 for e in rows_sql.ELEMENTS)


def test_f8_answers_carry_their_scores_year(generated):
    _, rows, _ = generated
    score_years = {(s["email"], s["cycle"]): s["academic_year"] for s in rows.vespa_scores.to_pylist()}
    answers = rows.question_responses.to_pylist()
    assert answers
    assert all(score_years[(a["email"], a["cycle"])] == a["academic_year"] for a in answers)
    assert all(1 <= a["response_value"] <= 5 for a in answers)


def test_f10_copies_of_the_current_cycle_are_dropped_and_counted(default):
    _, rows, truth = default
    copies = {t["email"] for t in _imported(truth, "f10_copy")}
    assert copies
    cycles = Counter(s["email"] for s in rows.vespa_scores.to_pylist() if s["email"] in copies)
    assert cycles == {e: 1 for e in copies}
    assert rows.rule_counts["f10_cycle_copy"] == 2 * len(copies)  # cycles 2 and 3 copied from 1


def test_answer_drops_are_counted_not_written(default):
    _, rows, truth = default
    rc = rows.rule_counts
    assert rc["unanswered"] >= 1 and rc["answer_out_of_range"] >= 1
    assert rc["quarantine.answers_without_scores"] == sum(
        1 for t in truth if t["object"] == "object_29" and t["expected"] == "import"
        and "answers_without_scores" in t["quirks"])


def _plain(table: pa.Table) -> pa.Table:
    """The answers with their dictionary-encoded columns decoded (Arrow sorts plain columns only)."""
    return table.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                 for f in table.schema]))


def test_answers_hold_repeated_values_once(default):
    """Email, year and question id repeat on every answer: dictionary-encoded with one shared
    dictionary per column (docs/ARCHITECTURE.md, “Quality bars”: 10x within 2 GB), decoding to exactly the built values."""
    _, rows, _ = default
    answers = rows.question_responses
    for name in ("email", "academic_year", "question_id"):
        col = answers.column(name)
        assert pa.types.is_dictionary(col.type) and col.num_chunks >= 1
        assert all(chunk.dictionary.equals(col.chunk(0).dictionary) for chunk in col.chunks)
        assert len(col.chunk(0).dictionary) == len(set(col.to_pylist()))
    plain = _plain(answers)
    assert plain.nbytes > answers.nbytes
    assert plain.column("email").to_pylist() == answers.column("email").to_pylist()


def test_q29_percentages_count_only_when_conversion_is_on(default):
    folder, rows, _ = default
    snap = open_snapshot(folder / "snapshot")
    with duckdb.connect(str(folder / "production.duckdb"), read_only=True) as ref:
        off = build_rows(snap, YEAR, ref, convert_q29_percentage=False)
        on = build_rows(snap, YEAR, ref, convert_q29_percentage=True)  # same connection, built again
    key = [(c, "ascending") for c in ("email", "cycle", "question_id")]
    assert _plain(on.question_responses).sort_by(key).equals(_plain(rows.question_responses).sort_by(key))
    assert on.rule_counts == rows.rule_counts
    diff = rows.question_responses.num_rows - off.question_responses.num_rows
    assert diff > 0 and off.rule_counts["answer_out_of_range"] - rows.rule_counts["answer_out_of_range"] == diff


def test_f16_a_scoped_build_produces_only_that_establishment(default):
    folder, rows, truth = default
    school = Counter(rows.students.column("establishment_knack_id").to_pylist()).most_common(1)[0][0]
    scoped = _build(folder, establishment_scope=[school])
    mine = {s["email"] for s in rows.students.to_pylist() if s["establishment_knack_id"] == school}
    assert {s["email"] for s in scoped.students.to_pylist()} == mine
    assert set(scoped.question_responses.column("email").to_pylist()) <= mine
    assert scoped.rule_counts["out_of_scope"] >= rows.students.num_rows - len(mine)
    # other schools' records are neither rows nor quarantine: only records without a school remain
    school_of = {r["record_id"]: r["true_establishment_knack_id"] for r in truth}
    unresolved = {"no_email", "invalid_email", "no_establishment", "unknown_establishment", "unlinked_answers",
                  "student_set_aside"}  # answers of a record whose school is unknown
    assert all(q["reason"] in unresolved or school_of[q["record_id"]] == school
               for q in scoped.quarantine.to_pylist())


@pytest.mark.parametrize(("year", "scope"), [
    ("2025/2025", None), ("2024/2026", None), ("last year", None), (YEAR, []), (YEAR, "abc"),
])
def test_bad_parameters_are_refused_before_any_work(default, year, scope):
    folder, _, _ = default
    with pytest.raises(ParameterError):
        _build(folder, year, establishment_scope=scope)


class _PandasReference:
    """A reference whose ``.sql(q)`` returns a pandas DataFrame (as a PostgreSQL reader would)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def sql(self, query: str):
        return self.con.sql(query).df()


def test_a_dataframe_reference_gives_the_same_rows(default):
    folder, rows, _ = default
    snap = open_snapshot(folder / "snapshot")
    with duckdb.connect(str(folder / "production.duckdb"), read_only=True) as ref:
        again = build_rows(snap, YEAR, _PandasReference(ref), convert_q29_percentage=True)
    assert again.students.equals(rows.students) and again.rule_counts == rows.rule_counts


@given(st.integers(min_value=-20, max_value=150))
def test_q29_percentage_reading_keeps_likert_answers(n):
    plain, converted = _answer_row(str(n), False), _answer_row(str(n), True)
    assert plain["value"] == (n if 1 <= n <= 5 else None)
    if 1 <= n <= 5:
        assert converted["value"] == n  # 1..5 stay Likert answers
    elif 5 < n <= 100:
        assert converted["value"] == q29_from_percentage(n) and converted["reason"] is None
    else:
        assert converted["value"] is None and converted["reason"] in ("unanswered", "answer_out_of_range")
