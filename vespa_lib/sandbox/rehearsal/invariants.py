"""The rehearsal's own invariants, checked after every night with its own SQL (never the runbooks'
checks or the library's statistics): each returns a list of violations (text, no personal data).

- ``closed_digests``: md5 of the ordered rows of each table for a closed year; ``closed_unchanged``
  compares them with the digests taken the night the year closed (byte-identical since);
- ``open_years_match``: every open year's students and scores equal Knack's state for that year;
- ``one_year_per_completion``: no (email, cycle) completion stored in two years of the same cohort;
- ``statistics_match``: the dashboard's year list and every school/national statistics row equal a
  recomputation at production precision (``decimal(4,2)``: rounded to 2 places);
- ``no_applying``: no ledger run left ``applying``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMES", "TABLES", "check_all", "closed_digests", "closed_unchanged", "no_applying", "one_year_per_completion",
           "open_years_match", "row_counts", "statistics_match"]

TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics")
ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")
TEST = "%@vespa.academy"


def _rows(con: Any, sql: str, params: list | tuple = ()) -> list[tuple]:
    return con.execute(sql, params).fetchall()


def _digest_sql(table: str) -> str:
    return (f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')), count(*) "
            f"FROM {table} t WHERE academic_year = %s")


def closed_digests(con: Any, labels: list[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """label -> table -> (md5 of the rows' text, sorted; row count)."""
    return {label: {t: tuple(_rows(con, _digest_sql(t), [label])[0]) for t in TABLES} for label in labels}


def closed_unchanged(con: Any, closed: dict[str, dict[str, tuple[str, int]]]) -> list[str]:
    now = closed_digests(con, list(closed))
    return [f"closed year {label}: {t} changed since it was closed ({was[1]} rows -> {now[label][t][1]})"
            for label, tables in closed.items() for t, was in tables.items() if now[label][t] != was]


def _db_year(con: Any, label: str) -> dict[str, dict[int, tuple]]:
    out: dict[str, dict[int, tuple]] = {}
    for email, cycle, *six in _rows(con, "SELECT lower(trim(s.email)), v.cycle, " + ", ".join(f"v.{e}" for e in ELEMENTS)
                                    + " FROM students s JOIN vespa_scores v ON v.student_id = s.id "
                                    "WHERE s.academic_year = %s", [label]):
        out.setdefault(email, {})[int(cycle)] = tuple(int(x) if x is not None else None for x in six)
    for (email,) in _rows(con, "SELECT lower(trim(email)) FROM students WHERE academic_year = %s", [label]):
        out.setdefault(email, {})
    return out


def open_years_match(con: Any, expected: dict[str, dict[str, dict[int, tuple]]], open_labels: list[str]) -> list[str]:
    """Each open label's (email, cycle, six scores) equal to Knack's state (no personal data reported)."""
    out = []
    for label in open_labels:
        want, have = expected.get(label, {}), _db_year(con, label)
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        differ = [e for e in set(want) & set(have) if want[e] != have[e]]
        if missing or extra or differ:
            out.append(f"open year {label}: {len(missing)} Knack student(s) missing, {len(extra)} not in Knack, "
                       f"{len(differ)} with different cycles/scores (of {len(want)} expected)")
    return out


def one_year_per_completion(con: Any) -> list[str]:
    """No student completion (email, cycle, the six scores) stored under two labels."""
    rows = _rows(con, "SELECT count(*) FROM (SELECT lower(trim(s.email)), v.cycle, "
                      + ", ".join(f"v.{e}" for e in ELEMENTS) + " FROM students s JOIN vespa_scores v ON v.student_id = s.id "
                      "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 HAVING count(DISTINCT v.academic_year) > 1) d")
    n = rows[0][0]
    return [f"{n} completion(s) stored in two years"] if n else []


def _recomputed(con: Any) -> tuple[dict, dict]:
    """(school, national) statistics recomputed from the rows: count, mean, population std_dev,
    rounded to 2 places; national rows count calendar years Y/Y in Y/Y+1 and leave test accounts out."""
    unpivot = " UNION ALL ".join(
        f"SELECT s.establishment_id, v.academic_year, v.cycle, '{e}' AS element, v.{e}::numeric AS x, "
        f"lower(trim(s.email)) LIKE %s AS test FROM vespa_scores v JOIN students s ON s.id = v.student_id "
        f"WHERE v.{e} BETWEEN 1 AND 10" for e in ELEMENTS)
    bench = ("CASE WHEN split_part(academic_year, '/', 1) = split_part(academic_year, '/', 2) THEN "
             "split_part(academic_year, '/', 1) || '/' || (split_part(academic_year, '/', 1)::int + 1) "
             "ELSE academic_year END")
    agg = "count(*), round(avg(x), 2), round(stddev_pop(x), 2)"
    params = [TEST] * len(ELEMENTS)
    school = {tuple(map(str, r[:4])): r[4:] for r in _rows(
        con, f"SELECT establishment_id, academic_year, cycle, element, {agg} FROM ({unpivot}) u "
             "WHERE NOT test GROUP BY 1, 2, 3, 4", params)}
    national = {tuple(map(str, r[:3])): r[3:] for r in _rows(
        con, f"SELECT {bench} AS b, cycle, element, {agg} FROM ({unpivot}) u WHERE NOT test GROUP BY 1, 2, 3", params)}
    return school, national


def statistics_match(con: Any, years_with_data: list[str]) -> list[str]:
    """Stored statistics (mean, std_dev, count of the six elements) equal the recomputation, and the
    dashboard's year list (distinct national_statistics years) is every benchmark year with scores."""
    school, national = _recomputed(con)
    stored_school = {tuple(map(str, r[:4])): r[4:] for r in _rows(
        con, "SELECT establishment_id, academic_year, cycle, element, count, mean, std_dev FROM school_statistics "
             "WHERE element <> 'ERI'")}
    stored_national = {tuple(map(str, r[:3])): r[3:] for r in _rows(
        con, "SELECT academic_year, cycle, element, count, mean, std_dev FROM national_statistics WHERE element <> 'ERI'")}
    out = []
    for name, want, have in (("school_statistics", school, stored_school), ("national_statistics", national, stored_national)):
        keys = set(want) | set(have)
        bad = sorted(k for k in keys if want.get(k) != have.get(k))
        if bad:
            years = sorted({k[1] if name == "school_statistics" else k[0] for k in bad})
            out.append(f"{name}: {len(bad)} of {len(keys)} rows differ from the recomputation (years {years})")
    listed = sorted(r[0] for r in _rows(con, "SELECT DISTINCT academic_year FROM national_statistics"))
    if listed != sorted({k[0] for k in national}):
        out.append(f"dashboard year list {listed} is not the years with scores {sorted({k[0] for k in national})}")
    return out


def no_applying(con: Any) -> list[str]:
    if not _rows(con, "SELECT 1 FROM information_schema.tables WHERE table_schema = 'vespa_ops' AND table_name = 'ledger'"):
        return []
    n = _rows(con, "SELECT count(*) FROM vespa_ops.ledger WHERE status = 'applying'")[0][0]
    return [f"{n} ledger run(s) left 'applying'"] if n else []


def row_counts(con: Any) -> dict[str, dict[str, int]]:
    """table -> label -> rows (for the report's timeline)."""
    return {t: dict(_rows(con, f"SELECT academic_year, count(*) FROM {t} GROUP BY 1")) for t in TABLES}


NAMES = ("closed_years_unchanged", "open_years_equal_knack", "no_completion_in_two_years",
         "statistics_equal_recomputation", "no_ledger_run_applying")


def check_all(con: Any, *, closed: dict, expected: dict, open_labels: list[str]) -> dict[str, list[str]]:
    """Every invariant: name -> violations."""
    return {"closed_years_unchanged": closed_unchanged(con, closed),
            "open_years_equal_knack": open_years_match(con, expected, open_labels),
            "no_completion_in_two_years": one_year_per_completion(con),
            "statistics_equal_recomputation": statistics_match(con, open_labels),
            "no_ledger_run_applying": no_applying(con)}
