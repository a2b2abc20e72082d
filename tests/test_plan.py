"""Planning (docs/ARCHITECTURE.md, “Guarded writes”): counts per table × year, refusals (archived year, F16 scope), fingerprint.

Also holds the small hand-built data set the guard, protect, migrations and crash tests share
(``seed``, ``desired``), so every test states its rows in one place.
"""

from __future__ import annotations

from datetime import date

import duckdb
import psycopg
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespa_lib.errors import ValidationFailed
from vespa_lib.write.plan import Desired, plan_changes
from vespa_lib.write.schema import create_schema

EST_A = "00000000-0000-0000-0000-0000000000aa"
EST_B = "00000000-0000-0000-0000-0000000000bb"
OLD, CUR = "2024/2025", "2025/2026"
QUESTIONS = ("q1", "q2")


def connect(kind: str, pg_dsn: str | None = None, duckdb_path=None):
    """A fresh connection to a seeded target: DuckDB file or PostgreSQL (autocommit)."""
    if kind == "duckdb":
        con = duckdb.connect(str(duckdb_path))
    else:
        con = psycopg.connect(pg_dsn, autocommit=True)
    seed(con)
    return con


def seed(con, *, workbook: bool = True, legacy: bool = False) -> None:
    """Two schools and two academic years, nothing archived."""
    create_schema(con, workbook=workbook, legacy_email_key=legacy)
    con.execute("INSERT INTO establishments (id, knack_id, name) VALUES "
                f"('{EST_A}', 'kA', 'School A'), ('{EST_B}', 'kB', 'School B')")
    con.execute("INSERT INTO academic_years (academic_year, start_date, end_date, is_current) VALUES "
                "('2024/2025', '2024-08-01', '2025-07-31', false), ('2025/2026', '2025-08-01', '2026-07-31', true)")


def students(year: str, est: str, n: int, *, prefix: str = "s", name: str = "Name") -> list[dict]:
    return [{"email": f"{prefix}{i}@{est[-2:]}.school.uk", "academic_year": year, "knack_id": f"k{prefix}{i}{year[:4]}",
             "name": f"{name} {i}", "establishment_id": est, "year_group": "12", "course": None,
             "faculty": None, "group": "G1", "gender": None, "_source_line": i} for i in range(n)]


def desired(rows: list[dict], *, years=(OLD,), ests=None, allow_delete=False, score: int = 5,
            cycles=(1,), with_answers=True) -> Desired:
    """Desired students plus one score row per cycle and answers for each of QUESTIONS."""
    scores = [{"email": r["email"], "academic_year": r["academic_year"], "cycle": c,
               **dict.fromkeys(("vision", "effort", "systems", "practice", "attitude", "overall"), score),
               "completion_date": date(int(r["academic_year"][:4]), 10, 1)} for r in rows for c in cycles]
    answers = [{"email": r["email"], "academic_year": r["academic_year"], "cycle": c, "question_id": qid,
                "response_value": min(score, 5)} for r in rows for c in cycles for qid in QUESTIONS]
    tables = {"students": pa.Table.from_pylist(rows, schema=_STUDENT_SCHEMA),
              "vespa_scores": pa.Table.from_pylist(scores, schema=_SCORE_SCHEMA)}
    if with_answers:
        tables["question_responses"] = pa.Table.from_pylist(answers, schema=_ANSWER_SCHEMA)
    return Desired(tables, years=list(years), establishment_ids=ests, allow_delete=allow_delete)


_S = pa.string()
_STUDENT_SCHEMA = pa.schema([(c, _S) for c in ("email", "academic_year", "knack_id", "name", "establishment_id",
                                                "year_group", "course", "faculty", "group", "gender")]
                            + [("_source_line", pa.int64())])
_SCORE_SCHEMA = pa.schema([("email", _S), ("academic_year", _S), ("cycle", pa.int64())]
                          + [(c, pa.int64()) for c in ("vision", "effort", "systems", "practice", "attitude", "overall")]
                          + [("completion_date", pa.date32())])
_ANSWER_SCHEMA = pa.schema([("email", _S), ("academic_year", _S), ("cycle", pa.int64()), ("question_id", _S),
                            ("response_value", pa.int64())])


def migrate(con) -> None:
    """Apply pending migrations (PostgreSQL: the archive triggers) through the guard."""
    from vespa_lib.write.guard import apply_plan

    plan = plan_changes(con, desired([], years=[OLD]))
    if plan.migrations:
        apply_plan(con, desired([], years=[OLD]), approve=plan.fingerprint, run_id="migrate", runbook="test",
                   actor="pytest", recompute=False)


def open_target(request, duckdb_path):
    """A seeded, migrated target of the kind ``request.param`` names (shared by the con fixtures)."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    connection = connect(request.param, dsn, duckdb_path)
    migrate(connection)
    yield connection
    connection.close()


@pytest.fixture(params=["duckdb", "postgres"])
def con(request, duckdb_path):
    """A seeded, migrated target of each kind."""
    yield from open_target(request, duckdb_path)


def apply(con, want: Desired, run_id: str, **kw):
    from vespa_lib.write.guard import apply_plan

    plan = plan_changes(con, want, archived_write_years=kw.get("archived_write_years", ()),
                        archive_years=kw.get("archive_years", ()))
    return apply_plan(con, want, approve=plan.fingerprint, run_id=run_id, runbook="test", actor="pytest",
                      recompute=kw.pop("recompute", False), **kw)


# --- tests ---------------------------------------------------------------------------------------


def test_first_plan_inserts_everything(con):
    plan = plan_changes(con, desired(students(OLD, EST_A, 3), cycles=(1, 2)))
    assert plan.counts() == {
        "students": {OLD: {"insert": 3, "update": 0, "unchanged": 0, "delete": 0, "refused": 0}},
        "vespa_scores": {OLD: {"insert": 6, "update": 0, "unchanged": 0, "delete": 0, "refused": 0}},
        "question_responses": {OLD: {"insert": 12, "update": 0, "unchanged": 0, "delete": 0, "refused": 0}},
    }
    assert not plan.is_empty and plan.migrations == []
    assert plan.summary_frame()["insert"].sum() == 21


def test_updates_name_changed_columns_and_samples(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    rows = students(OLD, EST_A, 3)
    rows[0]["name"] = "Renamed"
    plan = plan_changes(con, desired(rows, score=7))
    assert plan.counts()["students"][OLD] == {"insert": 0, "update": 1, "unchanged": 2, "delete": 0, "refused": 0}
    assert plan.counts()["vespa_scores"][OLD]["update"] == 3
    assert plan.changed_columns["students"] == ["name"]
    sample = plan.samples["students"][0]["changes"]["name"]
    assert sample == {"before": "Name 0", "after": "Renamed"}
    assert '"fingerprint"' in plan.to_json()


def test_deletes_only_when_asked_and_only_in_scope(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    apply(con, desired(students(CUR, EST_A, 2), years=[CUR]), "r2")
    keep = students(OLD, EST_A, 2)
    assert plan_changes(con, desired(keep)).counts()["students"][OLD]["delete"] == 0
    plan = plan_changes(con, desired(keep, allow_delete=True))
    assert plan.counts()["students"] == {OLD: {"insert": 0, "update": 0, "unchanged": 2, "delete": 1, "refused": 0}}
    assert plan.counts()["question_responses"][OLD]["delete"] == 2
    assert CUR not in plan.counts()["students"]  # another year is never deleted


def test_f16_scope_to_establishment_a_never_touches_b(con):
    apply(con, desired(students(OLD, EST_A, 2) + students(OLD, EST_B, 2, prefix="b")), "r1")
    rows = students(OLD, EST_A, 2, name="New") + students(OLD, EST_B, 2, prefix="b", name="New")
    plan = plan_changes(con, desired(rows, ests=[EST_A], allow_delete=True))
    assert plan.counts()["students"][OLD] == {"insert": 0, "update": 2, "unchanged": 0, "delete": 0, "refused": 2}
    assert plan.refused_reasons["students"] == {"outside_establishment_scope": 2}
    only_a = plan_changes(con, desired(students(OLD, EST_A, 2), ests=[EST_A], allow_delete=True))
    assert only_a.counts()["students"][OLD]["delete"] == 0  # B's rows are not "missing": out of scope
    assert all(c["delete"] == 0 for t in only_a.counts().values() for c in t.values())


@pytest.mark.parametrize(("year", "years", "write_years", "reason"), [
    (CUR, [OLD], (), "outside_year_scope"),
    (OLD, [OLD], (), "archived_year"),
    (OLD, [OLD], (OLD,), None),
])
def test_refusals_by_year(con, year, years, write_years, reason):
    apply(con, desired([]), "arch", archive_years=[OLD])
    plan = plan_changes(con, desired(students(year, EST_A, 2), years=years), archived_write_years=write_years)
    cell = plan.counts()["students"][year]
    assert (cell["refused"], cell["insert"]) == ((2, 0) if reason else (0, 2))
    assert plan.refused_reasons["students"] == ({reason: 2} if reason else {})


def test_scores_without_a_student_are_refused(con):
    want = desired(students(OLD, EST_A, 1))
    want.tables["students"] = want.tables["students"].slice(0, 0)
    plan = plan_changes(con, want)
    assert plan.refused_reasons["vespa_scores"] == {"no_student": 1}


def test_duplicate_natural_keys_are_an_error(con):
    rows = students(OLD, EST_A, 1) * 2
    with pytest.raises(ValidationFailed, match="repeat the natural key"):
        plan_changes(con, desired(rows))


@pytest.mark.parametrize("table", ["students", "vespa_scores", "question_responses"])
def test_a_repeated_row_of_an_unchanged_student_is_still_an_error(con, table):
    apply(con, desired(students(OLD, EST_A, 2)), "r1")  # the repeated row equals its live row
    want = desired(students(OLD, EST_A, 2))
    want.tables[table] = pa.concat_tables([want.tables[table], want.tables[table].slice(0, 1)])
    with pytest.raises(ValidationFailed, match="repeat the natural key"):
        plan_changes(con, want)


def test_fingerprint_stable_and_sensitive(con):
    want = desired(students(OLD, EST_A, 3))
    first = plan_changes(con, want).fingerprint
    assert plan_changes(con, want).fingerprint == first
    assert plan_changes(con, desired(students(OLD, EST_A, 4))).fingerprint != first
    assert plan_changes(con, desired(students(OLD, EST_A, 3), score=6)).fingerprint != first
    con.execute(f"INSERT INTO students (knack_id, email, academic_year, establishment_id) "
                f"VALUES ('x', 'other@x.uk', '{OLD}', '{EST_B}')")
    assert plan_changes(con, want).fingerprint != first  # the state it was computed against changed


def test_planning_is_read_only(con):
    from vespa_lib.write.guard import table_checksums

    tables = ["students", "vespa_scores", "question_responses", "academic_years"]
    before = table_checksums(con, tables)
    plan_changes(con, desired(students(OLD, EST_A, 3)))
    assert table_checksums(con, tables) == before


# --- no-op fast path (docs/ARCHITECTURE.md, “Quality bars”): it must plan exactly what the full classification plans --------


def _both_ways(con, want: Desired, monkeypatch, **kw):
    import vespa_lib.write.classify as classify

    fast = plan_changes(con, want, **kw)
    monkeypatch.setattr(classify, "FAST_NOOP", False)
    slow = plan_changes(con, want, **kw)
    monkeypatch.setattr(classify, "FAST_NOOP", True)
    return fast, slow


def _changed_answer(rows):
    want = desired(rows)
    answers = want.tables["question_responses"].to_pylist()
    answers[0]["response_value"] = 1
    want.tables["question_responses"] = pa.Table.from_pylist(answers, schema=_ANSWER_SCHEMA)
    return want


@pytest.mark.parametrize(("case", "make", "fast_tables"), [
    ("repeat", lambda r: desired(r), 3),
    ("repeat plus an out-of-scope year", lambda r: desired(r + students(CUR, EST_A, 2, prefix="c")), 0),
    ("one answer changed", _changed_answer, 2),
    ("one student missing, deletes allowed", lambda r: desired(r[1:], allow_delete=True), 0),
    ("one student added", lambda r: desired(r + students(OLD, EST_A, 1, prefix="n")), 0),
    ("scores changed", lambda r: desired(r, score=4), 1),
    ("live holds a student the snapshot lacks", lambda r: desired(r[1:]), 3),
    ("a student lacking, one answer changed", lambda r: _changed_answer(r[:2]), 2),
    ("a student lacking, deletes allowed", lambda r: desired(r[1:], allow_delete=True), 0),
    ("repeat, deletes allowed", lambda r: desired(r, allow_delete=True), 0),
    ("one student renamed", lambda r: desired([{**r[0], "name": "New"}, *r[1:]]), 2),
])
def test_fast_path_plans_what_classification_plans(con, monkeypatch, case, make, fast_tables):
    rows = students(OLD, EST_A, 3)
    apply(con, desired(rows), "r1")
    fast, slow = _both_ways(con, make(students(OLD, EST_A, 3)), monkeypatch)
    assert fast.fingerprint == slow.fingerprint, case
    assert (fast.counts(), fast.changed_columns, fast.samples, fast.refused_reasons) == \
           (slow.counts(), slow.changed_columns, slow.samples, slow.refused_reasons)
    assert 3 - len(fast.staged) == fast_tables  # tables decided by digest alone, never staged
    assert set(slow.staged) == {"students", "vespa_scores", "question_responses"}


@pytest.mark.parametrize(("case", "make", "staged"), [
    ("one answer changed", _changed_answer, {"question_responses": 2}),
    ("one student renamed", lambda r: desired([{**r[0], "name": "New"}, *r[1:]]), {"students": 1}),
    ("one student added", lambda r: desired(r + students(OLD, EST_A, 1, prefix="n")),
     {"students": 1, "vespa_scores": 1, "question_responses": 2}),
    ("scores changed", lambda r: desired(r, score=4), {"vespa_scores": 3, "question_responses": 6}),
])
def test_fast_path_stages_only_the_changed_student_groups(con, case, make, staged):
    from vespa_lib.write.plan import stage_and_classify
    from vespa_lib.write.sql import rolled_back, run

    apply(con, desired(students(OLD, EST_A, 4)), "r1")  # the live slice holds a student the snapshot lacks
    with rolled_back(con):
        plan = stage_and_classify(con, make(students(OLD, EST_A, 3)))
        rows = {t: run(con, f"SELECT count(*) FROM vespa_stage_{t}")[0][0] for t in plan.staged}
    assert rows == staged, case


def test_partial_fast_path_applies_the_changed_table_only(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    want = _changed_answer(students(OLD, EST_A, 3))
    result = apply(con, want, "r2")
    assert result.applied["applied"] == {"students": {"insert": 0, "update": 0, "delete": 0},
                                         "vespa_scores": {"insert": 0, "update": 0, "delete": 0},
                                         "question_responses": {"insert": 0, "update": 1, "delete": 0}}
    assert plan_changes(con, want).is_empty
    backup = con.execute("SELECT count(*) FROM vespa_ops.backup_question_responses WHERE _run_id = 'r2'").fetchone()
    assert backup[0] == 1


def test_fast_path_sees_a_change_made_behind_its_back(con):
    apply(con, desired(students(OLD, EST_A, 3)), "r1")
    con.execute("UPDATE question_responses SET response_value = 2 WHERE question_id = 'q1' AND student_id = "
                "(SELECT id FROM students WHERE email = 's0@aa.school.uk')")
    plan = plan_changes(con, desired(students(OLD, EST_A, 3)))
    assert plan.counts()["question_responses"][OLD]["update"] == 1 and not plan.is_empty


_TEXT = st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                     max_size=6), st.sampled_from(["", "~", "a|b"]))
_VALUES = st.tuples(st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)),
                    st.one_of(st.none(), st.dates(date(1900, 1, 1), date(2999, 12, 31))), _TEXT)
_GROUP_COLS = [("email", "TEXT"), ("academic_year", "TEXT"), ("k", "INTEGER"), ("a", "INTEGER"), ("b", "DATE"),
               ("c", "TEXT")]


def _as_text(row: dict) -> dict:
    """A live row as it arrives over COPY: every value text, NULL as None."""
    return {k: None if v is None else (v.isoformat() if isinstance(v, date) else str(v)) for k, v in row.items()}


@settings(max_examples=120, deadline=None)
@given(base=st.lists(st.tuples(st.sampled_from(["x@s.uk", "y@s.uk", "z@s.uk"]), _VALUES), max_size=7),
       edit=st.sampled_from(["same", "value", "drop", "add", "swap"]), pick=st.integers(0, 6), new=_VALUES)
def test_a_group_is_proven_exactly_when_its_live_rows_equal_its_desired_rows(base, edit, pick, new):
    """The fast path's proof (rowdigest.unchanged_groups) against the definition: same multiset."""
    from vespa_lib.write.rowdigest import unchanged_groups

    want = [{"email": e, "academic_year": OLD, "k": i, "a": v[0], "b": v[1], "c": v[2]} for i, (e, v) in enumerate(base)]
    live = [dict(r) for r in want]
    if want and edit != "same":
        i = pick % len(want)
        if edit == "value":
            live[i].update(zip("abc", new, strict=True))
        elif edit == "drop":
            live.pop(i)
        elif edit == "add":
            live.append({**want[i], "k": 99, "a": new[0], "b": new[1], "c": new[2]})
        else:  # a value moved to another key of the same group
            live[i]["k"] = 98
    desired_t = pa.Table.from_pylist(want, schema=pa.schema([("email", pa.string()), ("academic_year", pa.string()),
                                                             ("k", pa.int64()), ("a", pa.int64()), ("b", pa.date32()),
                                                             ("c", pa.string())]))
    live_t = pa.Table.from_pylist([_as_text(r) for r in live],
                                  schema=pa.schema([(c, pa.string()) for c, _ in _GROUP_COLS]))
    proven, rest, groups = unchanged_groups(desired_t, ["email", "academic_year", "k"], _GROUP_COLS, live_t)

    def rows_of(rows, email):
        return sorted((r["k"], r["a"], r["b"], r["c"]) for r in rows if r["email"] == email)
    expected = {e for e in {r["email"] for r in want} if rows_of(want, e) == rows_of(live, e)}
    assert set(groups.column("email").to_pylist()) == expected
    assert sum(proven.values()) == sum(1 for r in want if r["email"] in expected)
    assert sorted(rest.to_pylist()) == [i for i, r in enumerate(want) if r["email"] not in expected]
