"""Audit sections about the national benchmarks: test accounts (F15) and ``national_statistics``
coverage, including the dashboard's year list (F9). Read-only operations (docs/ARCHITECTURE.md, “Runbooks”).

Score years are compared in their benchmark year (docs/DOMAIN.md, “Academic years”: an Australian calendar year
``Y/Y`` is counted in ``Y/Y+1``), after normalising non-canonical spellings (F11).
"""

from __future__ import annotations

import pandas as pd

from vespa_lib.audit.base import Finding, Section, as_source
from vespa_lib.errors import YearError
from vespa_lib.rules import years

__all__ = ["TEST_DOMAIN", "SCORE_ELEMENTS", "test_accounts", "national_coverage", "benchmark_label"]

# docs/DOMAIN.md, “Failure catalogue” F15: VESPA's own test accounts end in this domain.
TEST_DOMAIN = "@vespa.academy"
# docs/DOMAIN.md, “Production schema”: every (year, cycle) with scores needs these national rows; ERI only where answers exist.
SCORE_ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall")


def benchmark_label(label) -> str:
    """The national-benchmark year of a stored label; an unrecognised label is returned as is."""
    try:
        return years.benchmark_year(years.canonical(label))
    except YearError:
        return str(label)


def test_accounts(t) -> Section:
    """Rows per table and year that belong to ``@vespa.academy`` accounts, and for each (year, cycle)
    whether the national ``vision`` count matches the scores with test accounts included (F15)."""
    src = as_source(t)
    if not src.has("students", "email", "academic_year"):
        return Section("Test accounts (F15)", pd.DataFrame(), [])
    p, pattern = src.placeholder, "%" + TEST_DOMAIN
    test = f"LOWER(TRIM(st.email)) LIKE {p}"
    frames = [src.query(f"SELECT 'students' AS tbl, st.academic_year, COUNT(*) AS n FROM students st"
                        f" WHERE {test} GROUP BY st.academic_year", [pattern])]
    for table in ("vespa_scores", "question_responses"):
        if src.has(table, "student_id", "academic_year"):
            frames.append(src.query(
                f"SELECT '{table}' AS tbl, x.academic_year, COUNT(*) AS n FROM {table} x"
                f" JOIN students st ON st.id = x.student_id WHERE {test} GROUP BY x.academic_year", [pattern]))
    frame = pd.concat(frames, ignore_index=True).rename(columns={"tbl": "table"})
    frame["n"] = frame["n"].astype("int64")
    inclusion = _national_inclusion(src, test, pattern)
    included = inclusion[inclusion["national"] == "includes test accounts"] if len(inclusion) else inclusion
    finding = Finding(
        "test_accounts_in_national_statistics", len(included),
        f"{len(included)} national (year, cycle) vision counts equal the count WITH test accounts",
        {"test_rows": frame.groupby("table")["n"].sum().to_dict(),
         "pairs": [f"{y} c{c}" for y, c in zip(included.get("benchmark_year", []), included.get("cycle", []), strict=True)]},
    )
    return Section("Test accounts (F15)", frame, [finding], {"national inclusion": inclusion})


def _national_inclusion(src, test: str, pattern: str) -> pd.DataFrame:
    if not (src.has("vespa_scores", "vision", "cycle", "student_id") and src.has("national_statistics", "count")):
        return pd.DataFrame()
    sc = src.query(
        "SELECT x.academic_year, x.cycle, COUNT(*) AS total,"
        f" SUM(CASE WHEN {test} THEN 1 ELSE 0 END) AS test FROM vespa_scores x"
        " JOIN students st ON st.id = x.student_id WHERE x.vision IS NOT NULL"
        " GROUP BY x.academic_year, x.cycle", [pattern])
    sc["benchmark_year"] = sc["academic_year"].map(benchmark_label)
    # Statistics may have been computed over canonical labels only (F11 rows left out): keep both totals.
    sc["canonical_total"] = sc["total"].where(sc["academic_year"].map(years.is_canonical), 0)
    sc["canonical_test"] = sc["test"].where(sc["academic_year"].map(years.is_canonical), 0)
    sums = ["total", "test", "canonical_total", "canonical_test"]
    sc = sc.groupby(["benchmark_year", "cycle"], as_index=False)[sums].sum()
    nat = src.query("SELECT academic_year AS benchmark_year, cycle, SUM(\"count\") AS national_count"
                    " FROM national_statistics WHERE element = 'vision' GROUP BY academic_year, cycle")
    sc["cycle"], nat["cycle"] = sc["cycle"].astype("int64"), nat["cycle"].astype("int64")
    out = sc.merge(nat, how="left", on=["benchmark_year", "cycle"])
    out["national"] = [_inclusion(*r) for r in zip(out["national_count"], out["total"], out["test"],
                                                     out["canonical_total"], out["canonical_test"], strict=True)]
    return out


def _inclusion(national, total, test, canonical_total, canonical_test) -> str:
    """How a national count relates to the score counts with and without test accounts (F15)."""
    if pd.isna(national):
        return "no national row"
    if int(test) == 0:
        return "no test accounts"
    n, pairs = int(national), ((int(total), int(test)), (int(canonical_total), int(canonical_test)))
    if any(n == tot and tst > 0 for tot, tst in pairs):
        return "includes test accounts"
    return "excludes test accounts" if any(n == tot - tst for tot, tst in pairs) else "count differs"


def national_coverage(t) -> Section:
    """Per benchmark year × cycle with scores: the national_statistics rows present and the elements
    missing; the dashboard's year list (``SELECT DISTINCT academic_year FROM national_statistics``,
    docs/DOMAIN.md, “Production schema”) and the years with data it would not show (F9). Read-only."""
    src = as_source(t)
    if not src.has("vespa_scores", "academic_year", "cycle"):
        return Section("national_statistics coverage (F9)", pd.DataFrame(), [])
    sc = src.query("SELECT academic_year, cycle, COUNT(*) AS score_rows FROM vespa_scores"
                   " GROUP BY academic_year, cycle")
    sc["benchmark_year"] = sc["academic_year"].map(benchmark_label)
    sc["cycle"] = sc["cycle"].astype("int64")
    sc = sc.groupby(["benchmark_year", "cycle"], as_index=False)["score_rows"].sum()
    nat = pd.DataFrame(columns=["benchmark_year", "cycle", "element"])
    if src.has("national_statistics", "academic_year", "cycle", "element"):
        nat = src.query("SELECT DISTINCT academic_year AS benchmark_year, cycle, element FROM national_statistics")
    dashboard = sorted(str(y) for y in nat["benchmark_year"].dropna().unique())
    rows = []
    for year, cycle, n in zip(sc["benchmark_year"], sc["cycle"], sc["score_rows"], strict=True):
        have = set(nat.loc[(nat["benchmark_year"] == year) & (nat["cycle"].astype("int64") == cycle), "element"])
        missing = [e for e in SCORE_ELEMENTS if e not in have]
        rows.append({"benchmark_year": year, "cycle": int(cycle), "score_rows": int(n),
                     "national_elements": len(have), "missing_elements": ", ".join(missing),
                     "on_dashboard": year in dashboard})
    frame = pd.DataFrame(rows, columns=["benchmark_year", "cycle", "score_rows", "national_elements",
                                        "missing_elements", "on_dashboard"])
    gone = sorted(set(frame.loc[~frame["on_dashboard"].astype(bool), "benchmark_year"]))
    incomplete = frame[frame["missing_elements"] != ""]
    pairs = [f"{y} c{c}" for y, c in zip(incomplete["benchmark_year"], incomplete["cycle"], strict=True)]
    findings = [
        Finding("f9_years_missing_from_dashboard", len(gone),
                f"{len(gone)} years with scores are missing from the dashboard's year list: {', '.join(gone) or 'none'}",
                {"dashboard_years": dashboard, "missing_years": gone}),
        Finding("national_rows_missing", len(incomplete),
                f"{len(incomplete)} (year, cycle) pairs with scores lack national rows for some elements",
                {"pairs": pairs}),
    ]
    return Section("national_statistics coverage and the dashboard year list (F9)", frame, findings,
                   {"dashboard years": pd.DataFrame({"academic_year": dashboard})})
