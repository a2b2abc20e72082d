"""The year_transition success criteria (docs/ARCHITECTURE.md, “Runbooks”): one read-only check each.

Every check takes an open connection (DuckDB or psycopg) and returns a ``CheckResult``: pass/fail,
an evidence table (one row per thing checked, with ``passed``), figures for the manifest and a
detail sentence. Charts are drawn by ``transition_charts``. Nothing here writes: the one probe that
tries a write (archive protection on PostgreSQL) does it inside a transaction it rolls back.

    archived_counts_match_ledger       each archived year = what its import/rollover ledger row left
    current_year_matches_last_sync     the current year = the last successful sync's source counts
    archived_rows_marked_and_protected is_archived on every archived row; triggers refuse a write
    sync_ran_every_night               a sync_check run on each night of the window, none failed
    dashboard_year_switching           (transition_dashboard) year list, one year per view, statistics
    national_benchmarks_complete       (transition_dashboard) national rows for every year/cycle/element
    canonical_year_labels              no label other than ``YYYY/YYYY`` anywhere
    cohort_in_one_year                 no cohort's cycles in two years without a reset record
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd

from vespa_lib.rules import years
from vespa_lib.transition.ledger import ledger_runs, live_counts, year_counts
from vespa_lib.write import protect
from vespa_lib.write.schema import PRODUCTION_TABLES, dialect_of, table_columns
from vespa_lib.write.sql import run, scalar

__all__ = ["OK_SYNC", "CheckResult", "archived_counts_match_ledger", "archived_rows_marked_and_protected",
           "archived_years", "canonical_year_labels", "cohort_in_one_year", "current_year", "current_year_matches_last_sync",
           "last_sync", "sync_ran_every_night"]

OK_SYNC = ("applied", "no changes", "planned")  # a sync_check run that ran to the end (planned: older ledgers)
FAILED_SYNC = ("failed", "refused", "applying")  # refused: a proof or the policy stopped it
WRITERS = ("import", "year_transition")


@dataclass
class CheckResult:
    """One success criterion: verdict, evidence table, manifest figures, one-sentence detail."""

    name: str
    passed: bool
    frame: pd.DataFrame
    figures: dict = field(default_factory=dict)
    detail: str = ""
    details: dict[str, pd.DataFrame] = field(default_factory=dict)

    def record(self, run_: Any) -> bool:
        """Record on a ``runbook.Run`` as ``run.check(name, passed, figures, detail)``."""
        return run_.check(self.name, self.passed, self.figures, self.detail)


def archived_years(con: Any) -> list[str]:
    """Years marked archived in academic_years (none before the workbook's migrations). Read-only."""
    if not any(c["name"] == "is_archived" for c in table_columns(con, "academic_years")):
        return []
    return [r[0] for r in run(con, "SELECT academic_year FROM academic_years WHERE is_archived ORDER BY 1")]


def current_year(con: Any, as_of: date) -> str:
    """The current UK year: academic_years' ``is_current`` row, else the year of ``as_of``. Read-only."""
    rows = [r[0] for r in run(con, "SELECT academic_year FROM academic_years WHERE is_current ORDER BY 1")]
    uk = [y for y in rows if years.is_canonical(y) and not years.is_calendar_label(y)]
    return uk[-1] if uk else years.current_year(as_of)


# --- 1. archived counts ----------------------------------------------------------------------------


def _last_writer(runs: list, label: str) -> Any:
    done = [r for r in runs if r.status == "applied" and year_counts(r, label) is not None]
    return done[-1] if done else None


def archived_counts_match_ledger(con: Any, expected: dict | None = None) -> CheckResult:
    """Each archived year's rows (students, scores, answers, scores per cycle) equal what the last
    import or rollover ledger row of that year left, and ``expected[year]`` where given. Read-only."""
    expected = expected or {}
    runs = ledger_runs(con, WRITERS)
    rows = []
    for label in sorted(set(archived_years(con)) | set(expected)):
        writer = _last_writer(runs, label)
        ledger = year_counts(writer, label) if writer else {}
        live = live_counts(con, label)
        want = {k: int(v) for k, v in expected.get(label, {}).items()}
        archived = label in archived_years(con)
        for measure in sorted(set(ledger) | set(want) | {"students", "vespa_scores"}):
            ok = archived and measure in ledger and ledger[measure] == live.get(measure)
            ok = ok and (measure not in want or want[measure] == live.get(measure))
            rows.append({"academic_year": label, "measure": measure, "live": live.get(measure),
                         "ledger": ledger.get(measure), "expected": want.get(measure), "archived": archived,
                         "run_id": writer.run_id if writer else None, "passed": bool(ok)})
    frame = pd.DataFrame(rows, columns=["academic_year", "measure", "live", "ledger", "expected", "archived",
                                        "run_id", "passed"])
    bad = frame[~frame["passed"]]
    detail = (f"{len(frame)} figures of {frame['academic_year'].nunique()} archived year(s) match their ledger"
              if bad.empty else f"{len(bad)} figure(s) differ from the ledger or expected: "
              + "; ".join(f"{r.academic_year} {r.measure} live {r.live} ledger {r.ledger} expected {r.expected}"
                          for r in bad.head(5).itertuples()))
    figures = {y: dict(zip(g["measure"], g["live"], strict=True)) for y, g in frame.groupby("academic_year")}
    return CheckResult("archived_counts_match_ledger", bool(len(frame)) and bad.empty, frame,
                       {"years": figures, "differences": len(bad)},
                       detail if len(frame) else "no archived year and no expected figures: nothing to compare")


# --- 2. current year against the last sync ---------------------------------------------------------


def last_sync(con: Any, year: str, statuses: tuple[str, ...] = OK_SYNC) -> Any:
    """The latest sync_check ledger row naming ``year`` with one of ``statuses``, or None. Read-only."""
    found = [r for r in ledger_runs(con, ("sync_check",)) if year in r.labels() and r.status in statuses]
    return found[-1] if found else None


def current_year_matches_last_sync(con: Any, as_of: date) -> CheckResult:
    """The current year's rows per label equal the last successful sync's source counts. Read-only."""
    year = current_year(con, as_of)
    sync = last_sync(con, year)
    rows = []
    if sync is not None:
        labels = sorted(label for label in sync.labels() | {year} if years.is_canonical(label))
        for label in labels:
            source, live = year_counts(sync, label) or {}, live_counts(con, label)
            for table in ("students", "vespa_scores", "question_responses"):
                rows.append({"academic_year": label, "table": table, "live": live[table],
                             "source": source.get(table, 0), "run_id": sync.run_id, "status": sync.status,
                             "passed": live[table] == source.get(table, 0)})
    frame = pd.DataFrame(rows, columns=["academic_year", "table", "live", "source", "run_id", "status", "passed"])
    bad = frame[~frame["passed"]]
    if sync is None:
        detail = f"no successful sync_check run for {year} in the ledger: run the sync_check runbook first"
    elif bad.empty:
        detail = f"{year} matches sync run {sync.run_id} ({sync.status}) on every table"
    else:
        detail = "; ".join(f"{r.academic_year} {r.table}: {r.live} rows, source {r.source}"
                           for r in bad.itertuples()) + f" (sync run {sync.run_id}, {sync.status})"
    return CheckResult("current_year_matches_last_sync", sync is not None and bad.empty, frame,
                       {"current_year": year, "sync_run": sync.run_id if sync else None,
                        "live": {f"{r.academic_year} {r.table}": r.live for r in frame.itertuples()}}, detail)


# --- 3. archive markers and protection -------------------------------------------------------------


def _archived_tables() -> list[str]:
    return [t.name for t in PRODUCTION_TABLES if t.name != "academic_years"
            and any(c.name == "is_archived" for c in t.columns)]


def _probe(con: Any, table: str, label: str) -> str:
    """Try a no-op UPDATE of one archived row in a rolled-back transaction; say what happened."""
    import psycopg

    with con.transaction(force_rollback=True):
        run(con, "SET TRANSACTION READ WRITE")  # read-only targets: the refusal must be the trigger's
        try:
            with con.transaction():  # a SAVEPOINT: the refusal does not abort the outer transaction
                n = run(con, f"UPDATE {table} SET is_archived = is_archived WHERE id IN "
                             f"(SELECT id FROM {table} WHERE academic_year = ? LIMIT 1)", [label])[0][0]
        except psycopg.errors.InsufficientPrivilege as exc:
            return "refused" if "VESPA archive protection" in str(exc) else f"error: {exc}"
    return "written (not protected)" if n else "no row to probe"


def _protection(con: Any, archived: list[str]) -> list[dict]:
    if dialect_of(con) != "postgres":
        return [{"table": "(all)", "protection": "DuckDB: no triggers; the library guard is the protection",
                 "passed": True}]
    installed = dict(run(con, "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(?)",
                         [list(protect.TRIGGER_NAMES)]))
    out = []
    for table in protect.PROTECTED_TABLES:
        names = [n for n in protect.TRIGGER_NAMES if n.endswith("_" + table)]
        active = all(installed.get(n) not in (None, "D") for n in names)
        label = next((y for y in archived if scalar(con, f"SELECT count(*) FROM {table} WHERE academic_year = ?",
                                                      [y])), None)
        probe = _probe(con, table, label) if label else "no archived row"
        out.append({"table": table, "protection": f"triggers {'active' if active else 'MISSING or disabled'}; "
                    f"probe: {probe}", "passed": active and probe in ("refused", "no archived row")})
    return out


def archived_rows_marked_and_protected(con: Any) -> CheckResult:
    """Every row of an archived year carries is_archived = true; on PostgreSQL the archive triggers are
    installed, enabled, and refuse a harmless UPDATE of an archived row (rolled back). Read-only."""
    archived = archived_years(con)
    rows = []
    if not any(c["name"] == "is_archived" for c in table_columns(con, "students")):
        return CheckResult("archived_rows_marked_and_protected", False, pd.DataFrame(columns=["table", "passed"]),
                           {"migrated": False}, "no is_archived markers: the workbook's migrations were never "
                           "applied. Run the import runbook (it applies them through the guard), then validate again")
    for table in _archived_tables():
        for label in archived:
            total, unmarked = run(con, f"SELECT count(*), count(*) FILTER (WHERE NOT coalesce(is_archived, false)) "
                                       f"FROM {table} WHERE academic_year = ?", [label])[0]
            rows.append({"table": table, "academic_year": label, "rows": int(total), "unmarked": int(unmarked),
                         "passed": unmarked == 0})
    frame = pd.DataFrame(rows, columns=["table", "academic_year", "rows", "unmarked", "passed"])
    protection = pd.DataFrame(_protection(con, archived), columns=["table", "protection", "passed"])
    unmarked = int(frame["unmarked"].sum()) if len(frame) else 0
    passed = bool(archived) and unmarked == 0 and bool(protection["passed"].all())
    detail = (f"{int(frame['rows'].sum()) if len(frame) else 0} rows of {', '.join(archived) or 'no year'} "
              f"archived; {unmarked} unmarked; "
              + "; ".join(f"{r.table}: {r.protection}" for r in protection.itertuples() if not r.passed or
                          r.table in ("students", "(all)")))
    return CheckResult("archived_rows_marked_and_protected", passed, frame,
                       {"archived_years": archived, "unmarked": unmarked, "dialect": dialect_of(con)},
                       detail, {"protection": protection})


# --- 4. the nightly sync ---------------------------------------------------------------------------


def sync_ran_every_night(con: Any, as_of: date, window_days: int) -> CheckResult:
    """A sync_check run on every night of the ``window_days`` nights ending at ``as_of`` (inclusive),
    each night's last run applied or found nothing to change. A refused run the data lead followed
    the same night with an approved apply leaves that night synced: its row shows both statuses, and
    ``overruled`` counts the refused or failed runs a later run of the night made good. Read-only."""
    if window_days < 1:
        from vespa_lib.errors import ParameterError

        raise ParameterError(f"sync_window_days is {window_days}; it must be at least 1 (nights ending at as_of).")
    nights = [as_of - timedelta(days=i) for i in range(window_days - 1, -1, -1)]
    runs = [r for r in ledger_runs(con, ("sync_check",)) if r.night in nights]
    rows = []
    for night in nights:
        mine = [r for r in runs if r.night == night]  # oldest first: the last run decides the night
        bad = [r for r in mine if r.status in FAILED_SYNC]
        last_bad = bool(mine) and mine[-1].status in FAILED_SYNC
        rows.append({"night": night, "runs": len(mine), "statuses": ", ".join(r.status for r in mine),
                     "failed": int(last_bad), "overruled": len(bad) - int(last_bad),
                     "passed": bool(mine) and not last_bad})
    frame = pd.DataFrame(rows, columns=["night", "runs", "statuses", "failed", "overruled", "passed"])
    missing = [str(r.night) for r in frame.itertuples() if not r.runs]
    failed = [str(r.night) for r in frame.itertuples() if r.failed]
    overruled = [str(r.night) for r in frame.itertuples() if r.overruled]
    later = f"; refused or failed, then applied the same night: {overruled}" if overruled else ""
    detail = (f"a sync_check run on each of {window_days} night(s) {nights[0]}..{nights[-1]}, each night's last run "
              f"applied or found no changes{later}" if not missing and not failed else
              f"nights without a sync run: {missing or 'none'}; nights whose last run failed or was refused: "
              f"{failed or 'none'}{later}")
    return CheckResult("sync_ran_every_night", not missing and not failed, frame,
                       {"window": [str(nights[0]), str(nights[-1])], "runs": len(runs), "missing_nights": missing,
                        "failed_nights": failed, "overruled_nights": overruled}, detail)


# --- 7. labels -------------------------------------------------------------------------------------


def canonical_year_labels(con: Any) -> CheckResult:
    """No academic_year label other than canonical ``YYYY/YYYY`` in any production table (F11). Read-only."""
    rows = []
    for table in PRODUCTION_TABLES:
        if not any(c.name == "academic_year" for c in table.columns):
            continue
        for label, n in run(con, f"SELECT academic_year, count(*) FROM {table.name} GROUP BY 1"):
            rows.append({"table": table.name, "academic_year": label, "rows": int(n),
                         "passed": years.is_canonical(label)})
    frame = pd.DataFrame(rows, columns=["table", "academic_year", "rows", "passed"]).sort_values(
        ["passed", "table", "academic_year"], ignore_index=True)
    bad = frame[~frame["passed"]]
    detail = (f"{len(frame)} (table, label) pairs, all canonical" if bad.empty else
              f"{int(bad['rows'].sum())} rows carry non-canonical labels: "
              + ", ".join(f"{r.table} {r.academic_year!r} ({r.rows})" for r in bad.head(8).itertuples()))
    return CheckResult("canonical_year_labels", bad.empty, frame,
                       {"noncanonical_rows": int(bad["rows"].sum()), "labels": sorted(map(str, bad["academic_year"]))},
                       detail)


# --- 8. cohorts -----------------------------------------------------------------------------------

_SAME_C1 = " AND ".join(f"c1.{e} = c2.{e}" for e in ("vision", "effort", "systems", "practice", "attitude", "overall"))
_COHORTS = f"""
WITH c AS (SELECT lower(s.email) AS email, t.academic_year AS y, t.cycle, t.vision, t.effort, t.systems, t.practice,
                  t.attitude, t.overall, t.completion_date FROM vespa_scores t JOIN students s ON s.id = t.student_id),
ys AS (SELECT email, y, bool_or(cycle = 1) AS has_c1, bool_or(completion_date IS NOT NULL) AS dated
       FROM c GROUP BY email, y)
SELECT a.email, a.y, b.y, b.has_c1, b.dated,
       EXISTS (SELECT 1 FROM c c1 JOIN c c2 ON c2.email = c1.email AND c2.cycle = 1 AND c2.y = b.y
               WHERE c1.email = a.email AND c1.cycle = 1 AND c1.y = a.y AND {_SAME_C1})
FROM ys a JOIN ys b ON b.email = a.email AND substr(b.y, 1, 4) > substr(a.y, 1, 4)
ORDER BY 2, 3, 1
"""


def cohort_in_one_year(con: Any) -> CheckResult:
    """Students whose cycles sit in two years without a reset record explaining it (docs/DOMAIN.md,
    "Cohort rule across 1 August"): the later year has no cycle 1 of its own, or its cycle 1 equals the
    earlier year's (the cohort copied into the new year). A later year with its own, different cycle 1
    is a reset record or a re-enrolment: explained. Emails masked. Read-only."""
    from vespa_lib.ops.privacy import mask_email  # noqa: PLC0415

    rows = [{"email": mask_email(e), "earlier_year": a, "later_year": b, "later_has_cycle_1": bool(c1),
             "same_cycle_1": bool(same), "later_year_dated": bool(dated), "passed": bool(c1) and not same}
            for e, a, b, c1, dated, same in run(con, _COHORTS)]
    frame = pd.DataFrame(rows, columns=["email", "earlier_year", "later_year", "later_has_cycle_1", "same_cycle_1",
                                        "later_year_dated", "passed"])
    unexplained = frame[~frame["passed"].astype(bool)]
    split = unexplained[unexplained["later_year_dated"].astype(bool)]  # the late-cycle signature: a dated move
    undated = len(unexplained) - len(split)  # F1 residue: copies without any date, which no date rule made
    detail = (f"{len(frame)} student(s) in two years, each explained by a reset record (a cycle 1 of its own)"
              if split.empty else f"{len(split)} student(s) have one cohort's cycles in two years (a dated later "
              "year without its own cycle 1, or with the earlier year's): move those cycles back to the cycle-1 "
              "year with a guarded import of it")
    if undated:
        detail += (f"; {undated} undated later-year cop{'y' if undated == 1 else 'ies'} of an earlier cohort "
                   "(F1 residue, no completion date: not a cohort split) listed for review")
    return CheckResult("cohort_in_one_year", split.empty, frame,
                       {"students_in_two_years": len(frame), "split_cohorts": len(split),
                        "later_year_without_cycle_1": int((~split["later_has_cycle_1"]).sum()),
                        "cycle_1_copied": int(split["same_cycle_1"].sum()), "undated_copies": undated}, detail)
