"""School and national statistics for academic years, computed set-based in the database (docs/DOMAIN.md, “Production schema”).

``recompute_statistics`` writes (inside the caller's transaction, never committing); ``statistics_frame``
and ``independent_statistics`` are read-only. Decisions where docs/DOMAIN.md is silent (for ARCHITECTURE.md):

- **Years.** A requested year is a UK label ``N = Y/Y+1``. Its slices are: ``national_statistics``
  rows labelled N, computed from scores labelled N **and** the calendar label ``Y/Y`` (docs/DOMAIN.md, “Academic years”:
  a calendar year ``Y/Y`` is counted in ``Y/Y+1``); ``school_statistics`` rows labelled N and ``Y/Y``
  (a school keeps its own label). The label always comes from the data, never from the clock (F13).
- **Values.** Element rows use scores 1..10; 0 ("not taken") and NULL count nowhere, so
  ``sum(distribution) == count``. Student ERI = mean of the three outcome answers (1..5) of one student
  and cycle, unrounded, only when all three are answered (as ``scores.scores_from_answers``).
- **ERI rows** (docs/DOMAIN.md, “Production schema”) keep ``mean = 0``; national rows carry the mean of student ERIs in
  ``eri_score`` and CI around it; school rows are written too (``mean = 0``, count, SD, percentiles),
  since school_statistics has no ``eri_score``. The ERI distribution counts student ERIs rounded to
  1..5 (buckets 6..10 stay 0; thirds never tie), so ``sum(distribution) == count`` holds for every row.
- **Excluded:** test accounts (F15); students without an establishment (national only).
  Labels are matched exactly: only canonical labels count (non-canonical spellings are the importer's
  to normalise, F11).
- **Archive marker:** where the tables have ``is_archived``, written rows carry it from
  ``academic_years`` (a calendar label follows its benchmark year) so a slice stays consistently marked.
- **Writes** are a set-based merge per slice: insert new keys, update keys whose values differ, delete
  stale keys of the slice only; other years and other establishments are never touched (F9, F16).
  Refuses to empty a year's national rows (the dashboard's year list, F9). Statistics are computed on
  integers (ERI as the sum of three answers, scaled by 1/3) so a constant set has SD and skewness 0.
"""

from __future__ import annotations

import json
import math
import statistics as pystats
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandas as pd

from vespa_lib.errors import GuardRefused, ParameterError, YearError
from vespa_lib.rules import years
from vespa_lib.rules.knack import is_test_account
from vespa_lib.rules.scores import OUTCOME_QUESTIONS
from vespa_lib.write.schema import dialect_of, table_columns

__all__ = ["ELEMENTS", "ERI", "SCORE_ELEMENTS", "recompute_statistics", "statistics_frame", "independent_statistics"]

SCORE_ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")  # docs/DOMAIN.md, “Production schema”
ERI = "ERI"
ELEMENTS = (*SCORE_ELEMENTS, ERI)
TEST_PATTERN = "%@vespa.academy"  # F15: VESPA's own test accounts
Z95 = 1.96  # docs/DOMAIN.md, “Production schema”: 95 % CI = mean ± 1.96·sd/√n
SCHOOL, NATIONAL = "school_statistics", "national_statistics"
_STATS = ("mean", "std_dev", "count", "percentile_25", "percentile_50", "percentile_75", "distribution")
_NATIONAL_EXTRA = ("eri_score", "min_value", "max_value", "confidence_interval_lower",
                   "confidence_interval_upper", "skewness")
_KEYS = {SCHOOL: ("establishment_id", "cycle", "academic_year", "element"),
         NATIONAL: ("cycle", "academic_year", "element")}
_VALUES = {SCHOOL: _STATS, NATIONAL: (*_STATS, *_NATIONAL_EXTRA)}
_JSON = {"postgres": "jsonb_build_array({})", "duckdb": "to_json([{}])"}
_TEMP = {SCHOOL: "_stats_school_new", NATIONAL: "_stats_national_new"}


# --- SQL building (identifiers from the constants above; values are always parameters) -----------

def _year_map(labels: dict[str, tuple[str, bool]]) -> tuple[str, list]:
    """``ym(label, benchmark, archived)`` as a VALUES list and its parameters."""
    rows = ", ".join("(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BOOLEAN))" for _ in labels)
    params = [p for label, (bench, archived) in labels.items() for p in (label, bench, archived)]
    return f"ym(label, benchmark, archived) AS (SELECT * FROM (VALUES {rows}) AS v(label, benchmark, archived))", params


def _values_sql(labels: dict[str, tuple[str, bool]]) -> tuple[str, list]:
    """One row per counted value: keys, element, integer ``x``, ``scale`` (x / scale is the value), bucket."""
    ym, params = _year_map(labels)
    cols = ", ".join(f"s.{e}" for e in SCORE_ELEMENTS)
    outcome = ", ".join("?" for _ in OUTCOME_QUESTIONS)
    keys = "establishment_id, label, benchmark, archived, cycle"
    unpivot = " UNION ALL ".join(
        f"SELECT {keys}, '{e}' AS element, {e} AS x, 1 AS scale, {e} AS bucket FROM sc WHERE {e} BETWEEN 1 AND 10"
        for e in SCORE_ELEMENTS)
    sql = f"""WITH {ym},
stu AS (SELECT id, establishment_id FROM students WHERE lower(trim(email)) NOT LIKE ?),
sc AS (SELECT st.establishment_id, ym.label, ym.benchmark, ym.archived, s.cycle, {cols}
       FROM vespa_scores s JOIN ym ON ym.label = s.academic_year JOIN stu st ON st.id = s.student_id),
eri AS (SELECT st.establishment_id, ym.label, ym.benchmark, ym.archived, q.cycle,
               CAST(SUM(q.response_value) AS INTEGER) AS x
        FROM question_responses q JOIN ym ON ym.label = q.academic_year JOIN stu st ON st.id = q.student_id
        WHERE q.question_id IN ({outcome}) AND q.response_value BETWEEN 1 AND 5
        GROUP BY st.establishment_id, q.student_id, ym.label, ym.benchmark, ym.archived, q.cycle
        HAVING COUNT(*) = 3 AND COUNT(DISTINCT q.question_id) = 3)
{unpivot}
UNION ALL SELECT {keys}, '{ERI}' AS element, x, 3 AS scale, CAST(floor((x + 1) / 3.0) AS INTEGER) AS bucket FROM eri"""
    return sql, [*params, TEST_PATTERN, *OUTCOME_QUESTIONS]


def _aggregate_sql(dialect: str, group: tuple[str, ...], extra: str = "") -> str:
    """Per-group moments over ``_stats_values``; two passes so skewness is exact for small spreads.
    ``extra``: more aggregate columns (``expr AS name, ``)."""
    g = ", ".join(group)
    on = " AND ".join(f"v.{c} = m.{c}" for c in (*group, "element"))
    dist = ", ".join(f"COUNT(*) FILTER (WHERE bucket = {k})" for k in range(1, 11))  # docs/DOMAIN.md, “Production schema”
    pct = ", ".join(f"percentile_cont({p}) WITHIN GROUP (ORDER BY x) / scale AS p{int(p * 100)}"
                    for p in (0.25, 0.5, 0.75))  # linear interpolation, as numpy's default
    return f"""WITH m AS (SELECT {g}, element, AVG(CAST(x AS DOUBLE PRECISION)) AS mx
           FROM _stats_values GROUP BY {g}, element),
d AS (SELECT v.*, CAST(v.x AS DOUBLE PRECISION) - m.mx AS dev FROM _stats_values v JOIN m ON {on})
SELECT {g}, element, {extra}COUNT(*) AS n, CAST(AVG(x) AS DOUBLE PRECISION) / scale AS mu,
       stddev_pop(x) / scale AS sd, {pct}, CAST(MIN(x) AS DOUBLE PRECISION) / scale AS lo,
       CAST(MAX(x) AS DOUBLE PRECISION) / scale AS hi, AVG(dev * dev) AS m2, AVG(dev * dev * dev) AS m3,
       {_JSON[dialect].format(dist)} AS distribution
FROM d GROUP BY {g}, element, scale"""


def _new_rows_sql(dialect: str, table: str) -> str:
    """The desired rows of ``table`` (its columns plus ``benchmark`` and ``is_archived``)."""
    mean = f"CASE WHEN element = '{ERI}' THEN 0 ELSE mu END"  # docs/DOMAIN.md, “Production schema”: ERI rows keep mean = 0
    common = (f"cycle, {{year}} AS academic_year, element, {mean} AS mean, sd AS std_dev, n AS count, "
              "p25 AS percentile_25, p50 AS percentile_50, p75 AS percentile_75, distribution")
    if table == SCHOOL:
        agg = _aggregate_sql(dialect, ("establishment_id", "label", "benchmark", "archived", "cycle"))
        return (f"SELECT establishment_id, {common.format(year='label')}, benchmark, archived AS is_archived "
                f"FROM ({agg}) a WHERE establishment_id IS NOT NULL")
    # one national row per benchmark year: a closed calendar year Y/Y counts in the open Y/Y+1 (archived
    # only when every counted label is; grouping by the flag made two rows of one key after 1 January)
    agg = _aggregate_sql(dialect, ("benchmark", "cycle"), "bool_and(archived) AS archived, ")
    half = f"{Z95} * sd / sqrt(n)"
    return (f"SELECT {common.format(year='benchmark')}, CASE WHEN element = '{ERI}' THEN mu END AS eri_score, "
            f"lo AS min_value, hi AS max_value, mu - {half} AS confidence_interval_lower, "
            f"mu + {half} AS confidence_interval_upper, "
            "CASE WHEN m2 = 0 THEN 0 ELSE m3 / power(m2, 1.5) END AS skewness, "  # third standardised moment
            f"benchmark, archived AS is_archived FROM ({agg}) a")


_EXACT = {"count", "distribution", "is_archived"}


def _differs(table: str, column: str) -> str:
    """SQL: the stored value differs from the recomputed one. Doubles compare with a relative
    tolerance of 1e-9: DuckDB's parallel aggregates can differ in the last bits from run to run, and
    float noise is not a change (it would rewrite rows and their calculated_at for nothing)."""
    if column in _EXACT:
        return f"{table}.{column} IS DISTINCT FROM n.{column}"
    return (f"(({table}.{column} IS NULL) <> (n.{column} IS NULL) "
            f"OR abs({table}.{column} - n.{column}) > 1e-9 * greatest(1.0, abs(n.{column})))")


def _merge_sql(table: str, scope: str, archived: bool) -> dict[str, str]:
    """Set-based merge of ``_TEMP[table]`` into ``table`` limited to the slice ``scope``."""
    new, keys = _TEMP[table], _KEYS[table]
    cols = (*_VALUES[table], *(("is_archived",) if archived else ()))
    match = " AND ".join(f"n.{k} = {table}.{k}" for k in keys)
    differs = " OR ".join(_differs(table, c) for c in cols)
    sets = ", ".join(f"{c} = n.{c}" for c in cols)
    all_cols = ", ".join((*keys, *cols))
    return {
        "delete": f"DELETE FROM {table} WHERE {scope} AND NOT EXISTS (SELECT 1 FROM {new} n WHERE {match})",
        "update": f"UPDATE {table} SET {sets}, calculated_at = current_timestamp FROM {new} n "
                  f"WHERE {match} AND ({differs})",
        "insert": f"INSERT INTO {table} ({all_cols}, calculated_at) "
                  f"SELECT {', '.join(f'n.{c}' for c in (*keys, *cols))}, current_timestamp FROM {new} n "
                  f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {match})",
    }


# --- execution -----------------------------------------------------------------------------------

def _execute(con: Any, dialect: str, sql: str, params: list | tuple = ()) -> Any:
    """Run one statement with ``?`` placeholders (``%s`` for psycopg); returns the cursor."""
    if dialect == "postgres":
        sql = sql.replace("?", "%s")
    return con.execute(sql, list(params) or None)


def _affected(con: Any, dialect: str, sql: str, params: list | tuple = ()) -> int:
    cur = _execute(con, dialect, sql, params)
    return int(cur.rowcount) if dialect == "postgres" else int(cur.fetchall()[0][0])


def _require_transaction(con: Any, dialect: str) -> None:
    """Refuse to run outside the caller's transaction: a half-done merge must be able to roll back (F9)."""
    if dialect == "postgres":
        import psycopg

        inside = not con.autocommit or con.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    else:  # DuckDB: consecutive statements share a transaction id only inside an explicit transaction
        ids = [_execute(con, dialect, "SELECT txid_current()").fetchall()[0][0] for _ in range(2)]
        inside = ids[0] == ids[1]
    if not inside:
        raise GuardRefused("Refusing to recompute statistics outside a transaction: a failure half-way would "
                           "leave statistics deleted (F9). Open a transaction (or run through the guard) first.")


def _label_map(con: Any, dialect: str, requested: list[str]) -> dict[str, tuple[str, bool]]:
    """label -> (benchmark year, archived) for each requested year and its calendar counterpart."""
    archived = _archived_years(con, dialect)
    out = {}
    for year in requested:
        flag = year in archived
        out[year] = (year, flag)
        calendar = f"{year[:4]}/{year[:4]}"  # docs/DOMAIN.md, “Academic years”: Y/Y is counted in Y/Y+1
        out[calendar] = (year, flag or calendar in archived)
    return out


def _archived_years(con: Any, dialect: str) -> set[str]:
    if not any(c["name"] == "is_archived" for c in table_columns(con, "academic_years")):
        return set()
    rows = _execute(con, dialect, "SELECT academic_year FROM academic_years WHERE is_archived").fetchall()
    return {r[0] for r in rows}


def _check_years(requested: list[str]) -> list[str]:
    if not requested:
        raise ParameterError("No academic year given: pass the UK years to recompute, e.g. ['2024/2025'].")
    out = []
    for label in requested:
        try:
            year = years.canonical(label)
        except YearError as exc:
            raise ParameterError(str(exc)) from exc
        if years.is_calendar_label(year):
            raise ParameterError(f"{label!r} is a calendar year: statistics are recomputed per benchmark year; "
                                 f"pass {years.benchmark_year(year)!r}, which includes {year}'s rows.")
        out.append(year)
    return sorted(set(out))


def _scope(table: str, labels: list[str], establishment_ids: list[str] | None) -> tuple[str, list]:
    where = f"academic_year IN ({', '.join('?' for _ in labels)})"
    if table == SCHOOL and establishment_ids is not None:
        where += f" AND establishment_id IN ({', '.join('CAST(? AS UUID)' for _ in establishment_ids)})"
        return where, [*labels, *establishment_ids]
    return where, list(labels)


def _stage(con: Any, dialect: str, labels: dict[str, tuple[str, bool]],
           establishment_ids: list[str] | None) -> None:
    """Compute the desired rows into temporary tables (nothing in the live tables changes yet)."""
    values, params = _values_sql(labels)
    for name, body, args in (("_stats_values", values, params),
                             (_TEMP[SCHOOL], _new_rows_sql(dialect, SCHOOL), []),
                             (_TEMP[NATIONAL], _new_rows_sql(dialect, NATIONAL), [])):
        _execute(con, dialect, f"DROP TABLE IF EXISTS {name}")
        _execute(con, dialect, f"CREATE TEMP TABLE {name} AS {body}", args)
    if dialect == "postgres":
        for table in (SCHOOL, NATIONAL):
            _as_stored(con, table)
    if establishment_ids is not None:
        ids = ", ".join("CAST(? AS UUID)" for _ in establishment_ids)
        _execute(con, dialect, f"DELETE FROM {_TEMP[SCHOOL]} WHERE establishment_id NOT IN ({ids})",
                 establishment_ids)


def _as_stored(con: Any, table: str) -> None:
    """PostgreSQL: give the staged values of ``table`` the live columns' numeric types, rounded as an
    insert would store them (production keeps statistics as decimal(4,2)). Compared unrounded, an
    unchanged statistic always differed, so every recompute rewrote it, an archived year's too, which
    the archive protection refuses."""
    types = dict(_execute(con, "postgres", "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                                           "WHERE a.attrelid = CAST(? AS regclass) AND a.attnum > 0 "
                                           "AND NOT a.attisdropped", [table]).fetchall())
    for column in _VALUES[table]:
        kind = types.get(column, "")
        if kind.startswith("numeric("):  # identifiers and types from the catalog, not from input
            _execute(con, "postgres", f"ALTER TABLE {_TEMP[table]} ALTER COLUMN {column} TYPE {kind} "
                                      f"USING CAST({column} AS {kind})")


def _counts(con: Any, dialect: str, table: str, requested: list[str]) -> dict[str, int]:
    rows = _execute(con, dialect, f"SELECT benchmark, COUNT(*) FROM {_TEMP[table]} GROUP BY benchmark").fetchall()
    found = {b: int(n) for b, n in rows}
    return {y: found.get(y, 0) for y in requested}


def _refuse_emptying(con: Any, dialect: str, new: dict[str, int]) -> None:
    """F9: never leave a year that has national rows with none (the dashboard's year list)."""
    for year, n in new.items():
        old = _execute(con, dialect, f"SELECT COUNT(*) FROM {NATIONAL} WHERE academic_year = ?", [year])
        if n == 0 and old.fetchall()[0][0] > 0:
            raise GuardRefused(f"Refusing to delete every national_statistics row of {year}: the recomputation "
                               "found no countable scores for it, which would hide the year from the dashboard "
                               "(F9). Check that the year's scores are present, then recompute.")


def recompute_statistics(con: Any, years: list[str], establishment_ids: list[str] | None = None) -> dict:
    """Recompute school and national statistics of ``years`` inside the caller's transaction (writes).

    ``establishment_ids`` limits the school slices (national rows of the years are always recomputed).
    Returns ``{school_statistics: {year: rows}, national_statistics: {year: rows},
    changes: {table: {insert, update, delete}}}``. Never commits; refuses outside a transaction.
    """
    dialect = dialect_of(con)
    requested = _check_years(years)
    if establishment_ids is not None and not establishment_ids:
        raise ParameterError("establishment_ids is empty: pass None for every school, or the ids to recompute.")
    _require_transaction(con, dialect)
    labels = _label_map(con, dialect, requested)
    ids = None if establishment_ids is None else [str(i) for i in establishment_ids]
    _stage(con, dialect, labels, ids)
    result: dict[str, Any] = {t: _counts(con, dialect, t, requested) for t in (SCHOOL, NATIONAL)}
    _refuse_emptying(con, dialect, result[NATIONAL])
    result["changes"] = {}
    for table in (SCHOOL, NATIONAL):
        slice_labels = list(labels) if table == SCHOOL else requested
        where, params = _scope(table, slice_labels, ids)
        archived = any(c["name"] == "is_archived" for c in table_columns(con, table))
        sql = _merge_sql(table, where, archived)
        result["changes"][table] = {
            "delete": _affected(con, dialect, sql["delete"], params),
            "update": _affected(con, dialect, sql["update"]),
            "insert": _affected(con, dialect, sql["insert"]),
        }
    for name in ("_stats_values", *_TEMP.values()):
        _execute(con, dialect, f"DROP TABLE {name}")
    return result


# --- reading -------------------------------------------------------------------------------------

def _frame(con: Any, dialect: str, sql: str, params: list) -> pd.DataFrame:
    cur = _execute(con, dialect, sql, params)
    names = [d[0] for d in cur.description]
    frame = pd.DataFrame.from_records(cur.fetchall(), columns=names)
    if "distribution" in frame:
        frame["distribution"] = [json.loads(d) if isinstance(d, str) else list(d) for d in frame["distribution"]]
    if "establishment_id" in frame:
        frame["establishment_id"] = frame["establishment_id"].map(str)
    return frame


def statistics_frame(con: Any, year: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(school rows of N and its calendar label ``Y/Y``, national rows of N), sorted by key. Read-only."""
    dialect = dialect_of(con)
    (year,) = _check_years([year])
    labels = [year, f"{year[:4]}/{year[:4]}"]
    cols = ", ".join((*_KEYS[SCHOOL], *_STATS))
    school = _frame(con, dialect, f"SELECT {cols} FROM {SCHOOL} WHERE academic_year IN (?, ?) "
                    "ORDER BY establishment_id, cycle, academic_year, element", labels)
    cols = ", ".join((*_KEYS[NATIONAL], *_VALUES[NATIONAL]))
    national = _frame(con, dialect, f"SELECT {cols} FROM {NATIONAL} WHERE academic_year = ? "
                      "ORDER BY cycle, academic_year, element", [year])
    return school, national


# --- the independent reference (plain Python / NumPy) -------------------------------------------

def _describe(values: list[float], eri: bool) -> dict:
    """The statistics of one group, computed without SQL (used to check the database's numbers)."""
    n, mu, sd = len(values), pystats.fmean(values), pystats.pstdev(values)
    p25, p50, p75 = np.percentile(np.array(values, dtype=float), [25, 50, 75], method="linear")
    skew = 0.0 if len(set(values)) == 1 else pystats.fmean([(v - mu) ** 3 for v in values]) / sd ** 3
    buckets = Counter(round(v) for v in values)  # ERI rounded to 1..5; scores are already 1..10
    return {"mean": 0.0 if eri else mu, "std_dev": sd, "count": n, "percentile_25": float(p25),
            "percentile_50": float(p50), "percentile_75": float(p75),
            "distribution": [buckets.get(k, 0) for k in range(1, 11)], "eri_score": mu if eri else None,
            "min_value": min(values), "max_value": max(values),
            "confidence_interval_lower": mu - Z95 * sd / math.sqrt(n),
            "confidence_interval_upper": mu + Z95 * sd / math.sqrt(n), "skewness": skew}


def _student_values(scores_df: pd.DataFrame, answers_df: pd.DataFrame, students: dict,
                    labels: set[str]) -> list[tuple]:
    """(student, label, cycle, element, value) for every counted score and student ERI."""
    out = []
    for row in scores_df.to_dict("records"):
        if row["academic_year"] in labels and row["student_id"] in students:
            out += [(row["student_id"], row["academic_year"], int(row["cycle"]), e, float(row[e]))
                    for e in SCORE_ELEMENTS if not pd.isna(row[e]) and 1 <= row[e] <= 10]
    outcome: dict[tuple, dict] = defaultdict(dict)
    for row in answers_df.to_dict("records"):
        value = row["response_value"]
        if (row["academic_year"] in labels and row["student_id"] in students
                and row["question_id"] in OUTCOME_QUESTIONS and not pd.isna(value) and 1 <= value <= 5):
            outcome[(row["student_id"], row["academic_year"], int(row["cycle"]))][row["question_id"]] = value
    out += [(*key, ERI, sum(a.values()) / 3) for key, a in outcome.items() if len(a) == 3]
    return out


def independent_statistics(scores_df: pd.DataFrame, answers_df: pd.DataFrame, students_df: pd.DataFrame,
                           year: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The statistics of ``year`` recomputed in Python, shaped like ``statistics_frame``. Read-only."""
    (year,) = _check_years([year])
    labels = {year, f"{year[:4]}/{year[:4]}"}
    students = {str(s["id"]): s["establishment_id"] for s in students_df.to_dict("records")
                if not is_test_account(s["email"])}  # F15
    scores_df = scores_df.assign(student_id=scores_df["student_id"].map(str))
    answers_df = answers_df.assign(student_id=answers_df["student_id"].map(str))
    school, national = defaultdict(list), defaultdict(list)
    for student, label, cycle, element, value in _student_values(scores_df, answers_df, students, labels):
        national[(cycle, year, element)].append(value)
        if not pd.isna(students[student]):
            school[(str(students[student]), cycle, label, element)].append(value)
    school_rows = [{**dict(zip(_KEYS[SCHOOL], k, strict=True)),
                    **{c: v for c, v in _describe(vals, k[-1] == ERI).items() if c in _STATS}}
                   for k, vals in sorted(school.items())]
    national_rows = [{**dict(zip(_KEYS[NATIONAL], k, strict=True)), **_describe(vals, k[-1] == ERI)}
                     for k, vals in sorted(national.items())]
    return (pd.DataFrame(school_rows, columns=[*_KEYS[SCHOOL], *_STATS]),
            pd.DataFrame(national_rows, columns=[*_KEYS[NATIONAL], *_VALUES[NATIONAL]]))
