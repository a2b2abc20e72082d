"""What every audit section shares: the ``Source`` it reads, ``Finding``/``Section`` results, and
recording findings as runbook checks (docs/ARCHITECTURE.md, “Runbooks”).

    Source      the target itself (DuckDB, PostgreSQL) or an in-memory DuckDB copy of it (REST)
    Finding     one observation: a stable check name, its failure-catalogue code, a count, figures
    Section     a DataFrame to show plus the findings it supports

Verdict semantics: an audit observes. A finding with a non-zero count is recorded as a check that
*passes* unless its code (``F2``) or check name is listed in the runbook's ``fail_on`` parameter,
so a damaged database still gives a passed audit run, while cron can ask to fail on named findings.
A check the target cannot answer (keys and RLS over REST, RLS on DuckDB) is *not run*: it is listed
under ``checks_not_run`` in the manifest, never recorded as passed, and a ``fail_on`` naming it fails
the run (an alarm that cannot be evaluated must not stay silent).
Everything here is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vespa_lib.errors import ParameterError

__all__ = ["CATALOGUE", "Finding", "Section", "Source", "as_source", "record", "validate_fail_on"]

# check name -> code. Codes are docs/DOMAIN.md, “Failure catalogue” failure ids, or a topic for checks outside the catalogue.
CATALOGUE: dict[str, str] = {
    "noncanonical_year_labels": "F11",
    "single_year_keys": "F2",
    "expected_keys_missing": "keys",
    "duplicate_emails_in_year": "duplicates",
    "f10_cycle_copies": "F10",
    "f8_answer_year_mismatch": "F8",
    "answers_without_scores": "F8",
    "orphan_scores": "orphans",
    "orphan_answers": "orphans",
    "orphan_students": "orphans",
    "test_accounts_in_national_statistics": "F15",
    "f9_years_missing_from_dashboard": "F9",
    "national_rows_missing": "F9",
    "rls_disabled": "rls",
    "rows_lost_since_previous": "history",
}


@dataclass(frozen=True)
class Finding:
    """One audit observation. ``count`` 0 means nothing was found; a non-empty ``not_run`` is the
    reason the check could not run on this target (``count`` is then None)."""

    check: str
    count: int | None
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)
    not_run: str = ""

    @property
    def code(self) -> str:
        return CATALOGUE[self.check]

    @property
    def found(self) -> bool:
        return not self.not_run and self.count > 0

    @classmethod
    def unavailable(cls, check: str, reason: str) -> Finding:
        """A check that could not run on this target, and why."""
        return cls(check, None, f"not run: {reason}", not_run=reason)


@dataclass
class Section:
    """A section's table (what the notebook shows) and the findings drawn from it."""

    title: str
    frame: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)
    details: dict[str, pd.DataFrame] = field(default_factory=dict)  # secondary tables, by title

    def summary(self) -> pd.DataFrame:
        """One row per finding: check, code, count, detail."""
        rows = [{"check": f.check, "code": f.code, "count": f.count, "detail": f.detail} for f in self.findings]
        return pd.DataFrame(rows, columns=["check", "code", "count", "detail"])

    def finding(self, check: str) -> Finding:
        """The finding named ``check`` (KeyError if this section has none of that name)."""
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(check)


def validate_fail_on(fail_on: list) -> list[str]:
    """``fail_on`` checked against the catalogue: codes (``F2``) or check names. Read-only."""
    known = set(CATALOGUE) | set(CATALOGUE.values())
    unknown = [str(x) for x in fail_on if str(x) not in known]
    if unknown:
        raise ParameterError(
            f"fail_on names {unknown}, which the audit does not record. "
            f"Use failure codes {sorted(set(CATALOGUE.values()))} or check names {sorted(CATALOGUE)}."
        )
    return [str(x) for x in fail_on]


def record(run: Any, section: Section, fail_on: list | None = None) -> list[bool | None]:
    """Record each finding as ``run.check``: passes unless found AND named in ``fail_on``. A finding
    that could not run is listed under ``checks_not_run`` (result None), and recorded as a failed
    check when ``fail_on`` names it."""
    names = set(validate_fail_on(fail_on or []))
    results: list[bool | None] = []
    for f in section.findings:
        if f.not_run:
            results.append(_record_not_run(run, f, names))
            continue
        failing = f.found and (f.code in names or f.check in names)
        how = "fails the run (fail_on)" if failing else "observation" if f.found else "none found"
        figures = {"code": f.code, "count": f.count, **f.figures}
        results.append(run.check(f.check, not failing, figures, f"{f.detail} [{f.code}; {how}]"))
    return results


def _record_not_run(run: Any, f: Finding, names: set[str]) -> bool | None:
    listed = [c for c in run.records.get("checks_not_run", []) if c["check"] != f.check]
    run.record("checks_not_run", [*listed, {"check": f.check, "code": f.code, "reason": f.not_run}])
    if f.code in names or f.check in names:
        return run.check(f.check, False, {"code": f.code, "count": None, "not_run": f.not_run},
                         f"not run: {f.not_run} [{f.code}; named in fail_on, and an alarm that cannot be "
                         "evaluated fails the run]")
    print(f"NOT RUN  {f.check}: {f.not_run} [{f.code}]")
    return None


class Source:
    """Where the audit's SQL runs. DuckDB and PostgreSQL targets are queried in place; a Supabase
    REST target is first copied (paged, totals cross-checked) into an in-memory DuckDB, because REST
    cannot aggregate (F3). ``engine`` is the SQL dialect used: ``duckdb`` or ``postgres``.
    This is a read-only object: it never writes to the target.
    """

    def __init__(self, target: Any):
        from vespa_lib.sources import targets
        from vespa_lib.write import schema

        self.target, self.kind = target, target.kind
        self.engine = "postgres" if self.kind == "postgres" else "duckdb"
        available = set(target.tables())
        self.tables = [t.name for t in schema.PRODUCTION_TABLES if t.name in available]
        self._copy = targets.to_duckdb(target, self.tables) if self.kind == "supabase" else None
        cols = self.query(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
        self._columns: dict[str, set[str]] = {}
        for table, column in zip(cols["table_name"], cols["column_name"], strict=True):
            self._columns.setdefault(str(table), set()).add(str(column))

    @property
    def placeholder(self) -> str:
        return "%s" if self.engine == "postgres" else "?"

    def query(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        """Run a read-only query (placeholders: ``self.placeholder``) and return a DataFrame."""
        if self._copy is not None:
            return self._copy.execute(sql, list(params)).df()
        return self.target.sql(sql, list(params) if params else None)

    def read_table(self, table: str):
        """All rows of ``table`` as a pyarrow Table, ordered by ``id`` where it has one. Read-only."""
        order = "id" if "id" in self.columns(table) else None
        if self._copy is not None:  # REST: the audit's own paged, count-checked copy
            return self._copy.sql(f"SELECT * FROM {ident(table)}" + (" ORDER BY id" if order else "")).to_arrow_table()
        return self.target.read_table(table, None, order)

    def columns(self, table: str) -> set[str]:
        return self._columns.get(table, set())

    def has(self, table: str, *columns: str) -> bool:
        """Whether ``table`` is present and has every one of ``columns``."""
        return table in self.tables and set(columns) <= self.columns(table)

    def describe(self) -> str:
        return self.target.describe()


def as_source(t: Any) -> Source:
    """``t`` if it is already a Source, else a Source over target ``t``."""
    return t if isinstance(t, Source) else Source(t)


def ident(name: str) -> str:
    """A quoted SQL identifier for a table or column name the audit chose itself (never user input)."""
    return '"' + name.replace('"', '""') + '"'


def summary(sections: list[Section]) -> pd.DataFrame:
    """Every finding of ``sections`` as one table: section, check, code, count, detail. Read-only."""
    frames = [s.summary().assign(section=s.title) for s in sections if s.findings]
    cols = ["section", "check", "code", "count", "detail"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
