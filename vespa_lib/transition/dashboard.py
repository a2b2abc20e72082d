"""The dashboard's view of the years (docs/ARCHITECTURE.md, “Runbooks”): year switching and national benchmarks. Read-only.

``dashboard_year_switching``: the year drop-down (``SELECT DISTINCT academic_year FROM
national_statistics``, docs/DOMAIN.md, “Production schema”) lists every year with scores; each year's views hold that
year's rows only (a score or answer carries its student's year, F8; per school, year and cycle the
answer rows are students × questions answered, docs/DOMAIN.md, “Known data points” 10: no answer counted twice, no
answering student without scores); and ``school_statistics``/``national_statistics`` equal
``stats.independent_statistics`` recomputed from the rows (a statistic that mixes years differs).

``national_benchmarks_complete``: a national row for every (benchmark year with data, cycle with
data, element incl. ERI), distributions of 10 buckets summing to the count, counts equal to the
rows of that benchmark year without test accounts (F15) and with calendar years ``Y/Y`` counted in
``Y/Y+1`` (docs/DOMAIN.md, “Academic years”), and no national row under a calendar label.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from vespa_lib.rules import stats, years
from vespa_lib.rules.scores import OUTCOME_QUESTIONS
from vespa_lib.transition.checks import CheckResult
from vespa_lib.write.sql import run

__all__ = ["dashboard_year_switching", "national_benchmarks_complete", "year_list"]

TEST = "%@vespa.academy"  # F15
_ELEMENTS = stats.SCORE_ELEMENTS
_TOL = 1e-6


def _frame(con: Any, sql: str, params: list, cols: list[str] | tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(run(con, sql, params), columns=list(cols))


def _benchmark(label: Any) -> str | None:
    return years.benchmark_year(label) if years.is_canonical(label) else None


def year_list(con: Any) -> list[str]:
    """The dashboard's year drop-down: distinct national_statistics years. Read-only."""
    return sorted(r[0] for r in run(con, "SELECT DISTINCT academic_year FROM national_statistics"))


def _years_with_scores(con: Any) -> dict[str, list[str]]:
    """Benchmark year -> labels holding countable scores of non-test students with a school."""
    out: dict[str, list[str]] = {}
    for (label,) in run(con, "SELECT DISTINCT s.academic_year FROM vespa_scores s JOIN students st ON st.id = "
                             "s.student_id WHERE lower(st.email) NOT LIKE ? AND st.establishment_id IS NOT NULL "
                             "AND s.overall BETWEEN 1 AND 10", [TEST]):
        if _benchmark(label):
            out.setdefault(_benchmark(label), []).append(label)
    return out


def _cohort_rows(con: Any) -> tuple[pd.DataFrame, dict]:
    """Per school, year and cycle: students with scores, answer rows, distinct (student, question)
    pairs, answering students without scores, rows whose year differs from their student's."""
    mixed = {t: dict(run(con, f"SELECT t.academic_year, count(*) FROM {t} t JOIN students st ON st.id = t.student_id "
                              "WHERE t.academic_year <> st.academic_year GROUP BY 1"))
             for t in ("vespa_scores", "question_responses")}
    sql = ("SELECT CAST(st.establishment_id AS TEXT) AS establishment_id, q.academic_year, q.cycle, "
           "count(*) AS answer_rows, count(DISTINCT CAST(q.student_id AS TEXT) || '|' || q.question_id) AS answer_pairs, "
           "count(DISTINCT q.student_id) AS answering, count(DISTINCT CASE WHEN s.id IS NULL THEN q.student_id END) "
           "AS without_scores FROM question_responses q JOIN students st ON st.id = q.student_id "
           "LEFT JOIN vespa_scores s ON s.student_id = q.student_id AND s.cycle = q.cycle "
           "AND s.academic_year = q.academic_year GROUP BY 1, 2, 3")
    frame = _frame(con, sql, [], ["establishment_id", "academic_year", "cycle", "answer_rows", "answer_pairs",
                                  "answering", "without_scores"])
    frame["passed"] = (frame["answer_rows"] == frame["answer_pairs"]) & (frame["without_scores"] == 0)
    return frame, mixed


def _read_year(con: Any, labels: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    marks = ", ".join("?" for _ in labels)
    cols = ", ".join(_ELEMENTS)
    scores = _frame(con, f"SELECT CAST(student_id AS TEXT) AS student_id, academic_year, cycle, {cols} FROM vespa_scores "
                         f"WHERE academic_year IN ({marks})", labels,
                    ["student_id", "academic_year", "cycle", *_ELEMENTS])
    qs = ", ".join("?" for _ in OUTCOME_QUESTIONS)
    answers = _frame(con, "SELECT CAST(student_id AS TEXT) AS student_id, academic_year, cycle, question_id, "
                          f"response_value FROM question_responses WHERE academic_year IN ({marks}) "
                          f"AND question_id IN ({qs})", [*labels, *OUTCOME_QUESTIONS],
                     ["student_id", "academic_year", "cycle", "question_id", "response_value"])
    students = _frame(con, "SELECT CAST(id AS TEXT) AS id, email, CAST(establishment_id AS TEXT) AS establishment_id "
                           f"FROM students WHERE id IN (SELECT student_id FROM vespa_scores WHERE academic_year IN ({marks}) "
                           f"UNION SELECT student_id FROM question_responses WHERE academic_year IN ({marks}))",
                      [*labels, *labels], ["id", "email", "establishment_id"])
    return scores, answers, students


def column_scales(con: Any, table: str) -> dict[str, int]:
    """Decimal places of each fixed-point (numeric/decimal) column of ``table``, from the catalog.
    Production stores statistics as decimal(4,2) (docs/DOMAIN.md, “Production schema” as production has it); double
    columns have no scale and are compared at full precision. Read-only."""
    rows = run(con, "SELECT column_name, numeric_scale FROM information_schema.columns WHERE table_name = ? "
                    "AND table_schema IN ('public', 'main') AND (lower(data_type) LIKE ? OR lower(data_type) LIKE ?)",
               [table, "numeric%", "decimal%"])
    return {name: int(scale) for name, scale in rows if scale is not None}


def _difference(a: Any, b: Any) -> float | None:
    """|a - b| for two numbers, 0.0 for equal lists or two missing values, None when they cannot match."""
    if isinstance(a, list) or isinstance(b, list):
        return 0.0 if list(a or []) == list(b or []) else None
    a_missing = a is None or (isinstance(a, float) and math.isnan(a)) or pd.isna(a)
    b_missing = b is None or (isinstance(b, float) and math.isnan(b)) or pd.isna(b)
    if a_missing or b_missing:
        return 0.0 if a_missing and b_missing else None
    return abs(float(a) - float(b))


def _tolerance(b: Any, scale: int | None) -> float:
    """Allowed |stored - recomputed|: half a unit of the column's last decimal place (the database
    rounded the value when it stored it), plus a relative 1e-6 for floating point."""
    rounding = 0.5 * 10.0 ** -scale if scale is not None else 0.0
    return rounding + _TOL * max(1.0, abs(float(b)))


def _compare(db: pd.DataFrame, ref: pd.DataFrame, keys: list[str], scales: dict[str, int] | None = None) -> dict:
    """Rows missing from the database, extra in it, rows whose values differ beyond the column's
    precision, and the largest numeric difference found (whatever the precision)."""
    scales = scales or {}
    norm = {k: (lambda s: s.map(str)) for k in keys}
    left = db.assign(**{k: f(db[k]) for k, f in norm.items()}).set_index(keys)
    right = ref.assign(**{k: f(ref[k]) for k, f in norm.items()}).set_index(keys)
    common = left.index.intersection(right.index)
    values = [c for c in right.columns if c in left.columns]
    differing, largest = 0, 0.0
    for key in common:
        bad = False
        for c in values:
            a, b = left.at[key, c], right.at[key, c]
            diff = _difference(a, b)
            if diff is None:
                bad = True
                continue
            if not isinstance(a, list) and not isinstance(b, list):
                largest = max(largest, diff)
                bad = bad or (diff > 0 and diff > _tolerance(b, scales.get(c)))  # 0: equal, or missing on both sides
        differing += bad
    return {"db_rows": len(left), "recomputed_rows": len(right), "missing": len(right.index.difference(left.index)),
            "extra": len(left.index.difference(right.index)), "differing": differing, "largest_difference": largest}


def _statistics_rows(con: Any, bench_years: list[str]) -> list[dict]:
    out = []
    scales = {t: column_scales(con, t) for t in ("school_statistics", "national_statistics")}
    for year in bench_years:
        school, national = stats.statistics_frame(con, year)
        ref_school, ref_national = stats.independent_statistics(*_read_year(con, [year, f"{year[:4]}/{year[:4]}"]), year)
        for table, db, ref, keys in (("school_statistics", school, ref_school, ["establishment_id", "cycle",
                                                                                 "academic_year", "element"]),
                                     ("national_statistics", national, ref_national, ["cycle", "academic_year",
                                                                                      "element"])):
            cmp = _compare(db, ref, keys, scales[table])
            out.append({"academic_year": year, "part": table, **cmp,
                        "passed": cmp["missing"] == cmp["extra"] == cmp["differing"] == 0})
    return out


def dashboard_year_switching(con: Any) -> CheckResult:
    """Year list, one year per view, statistics equal a recomputation (module docstring). Read-only."""
    listed, with_scores = year_list(con), _years_with_scores(con)
    rows = [{"academic_year": y, "part": "year_list", "listed": y in listed, "passed": y in listed}
            for y in sorted(with_scores)]
    cohort, mixed = _cohort_rows(con)
    for table, by_year in mixed.items():
        rows += [{"academic_year": y, "part": f"{table}_in_another_year_than_student", "differing": int(n),
                  "passed": False} for y, n in by_year.items()]
    for y, g in cohort.groupby("academic_year"):
        rows.append({"academic_year": y, "part": "answers = students x questions", "differing": int((~g["passed"]).sum()),
                     "passed": bool(g["passed"].all())})
    bench = sorted({y for y in set(with_scores) | {_benchmark(y) for y in listed} if y})
    rows += _statistics_rows(con, bench)
    frame = pd.DataFrame(rows, columns=["academic_year", "part", "listed", "db_rows", "recomputed_rows", "missing",
                                        "extra", "differing", "largest_difference", "passed"])
    bad = frame[~frame["passed"].astype(bool)]
    largest = float(frame["largest_difference"].max()) if frame["largest_difference"].notna().any() else 0.0
    precision = {f"{t}.{c}": s for t in ("school_statistics", "national_statistics")
                 for c, s in column_scales(con, t).items()}
    at = (f"compared at each column's precision ({_precision_text(precision)}); largest difference {largest:.6g}")
    detail = (f"year list {listed} covers every year with scores; {len(frame)} views checked, each from its own "
              f"year's rows only and equal to the recomputation, {at}" if bad.empty else
              "; ".join(f"{r.academic_year} {r.part}" + (f" (missing {r.missing}, extra {r.extra}, differing "
                                                         f"{r.differing})" if "statistics" in r.part else "")
                        for r in bad.head(8).itertuples()) + f"; {at}")
    return CheckResult("dashboard_year_switching", bad.empty, frame,
                       {"year_list": listed, "years_with_scores": sorted(with_scores), "problems": len(bad),
                        "largest_statistics_difference": largest, "statistics_precision": precision},
                       detail, {"answers per school, year and cycle": cohort})


def _precision_text(precision: dict[str, int]) -> str:
    """``mean, std_dev: 2 decimals; skewness: 3 decimals`` (columns named once), or full precision."""
    if not precision:
        return "full precision: no fixed-point statistics columns"
    by_scale: dict[int, list[str]] = {}
    for name, scale in precision.items():
        column = name.split(".", 1)[1]
        if column not in by_scale.setdefault(scale, []):
            by_scale[scale].append(column)
    return "; ".join(f"{', '.join(cols)}: {s} decimals" for s, cols in sorted(by_scale.items())) + \
        ", other columns at full precision"


# --- national benchmarks ---------------------------------------------------------------------------


def _expected_counts(con: Any) -> dict[tuple, int]:
    """(benchmark year, cycle, element) -> values the national row must count (F15, docs/DOMAIN.md, “Academic years”)."""
    sums = ", ".join(f"sum(CASE WHEN s.{e} BETWEEN 1 AND 10 THEN 1 ELSE 0 END)" for e in _ELEMENTS)
    who = "JOIN students st ON st.id = {t}.student_id WHERE lower(st.email) NOT LIKE ? AND st.establishment_id IS NOT NULL"
    out: dict[tuple, int] = {}
    for label, cycle, *counts in run(con, f"SELECT s.academic_year, s.cycle, {sums} FROM vespa_scores s "
                                          f"{who.format(t='s')} GROUP BY 1, 2", [TEST]):
        for element, n in zip(_ELEMENTS, counts, strict=True):
            if _benchmark(label) and n:
                key = (_benchmark(label), int(cycle), element)
                out[key] = out.get(key, 0) + int(n)
    qs = ", ".join("?" for _ in OUTCOME_QUESTIONS)
    eri = (f"SELECT academic_year, cycle, count(*) FROM (SELECT q.academic_year, q.cycle, q.student_id FROM "
           f"question_responses q {who.format(t='q')} AND q.question_id IN ({qs}) AND q.response_value BETWEEN 1 AND 5 "
           "GROUP BY 1, 2, 3 HAVING count(*) = 3 AND count(DISTINCT q.question_id) = 3) x GROUP BY 1, 2")
    for label, cycle, n in run(con, eri, [TEST, *OUTCOME_QUESTIONS]):
        if _benchmark(label):
            key = (_benchmark(label), int(cycle), stats.ERI)
            out[key] = out.get(key, 0) + int(n)
    return out


def national_benchmarks_complete(con: Any) -> CheckResult:
    """National rows complete and well-formed for every year and cycle with data (module docstring). Read-only."""
    expected = _expected_counts(con)
    found = {(y, int(c), e): (int(n or 0), d) for y, c, e, n, d in
             run(con, "SELECT academic_year, cycle, element, count, CAST(distribution AS TEXT) FROM national_statistics")}
    rows = []
    for key in sorted(set(expected) | set(found), key=str):
        n, dist = found.get(key, (None, None))
        buckets = json.loads(dist) if dist else []
        calendar = years.is_canonical(key[0]) and years.is_calendar_label(key[0])
        ok = (key in found and not calendar and expected.get(key) == n and len(buckets) == 10
              and sum(buckets) == n)
        rows.append({"academic_year": key[0], "cycle": key[1], "element": key[2], "expected": expected.get(key),
                     "count": n, "buckets": len(buckets) if dist else None,
                     "bucket_sum": sum(buckets) if dist else None, "passed": ok})
    frame = pd.DataFrame(rows, columns=["academic_year", "cycle", "element", "expected", "count", "buckets",
                                        "bucket_sum", "passed"])
    bad = frame[~frame["passed"]]
    detail = (f"{len(frame)} national rows for {frame['academic_year'].nunique()} year(s), all present, 10 buckets "
              "summing to the count, test accounts excluded, calendar years in their benchmark year" if bad.empty
              else f"{len(bad)} problem(s): " + "; ".join(
                  f"{r.academic_year} c{r.cycle} {r.element}: count {r.count}, expected {r.expected}, "
                  f"buckets {r.buckets} summing to {r.bucket_sum}" for r in bad.head(6).itertuples()))
    return CheckResult("national_benchmarks_complete", bool(len(frame)) and bad.empty, frame,
                       {"rows": len(frame), "problems": len(bad),
                        "years": sorted(map(str, frame["academic_year"].unique()))}, detail)
