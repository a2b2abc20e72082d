"""Statistics rows for the synthetic production database (what the damaged nightly job left).

Writes ``school_statistics`` and ``national_statistics`` for one year of an open DuckDB
connection, set-based in SQL. Test accounts are excluded (F15). This is the generator's picture of
production, not the workbook's statistics module (a later issue owns that).
"""

from __future__ import annotations

import duckdb

_ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")


_AGG = """
SELECT {group_cols} cycle, academic_year, element, avg(score) AS mean, stddev_pop(score) AS std_dev,
       count(*) AS count, quantile_cont(score, 0.25) AS percentile_25,
       quantile_cont(score, 0.5) AS percentile_50, quantile_cont(score, 0.75) AS percentile_75,
       to_json([{dist}]) AS distribution, min(score) AS min_value, max(score) AS max_value
FROM scored GROUP BY ALL
"""


def write_statistics(con: duckdb.DuckDBPyConnection, year: str) -> None:
    """Insert school and national statistics for ``year`` (scores of that exact label only)."""
    dist = ", ".join(f"count(*) FILTER (WHERE score = {k})" for k in range(1, 11))
    scored = f"""
    WITH scored AS (
      SELECT st.establishment_id, vs.cycle, vs.academic_year, vs.element, vs.score::DOUBLE AS score
      FROM (UNPIVOT (SELECT * FROM vespa_scores WHERE academic_year = ?)
            ON {", ".join(_ELEMENTS)} INTO NAME element VALUE score) vs
      JOIN students st ON st.id = vs.student_id
      WHERE st.email NOT LIKE '%@vespa.academy'
    )"""
    school = scored + _AGG.format(group_cols="establishment_id,", dist=dist)
    con.execute(f"INSERT INTO school_statistics BY NAME SELECT * EXCLUDE (min_value, max_value), "
                f"TIMESTAMP '2025-10-15 03:00:00' AS calculated_at FROM ({school})", [year])
    national = scored + _AGG.format(group_cols="", dist=dist)
    con.execute(f"""INSERT INTO national_statistics BY NAME
        SELECT a.*, a.mean - 1.96 * a.std_dev / sqrt(a.count) AS confidence_interval_lower,
               a.mean + 1.96 * a.std_dev / sqrt(a.count) AS confidence_interval_upper,
               TIMESTAMP '2025-10-15 03:00:00' AS calculated_at
        FROM ({national}) a""", [year])
    # ERI rows keep mean = 0 and carry the value in eri_score (docs/DOMAIN.md, “Production schema”).
    con.execute("""INSERT INTO national_statistics BY NAME
        SELECT cycle, academic_year, 'ERI' AS element, 0.0 AS mean, avg(e) AS eri_score, count(*) AS count,
               to_json([0,0,0,0,0,0,0,0,0,0]) AS distribution,
               TIMESTAMP '2025-10-15 03:00:00' AS calculated_at
        FROM (SELECT q.student_id, q.cycle, q.academic_year, avg(q.response_value) AS e
              FROM question_responses q JOIN students st ON st.id = q.student_id
              WHERE q.academic_year = ? AND q.question_id LIKE 'outcome_q_%'
                AND st.email NOT LIKE '%@vespa.academy' GROUP BY ALL) GROUP BY ALL""", [year])
