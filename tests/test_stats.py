"""Statistics recomputed in the database (vespa_lib.rules.stats) against an independent Python computation,
on a real DuckDB file and a real PostgreSQL (docs/DOMAIN.md, “Production schema”; F9, F13, F15, F16)."""

from __future__ import annotations

import hashlib
import math
import random
import uuid

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vespa_lib.errors import GuardRefused, ParameterError
from vespa_lib.rules import stats
from vespa_lib.rules.scores import OUTCOME_QUESTIONS
from vespa_lib.write import schema
from vespa_lib.write.schema import create_schema

Y24, Y25, Y23 = "2024/2025", "2025/2026", "2023/2024"
SCORES = stats.SCORE_ELEMENTS
TOL = 1e-9


# --- a small realistic dataset -------------------------------------------------------------------

def _sql(dialect: str, sql: str) -> str:
    return sql.replace("?", "%s") if dialect == "postgres" else sql


def _insert(con, dialect: str, table: str, rows: list[dict]) -> None:
    cols = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    if dialect == "postgres":
        con.cursor().executemany(_sql(dialect, sql), [tuple(r[c] for c in cols) for r in rows])
    else:  # one set-based insert: DuckDB's executemany is row by row
        con.register("_rows", pd.DataFrame(rows, columns=cols).astype(object))
        con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _rows")
        con.unregister("_rows")


SCHOOLS = {  # name -> (is_australian, use_standard_year, {label: students})
    "Alpha": (False, None, {Y24: 12, Y25: 6, Y23: 4}),
    "Beta": (False, True, {Y24: 9}),
    "Coral": (True, False, {"2024/2024": 6, "2025/2025": 5}),  # docs/DOMAIN.md, “Academic years”: calendar-year school
}


def _students(rng: random.Random, ids: dict[str, str]) -> list[dict]:
    rows = []
    for school, (_, _, per_year) in SCHOOLS.items():
        for label, n in per_year.items():
            for i in range(n):
                email = f"s{i}.{school.lower()}@example.org"
                if school == "Beta" and i < 2:  # F15: test accounts, one in odd case and spacing
                    email = f"tester{i}@vespa.academy" if i else " Tester0@VESPA.academy "
                rows.append({"id": str(uuid.uuid4()), "knack_id": f"k{len(rows)}", "email": email,
                             "establishment_id": ids[school], "academic_year": label})
    rows.append({"id": str(uuid.uuid4()), "knack_id": "orphan", "email": "orphan@example.org",
                 "establishment_id": None, "academic_year": Y24})  # national only
    return rows


def _score(rng: random.Random):
    roll = rng.random()
    return None if roll < 0.04 else 0 if roll < 0.08 else rng.randint(1, 10)  # 0 and NULL count nowhere


def _scores_and_answers(rng: random.Random, students: list[dict]) -> tuple[list[dict], list[dict]]:
    scores, answers = [], []
    for s in students:
        for cycle in range(1, rng.randint(1, 3) + 1):
            scores.append({"student_id": s["id"], "cycle": cycle, "academic_year": s["academic_year"],
                           **{e: _score(rng) for e in SCORES}})
            asked = list(OUTCOME_QUESTIONS) if rng.random() < 0.85 else list(OUTCOME_QUESTIONS[:2])
            for q in [*asked, "q1", "q14"]:  # element statements are not outcomes
                answers.append({"student_id": s["id"], "cycle": cycle, "academic_year": s["academic_year"],
                                "question_id": q, "response_value": rng.randint(1, 5)})
    return scores, answers


def _seed(con, dialect: str, seed: int = 7) -> None:
    create_schema(con, dialect)
    rng = random.Random(seed)
    ids = {name: str(uuid.uuid4()) for name in SCHOOLS}
    _insert(con, dialect, "establishments", [
        {"id": ids[n], "knack_id": f"e{n}", "name": n, "is_australian": au, "use_standard_year": std}
        for n, (au, std, _) in SCHOOLS.items()])
    students = _students(rng, ids)
    scores, answers = _scores_and_answers(rng, students)
    _insert(con, dialect, "students", students)
    _insert(con, dialect, "vespa_scores", scores)
    _insert(con, dialect, "question_responses", answers)


def _tx(con, dialect: str):
    """The caller's transaction (what the guard provides)."""
    return schema.transaction(con, dialect)


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    if request.param == "duckdb":
        con = duckdb.connect(str(tmp_path / "stats.duckdb"))
    else:
        import psycopg

        con = psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True)
    _seed(con, request.param)
    yield con, request.param
    con.close()


def _recompute(con, dialect, years, ids=None) -> dict:
    with _tx(con, dialect):
        return stats.recompute_statistics(con, years, ids)


def _read(con, dialect: str, sql: str, params=()) -> pd.DataFrame:
    cur = con.execute(_sql(dialect, sql), list(params) or None)
    return pd.DataFrame.from_records(cur.fetchall(), columns=[d[0] for d in cur.description])


def _checksum(con, dialect: str, where: str = "TRUE", params=(),
              tables=("school_statistics", "national_statistics")) -> str:
    """Every column of the statistics tables (ids and timestamps included), canonically ordered."""
    parts = []
    for table in tables:
        frame = _read(con, dialect, f"SELECT * FROM {table} WHERE {where}", params)
        parts += sorted(repr(tuple(str(v) for v in row)) for row in frame.itertuples(index=False))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _independent(con, dialect: str, year: str):
    return stats.independent_statistics(
        _read(con, dialect, "SELECT * FROM vespa_scores"), _read(con, dialect, "SELECT * FROM question_responses"),
        _read(con, dialect, "SELECT id, email, establishment_id FROM students"), year)


def _assert_same(db_frame: pd.DataFrame, ref: pd.DataFrame, keys: list[str]) -> None:
    assert len(db_frame) == len(ref) > 0
    merged = db_frame.merge(ref, on=keys, how="outer", suffixes=("_db", "_ref"), indicator=True)
    assert set(merged["_merge"]) == {"both"}
    for col in [c for c in ref.columns if c not in keys]:
        for got, want in zip(merged[f"{col}_db"], merged[f"{col}_ref"], strict=True):
            if col == "distribution":
                assert list(got) == list(want)
            elif want is None or pd.isna(want):
                assert got is None or pd.isna(got), col
            else:
                assert math.isclose(got, want, rel_tol=TOL, abs_tol=TOL), (col, got, want)


# --- the numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("year", [Y24, Y25])
def test_every_number_matches_the_independent_computation(db, year):
    con, dialect = db
    _recompute(con, dialect, [Y24, Y25])
    school, national = stats.statistics_frame(con, year)
    ref_school, ref_national = _independent(con, dialect, year)
    _assert_same(school, ref_school, ["establishment_id", "cycle", "academic_year", "element"])
    _assert_same(national, ref_national, ["cycle", "academic_year", "element"])
    assert set(national["element"]) == set(stats.ELEMENTS)


def test_distributions_have_ten_buckets_summing_to_count_and_eri_rows_keep_mean_zero(db):
    con, dialect = db
    _recompute(con, dialect, [Y24, Y25])
    for frame in (*stats.statistics_frame(con, Y24), *stats.statistics_frame(con, Y25)):
        assert all(len(d) == 10 for d in frame["distribution"])
        assert [sum(d) for d in frame["distribution"]] == list(frame["count"])
        assert (frame.loc[frame["element"] == "ERI", "mean"] == 0).all()
    national = stats.statistics_frame(con, Y24)[1]
    eri = national[national["element"] == "ERI"]
    assert eri["eri_score"].between(1, 5).all() and national.loc[national["element"] != "ERI", "eri_score"].isna().all()


def test_test_accounts_are_excluded_and_changing_their_scores_changes_nothing(db):
    con, dialect = db
    _recompute(con, dialect, [Y24])
    before = _checksum(con, dialect)
    test_ids = "SELECT id FROM students WHERE lower(trim(email)) LIKE '%@vespa.academy'"
    con.execute(f"UPDATE vespa_scores SET vision = 10, effort = 1 WHERE student_id IN ({test_ids})".replace(
        "%", "%%" if dialect == "postgres" else "%"))
    result = _recompute(con, dialect, [Y24])
    assert _checksum(con, dialect) == before
    assert result["changes"]["national_statistics"] == {"insert": 0, "update": 0, "delete": 0}
    valid = _read(con, dialect, "SELECT COUNT(*) AS n FROM vespa_scores s JOIN students st ON st.id = s.student_id "
                  "WHERE s.academic_year IN (?, ?) AND s.cycle = 1 AND s.vision BETWEEN 1 AND 10 "
                  "AND lower(st.email) NOT LIKE ?", [Y24, "2024/2024", "%vespa.academy%"])["n"][0]
    national = stats.statistics_frame(con, Y24)[1]
    row = national[(national["cycle"] == 1) & (national["element"] == "vision")]
    assert int(row["count"].iloc[0]) == int(valid)


def test_calendar_year_rows_count_in_their_benchmark_year_only(db):
    con, dialect = db
    _recompute(con, dialect, [Y24, Y25])
    coral = _read(con, dialect, "SELECT id FROM establishments WHERE name = 'Coral'")["id"].map(str)[0]
    school24, national24 = stats.statistics_frame(con, Y24)
    school25, _ = stats.statistics_frame(con, Y25)
    assert set(school24.loc[school24["establishment_id"] == coral, "academic_year"]) == {"2024/2024"}
    assert set(school25.loc[school25["establishment_id"] == coral, "academic_year"]) == {"2025/2025"}
    labels = set(_read(con, dialect, "SELECT DISTINCT academic_year FROM national_statistics")["academic_year"])
    assert labels == {Y24, Y25}  # no national row carries a calendar label
    coral_c1 = school24[(school24["establishment_id"] == coral) & (school24["cycle"] == 1)
                        & (school24["element"] == "overall")]["count"].sum()
    uk_c1 = school24[(school24["academic_year"] == Y24) & (school24["cycle"] == 1)
                     & (school24["element"] == "overall")]["count"].sum()
    orphan = _read(con, dialect, "SELECT COUNT(*) AS n FROM vespa_scores s JOIN students st ON st.id = s.student_id "
                   "WHERE st.establishment_id IS NULL AND s.cycle = 1 AND s.overall BETWEEN 1 AND 10")["n"][0]
    nat_c1 = national24[(national24["cycle"] == 1) & (national24["element"] == "overall")]["count"].iloc[0]
    assert coral_c1 > 0 and int(nat_c1) == int(coral_c1 + uk_c1 + orphan)


# --- what is written, and what is not -----------------------------------------------------------

def test_other_years_rows_are_untouched(db):
    con, dialect = db
    _recompute(con, dialect, [Y23, Y25])
    other = ("academic_year NOT IN (?, ?)", [Y24, "2024/2024"])
    before = _checksum(con, dialect, *other)
    result = _recompute(con, dialect, [Y24])
    assert result["national_statistics"] == {Y24: 21} and result["school_statistics"][Y24] > 0
    assert _checksum(con, dialect, *other) == before


def test_running_twice_gives_the_same_rows_and_changes_nothing(db):
    con, dialect = db
    first = _recompute(con, dialect, [Y24, Y25])
    snapshot = _checksum(con, dialect)
    second = _recompute(con, dialect, [Y24, Y25])
    assert _checksum(con, dialect) == snapshot  # same ids, same values, same calculated_at
    assert first["changes"]["school_statistics"]["insert"] > 0
    assert all(v == 0 for t in second["changes"].values() for v in t.values())
    assert {k: second[k] for k in ("school_statistics", "national_statistics")} == \
        {k: first[k] for k in ("school_statistics", "national_statistics")}


def test_establishment_scope_touches_only_that_schools_rows(db):
    con, dialect = db
    _recompute(con, dialect, [Y24])
    ids = _read(con, dialect, "SELECT name, id FROM establishments").set_index("name")["id"].map(str)
    con.execute(_sql(dialect, "UPDATE vespa_scores SET vision = 1 WHERE academic_year = ?"), [Y24])
    beta = ("establishment_id = CAST(? AS UUID)", [ids["Beta"]], ("school_statistics",))
    before_beta = _checksum(con, dialect, *beta)
    _recompute(con, dialect, [Y24], [ids["Alpha"]])
    assert _checksum(con, dialect, *beta) == before_beta  # F16: another school's rows untouched
    school = stats.statistics_frame(con, Y24)[0]
    alpha_vision = school[(school["establishment_id"] == ids["Alpha"]) & (school["element"] == "vision")]
    assert (alpha_vision["mean"] == 1).all() and len(alpha_vision) > 0


def test_stale_rows_of_the_slice_are_deleted_and_extra_columns_survive(db):
    con, dialect = db
    con.execute("ALTER TABLE national_statistics ADD COLUMN additional_stats TEXT")  # docs/DOMAIN.md, “Production schema”: tolerated
    _recompute(con, dialect, [Y24])
    con.execute("UPDATE national_statistics SET additional_stats = 'kept'")
    labels = [Y24, "2024/2024"]
    for table in ("vespa_scores", "question_responses"):
        con.execute(_sql(dialect, f"DELETE FROM {table} WHERE academic_year IN (?, ?) AND cycle = 3"), labels)
    con.execute(_sql(dialect, "UPDATE vespa_scores SET vision = 4 WHERE academic_year = ?"), [Y24])
    result = _recompute(con, dialect, [Y24])
    assert result["changes"]["national_statistics"]["delete"] == 7
    assert result["changes"]["national_statistics"]["update"] > 0
    kept = _read(con, dialect, "SELECT DISTINCT additional_stats FROM national_statistics")
    assert list(kept["additional_stats"]) == ["kept"]
    cycles = set(_read(con, dialect, "SELECT DISTINCT cycle FROM national_statistics WHERE academic_year = ?",
                       [Y24])["cycle"])
    assert cycles == {1, 2}


def test_rows_of_an_archived_year_carry_the_archive_marker(db):
    con, dialect = db
    _insert(con, dialect, "academic_years", [{"academic_year": Y24, "is_archived": True},
                                             {"academic_year": Y25, "is_archived": False}])
    _recompute(con, dialect, [Y24, Y25])
    for table in ("school_statistics", "national_statistics"):
        marks = _read(con, dialect, f"SELECT academic_year, is_archived FROM {table} GROUP BY 1, 2")
        assert dict(zip(marks["academic_year"], marks["is_archived"], strict=True)) == {
            Y24: True, Y25: False, **({"2024/2024": True, "2025/2025": False} if table == "school_statistics" else {})}


# --- failures roll back (F9) ---------------------------------------------------------------------

def test_failure_half_way_rolls_back_to_the_old_statistics(db, monkeypatch):
    con, dialect = db
    _recompute(con, dialect, [Y24, Y25])
    before = _checksum(con, dialect)
    con.execute(_sql(dialect, "UPDATE vespa_scores SET vision = 2 WHERE academic_year = ?"), [Y24])
    real = stats._execute
    executed = []

    def failing(con_, dialect_, sql, params=()):
        executed.append(sql.split()[0])
        if sql.startswith("INSERT INTO national_statistics"):
            raise RuntimeError("injected failure after the deletes and updates")
        return real(con_, dialect_, sql, params)

    monkeypatch.setattr(stats, "_execute", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _recompute(con, dialect, [Y24])
    assert executed.count("UPDATE") == 2 and executed.count("DELETE") == 2  # the writes really ran
    assert _checksum(con, dialect) == before


def test_a_failing_statement_after_the_recompute_rolls_it_back(db):
    con, dialect = db
    _recompute(con, dialect, [Y24])
    before = _checksum(con, dialect)
    con.execute(_sql(dialect, "UPDATE vespa_scores SET effort = 3 WHERE academic_year = ?"), [Y24])
    with pytest.raises(Exception, match="not a number"):
        with _tx(con, dialect):
            assert stats.recompute_statistics(con, [Y24])["changes"]["school_statistics"]["update"] > 0
            con.execute("SELECT CAST('not a number' AS INTEGER)").fetchall()  # the caller's next step fails
    assert _checksum(con, dialect) == before


@pytest.mark.postgres
def test_postgres_trigger_refusal_mid_merge_leaves_statistics_intact(pg_dsn):
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        _seed(con, "postgres")
        _recompute(con, "postgres", [Y24])
        before = _checksum(con, "postgres")
        con.execute("UPDATE vespa_scores SET systems = 9")
        con.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'national_statistics is protected'; END $$")
        con.execute("CREATE TRIGGER t BEFORE INSERT OR UPDATE OR DELETE ON national_statistics "
                    "FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
        with pytest.raises(psycopg.errors.RaiseException, match="protected"):
            _recompute(con, "postgres", [Y24])
        assert _checksum(con, "postgres") == before


def test_refuses_outside_a_transaction(db):
    con, dialect = db
    with pytest.raises(GuardRefused, match="outside a transaction"):
        stats.recompute_statistics(con, [Y24])
    assert _read(con, dialect, "SELECT COUNT(*) AS n FROM national_statistics")["n"][0] == 0


def test_refuses_to_empty_a_year_of_national_rows(db):
    con, dialect = db
    _recompute(con, dialect, [Y24])
    before = _checksum(con, dialect)
    con.execute(_sql(dialect, "DELETE FROM question_responses WHERE academic_year IN (?, ?)"), [Y24, "2024/2024"])
    con.execute(_sql(dialect, "DELETE FROM vespa_scores WHERE academic_year IN (?, ?)"), [Y24, "2024/2024"])
    with pytest.raises(GuardRefused, match="every national_statistics row of 2024/2025"):
        _recompute(con, dialect, [Y24])
    assert _checksum(con, dialect) == before


@pytest.mark.parametrize(("years", "ids", "message"), [
    ([], None, "No academic year"),
    (["2024/2024"], None, "calendar year"),
    (["2024-2026"], None, "spans"),
    ([Y24], [], "establishment_ids is empty"),
])
def test_bad_parameters_are_refused_before_anything_runs(years, ids, message):
    con = duckdb.connect()
    with pytest.raises(ParameterError, match=message):
        stats.recompute_statistics(con, years, ids)


def test_non_canonical_spelling_is_normalised():
    con = duckdb.connect()
    _seed(con, "duckdb")
    with _tx(con, "duckdb"):
        result = stats.recompute_statistics(con, ["2024-25"])
    assert list(result["national_statistics"]) == [Y24]


# --- property: SD, percentiles, skewness versus NumPy ------------------------------------------

_PROP = duckdb.connect()
_seed(_PROP, "duckdb", seed=1)


def _numpy_row(values: list[float]) -> dict:
    arr = np.array(values, dtype=float)
    mu, sd = arr.mean(), arr.std()
    skew = 0.0 if np.ptp(arr) == 0 else float(np.mean((arr - mu) ** 3) / sd ** 3)
    p25, p50, p75 = np.percentile(arr, [25, 50, 75])
    return {"std_dev": sd, "percentile_25": p25, "percentile_50": p50, "percentile_75": p75,
            "skewness": skew, "min_value": arr.min(), "max_value": arr.max(), "count": len(values),
            "confidence_interval_lower": mu - 1.96 * sd / math.sqrt(len(values))}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10), st.tuples(*[st.integers(1, 5)] * 3)), min_size=1, max_size=40))
def test_property_sd_percentiles_skewness_match_numpy(rows):
    con = _PROP
    con.begin()
    try:
        con.execute("DELETE FROM question_responses")
        con.execute("DELETE FROM vespa_scores")
        student_ids = [r[0] for r in con.execute("SELECT id FROM students WHERE academic_year = ? "
                                                 "AND lower(email) NOT LIKE '%vespa.academy%'", [Y24]).fetchall()]
        rows = rows[: len(student_ids)]
        pairs = list(zip(student_ids, rows, strict=False))
        _insert(con, "duckdb", "vespa_scores", [
            {"student_id": sid, "cycle": 1, "academic_year": Y24, "vision": score, "overall": 5}
            for sid, (score, _) in pairs])
        _insert(con, "duckdb", "question_responses", [
            {"student_id": sid, "cycle": 1, "academic_year": Y24, "question_id": q, "response_value": a}
            for sid, (_, answers) in pairs for q, a in zip(OUTCOME_QUESTIONS, answers, strict=True)])
        stats.recompute_statistics(con, [Y24])
        national = stats.statistics_frame(con, Y24)[1].set_index("element")
    finally:
        con.rollback()
    vision = [float(s) for s, _ in rows if s >= 1]
    eris = [sum(a) / 3 for _, a in rows]
    for element, values in (("vision", vision), ("ERI", eris)):
        if not values:
            assert element not in national.index
            continue
        for col, want in _numpy_row(values).items():
            assert math.isclose(national.loc[element, col], want, rel_tol=TOL, abs_tol=TOL), (element, col)
    assert math.isclose(national.loc["ERI", "eri_score"], float(np.mean(eris)), rel_tol=TOL, abs_tol=TOL)
