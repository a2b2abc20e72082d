"""The audit runbook's logic (docs/ARCHITECTURE.md, “Runbooks”): what the production tables hold, and which of the
failures of docs/DOMAIN.md, “Failure catalogue” have left traces. Every function is a read-only operation: it reads the
target (or its in-memory DuckDB copy for REST targets) and returns a ``Section`` (a DataFrame to
show and the ``Finding``s it supports). Counting is done in the database (F3, F5): no large table
is pulled into pandas to be counted.

    counts, noncanonical_labels, duplicates, orphans, test_accounts, national_coverage  (this module)
    keys_and_indexes, rls_state                                    (audit_catalog: system catalogs)
    compare_previous, find_previous, backup, charts                (audit_history: evidence over time)
"""

from __future__ import annotations

import pandas as pd

from vespa_lib.audit.base import (
    CATALOGUE,
    Finding,
    Section,
    Source,
    as_source,
    ident,
    record,
    summary,
    validate_fail_on,
)
from vespa_lib.audit.catalog import keys_and_indexes, rls_state
from vespa_lib.audit.history import (
    backup,
    backup_mismatches,
    compare_previous,
    content_checksum,
    find_previous,
    restore_point_dir,
    rows_per_year_chart,
    scores_per_cycle_chart,
)
from vespa_lib.audit.national import national_coverage, test_accounts
from vespa_lib.errors import YearError
from vespa_lib.rules import years

__all__ = [
    "CATALOGUE", "Finding", "Section", "Source", "as_source", "record", "summary", "validate_fail_on",
    "counts", "noncanonical_labels", "keys_and_indexes", "duplicates", "orphans", "test_accounts",
    "national_coverage", "rls_state", "compare_previous", "find_previous", "backup", "backup_mismatches", "restore_point_dir", "content_checksum",
    "rows_per_year_chart", "scores_per_cycle_chart",
]

_SCORES = ("vision", "effort", "systems", "practice", "attitude", "overall")


def counts(t) -> Section:
    """Exact row counts per table × academic_year × cycle (where the table has them). Read-only."""
    src = as_source(t)
    frames = []
    for table in src.tables:
        keys = [c for c in ("academic_year", "cycle") if c in src.columns(table)]
        select = ", ".join([*keys, "COUNT(*) AS n"])
        group = f" GROUP BY {', '.join(keys)}" if keys else ""
        df = src.query(f"SELECT {select} FROM {ident(table)}{group}")
        df.insert(0, "table", table)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out = out.reindex(columns=["table", "academic_year", "cycle", "n"])
    out["academic_year"] = out["academic_year"].astype("str").where(out["academic_year"].notna(), None)
    out["cycle"] = pd.to_numeric(out["cycle"]).astype("Int64")
    out["n"] = out["n"].astype("int64")
    out = out.sort_values(["table", "academic_year", "cycle"], na_position="first", ignore_index=True)
    return Section("Rows per table × academic year × cycle", out)


def noncanonical_labels(t) -> Section:
    """Every academic_year value that is not canonical ``YYYY/YYYY``, with its canonical form and
    row count (F11). Read-only."""
    src = as_source(t)
    rows = []
    for table in src.tables:
        if "academic_year" not in src.columns(table):
            continue
        df = src.query(f"SELECT academic_year, COUNT(*) AS n FROM {ident(table)} GROUP BY academic_year")
        for label, n in zip(df["academic_year"], df["n"], strict=True):
            if not years.is_canonical(label):
                rows.append({"table": table, "academic_year": label, "canonical": _canonical_or_none(label),
                             "n": int(n)})
    out = pd.DataFrame(rows, columns=["table", "academic_year", "canonical", "n"])
    total = int(out["n"].sum())
    finding = Finding("noncanonical_year_labels", total,
                      f"{total} rows carry {out['academic_year'].nunique()} non-canonical year labels",
                      {"by_table": out.groupby("table")["n"].sum().to_dict()})
    return Section("Non-canonical academic-year labels (F11)", out, [finding])


def _canonical_or_none(label) -> str | None:
    try:
        return years.canonical(label)
    except YearError:
        return None


def duplicates(t) -> Section:
    """Same email twice in one year (students), F10 cycle copies (a cycle 2/3 row identical to the
    student's cycle 1 in all six scores and the completion date, docs/DOMAIN.md, “Known data points” 9), and F8 answers:
    answer rows whose year differs from the same student's scores' year for that cycle, and answer
    rows whose student has no scores that cycle. Read-only."""
    src = as_source(t)
    parts, findings = [], []
    if src.has("students", "email", "academic_year"):
        df = src.query(
            "SELECT academic_year, COUNT(*) AS emails, SUM(c) - COUNT(*) AS extra_rows FROM ("
            " SELECT LOWER(TRIM(email)) AS e, academic_year, COUNT(*) AS c FROM students"
            " GROUP BY LOWER(TRIM(email)), academic_year HAVING COUNT(*) > 1) d GROUP BY academic_year")
        parts.append(_part(df, "students", "same email twice in a year", "extra_rows"))
        n = int(df["extra_rows"].sum())
        findings.append(Finding("duplicate_emails_in_year", n,
                                f"{int(df['emails'].sum())} emails appear more than once in one year ({n} extra rows)"))
    if src.has("vespa_scores", "student_id", "cycle", "completion_date", *_SCORES):
        same = " AND ".join(f"c.{c} IS NOT DISTINCT FROM s.{c}" for c in (*_SCORES, "completion_date"))
        df = src.query(
            "SELECT c.academic_year, c.cycle, COUNT(*) AS n FROM vespa_scores c JOIN vespa_scores s"
            f" ON s.student_id = c.student_id AND s.cycle = 1 AND {same}"
            " WHERE c.cycle IN (2, 3) GROUP BY c.academic_year, c.cycle")
        parts.append(_part(df, "vespa_scores", "F10 copy of cycle 1", "n"))
        n = int(df["n"].sum())
        findings.append(Finding("f10_cycle_copies", n, f"{n} cycle 2/3 score rows are identical copies of cycle 1",
                                {"by_cycle": df.groupby("cycle")["n"].sum().to_dict()}))
    if src.has("question_responses", "student_id", "cycle") and src.has("vespa_scores", "student_id", "cycle"):
        parts += _answer_year_parts(src, findings)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return Section("Duplicates: emails per year, F10 cycle copies, F8 answer years", frame, findings)


def _answer_year_parts(src: Source, findings: list[Finding]) -> list[pd.DataFrame]:
    # docs/DOMAIN.md, “Academic years” cohort consistency: answers for a cycle carry the year of the scores for that cycle.
    same_cycle = "s.student_id = q.student_id AND s.cycle = q.cycle"
    mismatch = src.query(
        "SELECT q.academic_year, q.cycle, COUNT(*) AS n FROM question_responses q"
        f" WHERE EXISTS (SELECT 1 FROM vespa_scores s WHERE {same_cycle})"
        f" AND NOT EXISTS (SELECT 1 FROM vespa_scores s WHERE {same_cycle} AND s.academic_year = q.academic_year)"
        " GROUP BY q.academic_year, q.cycle")
    unscored = src.query(
        "SELECT q.academic_year, q.cycle, COUNT(*) AS n FROM question_responses q"
        f" WHERE NOT EXISTS (SELECT 1 FROM vespa_scores s WHERE {same_cycle})"
        " GROUP BY q.academic_year, q.cycle")
    n_mis, n_un = int(mismatch["n"].sum()), int(unscored["n"].sum())
    findings.append(Finding("f8_answer_year_mismatch", n_mis,
                            f"{n_mis} answer rows carry a year their student's scores for that cycle do not",
                            {"by_year": mismatch.groupby("academic_year")["n"].sum().to_dict()}))
    findings.append(Finding("answers_without_scores", n_un,
                            f"{n_un} answer rows belong to a student with no scores in that cycle"))
    return [_part(mismatch, "question_responses", "F8 year differs from scores' year", "n"),
            _part(unscored, "question_responses", "answers without scores that cycle", "n")]


def _part(df: pd.DataFrame, table: str, kind: str, count_col: str) -> pd.DataFrame:
    out = pd.DataFrame({
        "table": table, "kind": kind,
        "academic_year": df["academic_year"].astype("str") if len(df) else pd.Series(dtype="str"),
        "cycle": pd.to_numeric(df["cycle"]).astype("Int64") if "cycle" in df else pd.NA,
        "rows": pd.to_numeric(df[count_col]).astype("int64"),
    })
    return out.sort_values(["academic_year", "cycle"], ignore_index=True)


def orphans(t) -> Section:
    """Scores and answers whose student_id has no student; students whose establishment_id has no
    establishment (F16 leaves these behind). Read-only."""
    src = as_source(t)
    specs = [("orphan_scores", "vespa_scores", "student_id", "students"),
             ("orphan_answers", "question_responses", "student_id", "students"),
             ("orphan_students", "students", "establishment_id", "establishments")]
    rows, findings = [], []
    for check, child, fk, parent in specs:
        if not (src.has(child, fk, "academic_year") and src.has(parent, "id")):
            continue
        df = src.query(
            f"SELECT c.academic_year, COUNT(*) AS n FROM {ident(child)} c LEFT JOIN {ident(parent)} p"
            f" ON p.id = c.{ident(fk)} WHERE c.{ident(fk)} IS NOT NULL AND p.id IS NULL GROUP BY c.academic_year")
        for year, n in zip(df["academic_year"], df["n"], strict=True):
            rows.append({"table": child, "missing": f"{parent} ({fk})", "academic_year": str(year), "rows": int(n)})
        n = int(df["n"].sum())
        findings.append(Finding(check, n, f"{n} {child} rows point at no {parent} row through {fk}"))
    return Section("Orphans", pd.DataFrame(rows, columns=["table", "missing", "academic_year", "rows"]), findings)
