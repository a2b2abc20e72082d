"""What the ledger says about imports, syncs and rollovers, for the year_transition runbook. Read-only.

A guarded run's ledger row (``vespa_ops.ledger``) carries ``counts`` as JSON. The year counts a run
*left in the database* per academic-year label are read from it in this order:

1. ``counts.year_counts[label]`` = ``{students, vespa_scores, question_responses, cycle_1..3}`` when
   the run recorded them (the rollover does; the importer may);
2. otherwise from the guard's plan: ``insert + update + unchanged`` per table and label of
   ``counts.plan`` (the rows the run desired; deletes and refusals are not rows it left);
3. a label of the run's scope (``counts.scope_years``) without a plan cell: no row in any table
   (a sync of a running year whose source holds nothing yet).

For a sync_check run these are the **source counts** (what the source says the year holds). The
night a sync ran is ``counts.as_of``, else ``parameters.as_of``, else ``started_at`` as a UK date
(docs/ARCHITECTURE.md, “Runbooks”: the sync is told its date; cron runs record it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from vespa_lib.rules import years
from vespa_lib.write.schema import WORKBOOK_SCHEMA, table_columns
from vespa_lib.write.sql import run

__all__ = ["DATA_TABLES", "LedgerRun", "ledger_runs", "live_counts", "year_counts"]

DATA_TABLES = ("students", "vespa_scores", "question_responses")
UK = ZoneInfo("Europe/London")  # docs/DOMAIN.md, “Academic years”: UK local dates


@dataclass(frozen=True)
class LedgerRun:
    """One ledger row, JSON fields decoded."""

    run_id: str
    runbook: str
    status: str
    started_at: Any
    parameters: dict
    counts: dict
    years: list

    @property
    def night(self) -> date | None:
        """The date the run considered "today" (module docstring)."""
        for text in (self.counts.get("as_of"), self.parameters.get("as_of")):
            if text:
                try:
                    return date.fromisoformat(str(text)[:10])
                except ValueError:
                    continue
        if isinstance(self.started_at, datetime):
            moment = self.started_at if self.started_at.tzinfo else self.started_at.replace(tzinfo=UK)
            return moment.astimezone(UK).date()
        return None

    def labels(self) -> set[str]:
        """Every year label the run named: its years column, plan counts, year counts and ``year``."""
        out = {str(y) for y in self.years or []}
        for by_year in self.counts.get("plan", {}).values():
            if isinstance(by_year, dict):
                out |= set(by_year)
        out |= set(self.counts.get("year_counts", {}))
        if self.counts.get("year"):
            out.add(str(self.counts["year"]))
        out |= {str(y) for y in self.counts.get("scope_years") or []}
        return out

    def changes(self) -> int:
        """Planned inserts + updates + deletes over every table and year."""
        return sum(int(c.get(op, 0)) for by_year in self.counts.get("plan", {}).values() if isinstance(by_year, dict)
                   for c in by_year.values() for op in ("insert", "update", "delete"))


def _doc(text: Any) -> Any:
    if text is None:
        return None
    return json.loads(text) if isinstance(text, str) else text


def ledger_runs(con: Any, runbooks: tuple[str, ...] | list[str]) -> list[LedgerRun]:
    """Ledger rows of ``runbooks``, oldest first (``.children`` helper runs of a sync excluded). Read-only."""
    if not table_columns(con, "ledger", WORKBOOK_SCHEMA):
        return []
    marks = ", ".join("?" for _ in runbooks)
    rows = run(con, f"SELECT run_id, runbook, status, started_at, CAST(parameters AS TEXT), CAST(counts AS TEXT), "
                    f"CAST(years AS TEXT) FROM {WORKBOOK_SCHEMA}.ledger WHERE runbook IN ({marks}) "
                    "ORDER BY started_at, run_id", list(runbooks))
    return [LedgerRun(r[0], r[1], r[2], r[3], _doc(r[4]) or {}, _doc(r[5]) or {}, _doc(r[6]) or [])
            for r in rows if not str(r[0]).endswith(".children")]


def year_counts(entry: LedgerRun, label: str) -> dict[str, int] | None:
    """What ``entry`` left in the database for ``label`` (module docstring), or None if it says nothing."""
    recorded = entry.counts.get("year_counts", {})
    if label in recorded:
        return {k: int(v) for k, v in recorded[label].items()}
    out = {}
    for table, by_year in entry.counts.get("plan", {}).items():
        if table in DATA_TABLES and isinstance(by_year, dict) and label in by_year:
            c = by_year[label]
            out[table] = int(c.get("insert", 0)) + int(c.get("update", 0)) + int(c.get("unchanged", 0))
    if not out and label in (entry.counts.get("scope_years") or []):
        return dict.fromkeys(DATA_TABLES, 0)
    return out or None


def live_counts(con: Any, label: str) -> dict[str, int]:
    """Rows of ``label`` now: students, vespa_scores, question_responses, and scores per cycle. Read-only."""
    out = {t: int(run(con, f"SELECT count(*) FROM {t} WHERE academic_year = ?", [label])[0][0]) for t in DATA_TABLES}
    cycles = dict(run(con, "SELECT cycle, count(*) FROM vespa_scores WHERE academic_year = ? GROUP BY cycle", [label]))
    out.update({f"cycle_{c}": int(cycles.get(c, 0)) for c in (1, 2, 3)})
    return out


def canonical_or_none(label: Any) -> str | None:
    """The label if canonical, else None (F11 labels are canonical_year_labels' to report)."""
    return label if years.is_canonical(label) else None
