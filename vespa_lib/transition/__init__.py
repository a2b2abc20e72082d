"""The year rollover (docs/ARCHITECTURE.md, “Runbooks”): close year N, open N+1, in one guarded run. Writes only in
``apply_rollover``; everything else is read-only. The checks of the success criteria live in
``transition_checks`` and ``transition_dashboard`` and are re-exported here.

What one rollover does, in ONE transaction (guard protocol, docs/ARCHITECTURE.md, “Guarded writes”): advisory lock, an
``applying`` ledger row with archive grants for N, statistics pre-images of N, **final statistics of
N recomputed**, every row of N (and of the calendar year ``Y/Y`` counted in N, docs/DOMAIN.md, “Academic years”) marked
``is_archived`` with pre-images, ``academic_years``: N archived and not current, N+1 present with
its dates and current (every other row not current), the ledger completed with the year counts and
the checksums of N's slices (later validations compare them: frozen). Undo is the guard's
``plan_undo``/``apply_undo`` (the ledger row carries ``statistics_years`` and the backups).

**Two boundaries** (docs/DOMAIN.md, “Academic years”, docs/YEARLY_PROCEDURE.md): on 1 August the UK year ``Y/Y+1`` closes
(with the calendar year ``Y/Y`` counted in it, when that one was not closed on its own 1 January) and
``Y+1/Y+2`` opens; on 1 January the calendar year ``Y/Y`` of the calendar-year schools closes alone:
its rows are marked archived and its ``academic_years`` row archived, no year is opened and the UK
current year is untouched (calendar years are never ``is_current``). The final statistics of a
calendar year are those of its benchmark year ``Y/Y+1``, which is recomputed (and backed up for undo).
``close_year`` defaults to the year whose end is the latest boundary before ``as_of``
(:func:`vespa_lib.rules.years.year_to_close`): a running year, UK or calendar, is never closed.

Extension of the guard (reported): ``guard.apply_plan`` recomputes statistics only when data rows
change and cannot insert an ``academic_years`` row for N+1, so this module composes the guard's own
steps through its public entry points instead: ``guard.guarded_write`` (approval, one transaction,
lock, re-plan, fingerprint), then ``open_run``, ``snapshot_stats``, ``mark_archived``, ``close_run``.

**Refusal rule while the sync has unapplied changes for N** (decided here): the last sync_check
ledger row naming N must be ``applied`` or ``no changes`` with every table of every label now equal to
its source counts, or (older ledgers) ``planned`` with zero planned changes. No such row refuses too.
``require_clean_sync=False`` waives the rule on DuckDB rehearsals only.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from vespa_lib.errors import GuardRefused, ParameterError, ValidationFailed
from vespa_lib.rules import stats, years
from vespa_lib.transition.checks import (
    CheckResult,
    archived_counts_match_ledger,
    archived_rows_marked_and_protected,
    canonical_year_labels,
    cohort_in_one_year,
    current_year_matches_last_sync,
    last_sync,
    sync_ran_every_night,
)
from vespa_lib.transition.dashboard import dashboard_year_switching, national_benchmarks_complete  # noqa: F401
from vespa_lib.transition.ledger import DATA_TABLES, live_counts, year_counts
from vespa_lib.write import guard
from vespa_lib.write.migrations import pending
from vespa_lib.write.planspec import sha
from vespa_lib.write.planstate import state_digest
from vespa_lib.write.schema import dialect_of, table_columns
from vespa_lib.write.sql import checksum_expr, in_list, rolled_back, row_text_expr, run, scalar

__all__ = ["MODES", "RUNBOOK", "STATE_TABLES", "Rollover", "apply_rollover", "close_year_for", "committed_message",
           "frozen_checksums", "counts_chart", "parse_as_of", "plan_rollover", "rehearsal_copy", "rollover_words",
           "sync_readiness", "validate_all", "written_record"]

RUNBOOK = "year_transition"
MODES = ("validate", "rollover")
STATE_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics", "national_statistics",
                "academic_years")


def parse_as_of(as_of: str, today: date, mode: str) -> date:
    """The run's date: ``as_of`` (YYYY-MM-DD) or ``today`` (the caller's clock, recorded); checks ``mode``."""
    if mode not in MODES:
        raise ParameterError(f"mode is {mode!r}; use one of {list(MODES)} (validate is read-only).")
    try:
        return date.fromisoformat(as_of) if as_of else today
    except ValueError:
        raise ParameterError(f"as_of {as_of!r} is not a date: write YYYY-MM-DD, or leave it empty for today.") from None


def counts_chart(frame: pd.DataFrame):
    """A matplotlib Figure: live rows against the ledger per year and measure (archived_counts). Read-only."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    data = frame[frame["measure"].isin(DATA_TABLES)]
    if len(data):
        data.assign(key=data["academic_year"] + " " + data["measure"]).set_index("key")[["live", "ledger"]].plot.barh(
            ax=ax, logx=True)
    ax.set(title="Archived years: rows now vs what the ledger says was applied", xlabel="rows (log scale)")
    return fig


def validate_all(con: Any, as_of: date, *, expected: dict | None = None, window_days: int = 7) -> list[CheckResult]:
    """Every success criterion, in the runbook's order. Read-only. On a database the workbook has not
    migrated yet (no ``is_archived`` markers), the archive checks are replaced by one failed check."""
    if not any(c["name"] == "is_archived" for c in table_columns(con, "academic_years")):
        missing = CheckResult("archive_schema_present", False, pd.DataFrame({"table": ["academic_years"],
                              "is_archived": [False], "passed": [False]}), {"migrated": False},
                              "no is_archived markers: the workbook's migrations were never applied. Run the import "
                              "runbook (it applies them through the guard), then validate again")
        return [missing, sync_ran_every_night(con, as_of, window_days), dashboard_year_switching(con),
                national_benchmarks_complete(con), canonical_year_labels(con)]
    return [archived_counts_match_ledger(con, expected), current_year_matches_last_sync(con, as_of),
            archived_rows_marked_and_protected(con), sync_ran_every_night(con, as_of, window_days),
            dashboard_year_switching(con), national_benchmarks_complete(con), canonical_year_labels(con),
            cohort_in_one_year(con)]


def close_year_for(as_of: date, close_year: str = "") -> str:
    """``close_year`` canonicalised (a UK year, or a calendar year ``Y/Y`` closed on its own), or the year
    whose end is the latest boundary before ``as_of``: from 1 August the UK year just ended, from
    1 January the calendar year just ended (:func:`vespa_lib.rules.years.year_to_close`)."""
    if close_year:
        try:
            return years.canonical(close_year)
        except years.YearError as exc:
            raise ParameterError(f"close_year: {exc}") from None
    return years.year_to_close(as_of)


def _opening(close: str) -> str | None:
    """The year a rollover opens: N+1 after a UK year; none after a calendar year (1 January)."""
    return None if years.is_calendar_label(close) else years.next_year(close)


def _statistics_years(close: str) -> list[str]:
    """The UK (benchmark) years whose statistics a rollover recomputes: N, or ``Y/Y+1`` for ``Y/Y``."""
    return [years.benchmark_year(close)]


def frozen_checksums(con: Any, labels: list[str]) -> dict[str, str]:
    """md5 of every row (all columns) of ``labels`` per production table. Read-only."""
    return {t: scalar(con, f"SELECT {checksum_expr([row_text_expr(con, t, 't')])} FROM {t} t "
                           f"WHERE t.academic_year IN {in_list(labels)}", labels) or "" for t in STATE_TABLES}


def rehearsal_copy(path: str | Path) -> Path:
    """A copy of a DuckDB file (and its WAL) in a fresh temp folder, outside outputs/ (raw data)."""
    src = Path(path)
    folder = Path(tempfile.mkdtemp(prefix="vespa-rehearsal-"))
    shutil.copy2(src, folder / src.name)
    if Path(f"{src}.wal").exists():
        shutil.copy2(f"{src}.wal", folder / f"{src.name}.wal")
    return folder / src.name


# --- readiness ------------------------------------------------------------------------------------


def sync_readiness(con: Any, close: str, *, require_clean_sync: bool = True) -> dict:
    """Whether the sync has nothing left to write for ``close`` (module docstring rule). Read-only."""
    if not require_clean_sync:
        if dialect_of(con) != "duckdb":
            raise ParameterError("require_clean_sync=False is for DuckDB rehearsals only: on PostgreSQL the year "
                                 "closes only after a clean sync. Run sync_check, apply it, then roll over.")
        return {"passed": True, "detail": "waived (DuckDB rehearsal, require_clean_sync=False)", "run_id": None}
    sync = last_sync(con, close, statuses=("applied", "no changes", "planned", "failed", "refused"))
    if sync is None:
        return {"passed": False, "run_id": None, "detail": f"no sync_check run for {close} in the ledger: run "
                "sync_check for the year being closed and apply it first"}
    if sync.status == "planned":
        ok = sync.changes() == 0
        why = "planned with no change" if ok else f"planned with {sync.changes()} change(s) not applied"
    elif sync.status in ("applied", "no changes"):
        # only the labels that close with ``close`` (a later sync may change a running year legitimately)
        diff = [f"{label} {t}" for label in sync.labels() if years.is_canonical(label)
                and close in (label, years.benchmark_year(label))
                for t, n in (year_counts(sync, label) or {}).items() if t in DATA_TABLES
                and live_counts(con, label)[t] != n]
        ok, why = not diff, f"{sync.status}; the year equals its source" if not diff else f"{sync.status}, but {diff} differ since"
    else:
        ok, why = False, f"the last sync_check run was {sync.status}"
    return {"passed": ok, "run_id": sync.run_id, "detail": f"{why} (run {sync.run_id})"}


def _readiness(con: Any, close: str, as_of: date, require_clean_sync: bool) -> pd.DataFrame:
    end = years.year_end(close)
    rows = [{"check": "year_has_ended", "passed": as_of > end,
             "detail": f"as_of {as_of}; {close} ends {end}, so it closes from {end + timedelta(days=1)}"}]
    sync = sync_readiness(con, close, require_clean_sync=require_clean_sync)
    rows.append({"check": "sync_clean_for_year", "passed": sync["passed"], "detail": sync["detail"]})
    todo = [m.name for m in pending(con)]
    rows.append({"check": "no_pending_migrations", "passed": not todo,
                 "detail": f"pending: {todo}; apply them first (any import or sync run applies them)" if todo
                 else "schema up to date (PostgreSQL: archive triggers installed)"})
    return pd.DataFrame(rows, columns=["check", "passed", "detail"])


# --- planning -------------------------------------------------------------------------------------


@dataclass
class Rollover:
    """What closing ``close`` and opening ``open`` would change, whether it may, and its fingerprint."""

    close: str
    open: str | None  # None: a calendar year closes on 1 January and opens nothing
    labels: list[str]
    as_of: date
    readiness: pd.DataFrame
    counts: dict
    fingerprint: str
    statistics: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.readiness["passed"].all())

    @property
    def is_empty(self) -> bool:
        """True when applying would change nothing (the second run of a rollover)."""
        return not any(self.counts["mark"].values()) and not any(self.counts["academic_years"].values())

    def summary_frame(self) -> pd.DataFrame:
        rows = [{"change": f"mark is_archived: {t}", "rows": n} for t, n in self.counts["mark"].items()]
        rows += [{"change": f"academic_years: {k}", "rows": n} for k, n in self.counts["academic_years"].items()]
        rows += [{"change": f"statistics {t}: {op}", "rows": n} for t, ops in self.statistics.items()
                 for op, n in ops.items()]
        return pd.DataFrame(rows, columns=["change", "rows"])


def _labels(con: Any, close: str) -> list[str]:
    """The labels a rollover archives: a calendar year alone; a UK year ``Y/Y+1`` with ``Y/Y`` when that has
    rows (normally closed already on 1 January; archived here if that close was missed). ``Y/Y`` ended on
    31 December, before ``Y/Y+1`` did: the calendar year running on 1 August (``Y+1/Y+1``) is never included."""
    if years.is_calendar_label(close):
        return [close]
    calendar = f"{close[:4]}/{close[:4]}"  # docs/DOMAIN.md, “Academic years”: Y/Y is counted in Y/Y+1
    used = any(scalar(con, f"SELECT count(*) FROM {t} WHERE academic_year = ?", [calendar]) for t in STATE_TABLES)
    return [close, calendar] if used else [close]


def _year_changes(con: Any, labels: list[str], opening: str | None) -> dict[str, int]:
    rows = {y: (a, c, s) for y, a, c, s in run(con, "SELECT academic_year, is_archived, is_current, start_date "
                                                       "FROM academic_years")}
    archive = sum(1 for y in labels if y not in rows or not rows[y][0] or rows[y][1])
    if opening is None:  # 1 January: the UK current year and every other row stay as they are
        return {"archive": archive, "open_insert": 0, "open_update": 0, "uncurrent": 0}
    nxt = rows.get(opening)
    if nxt is not None and nxt[0]:
        raise GuardRefused(f"{opening} is archived, so it cannot become the current year: nothing was written. "
                           "Undo the run that archived it, or close a later year.")
    others = sum(1 for y, (_, cur, _) in rows.items() if cur and y not in labels and y != opening)
    return {"archive": archive, "open_insert": int(nxt is None),
            "open_update": int(nxt is not None and (not nxt[1] or nxt[2] is None)), "uncurrent": others}


def _mark_counts(con: Any, labels: list[str]) -> dict[str, int]:
    return {t: int(scalar(con, f"SELECT count(*) FROM {t} WHERE academic_year IN {in_list(labels)} "
                               "AND NOT coalesce(is_archived, false)", labels)) for t in DATA_TABLES}


def _core(con: Any, close: str, as_of: date, require_clean_sync: bool) -> Rollover:
    opening, labels = _opening(close), _labels(con, close)
    counts = {"mark": _mark_counts(con, labels), "academic_years": _year_changes(con, labels, opening)}
    whole = checksum_expr([row_text_expr(con, "academic_years", "t")])
    state = {**state_digest(con, [*labels, *([opening] if opening else [])]),
             **{f"slice.{k}": v for k, v in frozen_checksums(con, labels).items()},
             "academic_years.all": scalar(con, f"SELECT {whole} FROM academic_years t")}
    readiness = _readiness(con, close, as_of, require_clean_sync)
    fingerprint = sha({"rollover": [close, opening, labels], "counts": counts, "state": state,
                       "ready": readiness.to_dict("records")})
    return Rollover(close, opening, labels, as_of, readiness, counts, fingerprint)


def plan_rollover(con: Any, as_of: date, close_year: str = "", *, require_clean_sync: bool = True) -> Rollover:
    """Plan closing ``close_year`` (default: the year before ``as_of``'s) and opening the next. Read-only:
    the statistics recomputation is dry-run in a transaction that is rolled back."""
    close = close_year_for(as_of, close_year)
    plan = _core(con, close, as_of, require_clean_sync)
    if close not in guard.archived_years(con):  # archived statistics are frozen: nothing to recompute
        with rolled_back(con):
            if dialect_of(con) == "postgres":
                run(con, "SET TRANSACTION READ WRITE")
            plan.statistics = stats.recompute_statistics(con, _statistics_years(close))["changes"]
    return plan


# --- applying -------------------------------------------------------------------------------------


def _open_next(con: Any, run_id: str, opening: str, labels: list[str]) -> None:
    """N+1 present, dated and current; every other row not current (pre-images backed up)."""
    others = f"t.is_current AND t.academic_year NOT IN {in_list([*labels, opening])}"
    guard.backup_rows(con, run_id, "academic_years", others, [*labels, opening], "update")
    run(con, f"UPDATE academic_years SET is_current = false WHERE is_current AND academic_year NOT IN "
             f"{in_list([*labels, opening])}", [*labels, opening])
    start, end = years.year_bounds(opening)
    if scalar(con, "SELECT count(*) FROM academic_years WHERE academic_year = ?", [opening]):
        changed = "t.academic_year = ? AND (NOT coalesce(t.is_current, false) OR t.start_date IS NULL)"
        if guard.backup_rows(con, run_id, "academic_years", changed, [opening], "update"):
            run(con, "UPDATE academic_years SET is_current = true, start_date = coalesce(start_date, ?), "
                     "end_date = coalesce(end_date, ?) WHERE academic_year = ?", [start, end, opening])
        return
    run(con, "INSERT INTO academic_years (academic_year, start_date, end_date, is_current, is_archived) "
             "VALUES (?, ?, ?, true, false)", [opening, start, end])
    guard.backup_rows(con, run_id, "academic_years", "t.academic_year = ?", [opening], "insert")


def _write(con: Any, plan: Rollover, run_id: str, info: dict) -> dict:
    """The rollover's writes inside the open transaction; returns the ledger counts."""
    current_archived = [r[0] for r in run(con, "SELECT academic_year FROM academic_years WHERE is_current "
                                               "AND is_archived")]
    opened = [plan.open] if plan.open else []
    stats_years = sorted({*plan.labels, *_statistics_years(plan.close)})  # pre-images of every slice recomputed
    guard.open_run(con, run_id, info, [*plan.labels, *opened], sorted({*plan.labels, *current_archived}))
    guard.snapshot_stats(con, run_id, stats_years)
    changes = ({} if plan.close in guard.archived_years(con)
               else stats.recompute_statistics(con, _statistics_years(plan.close))["changes"])
    guard.crash_point("merge")
    marked = guard.mark_archived(con, run_id, plan.labels, {})
    if plan.open:
        _open_next(con, run_id, plan.open, plan.labels)
    wrong = {t: (n, marked.get(t)) for t, n in plan.counts["mark"].items() if marked.get(t) != n}
    if wrong:
        raise ValidationFailed(["archive_markers"], f"Marked rows differ from the plan {wrong} (planned, marked): "
                               "everything was rolled back. Re-plan and investigate.")
    return {"plan": {}, "rollover": {"close": plan.close, "open": plan.open}, "marked": marked,
            "academic_years": plan.counts["academic_years"], "statistics": changes,
            "statistics_years": stats_years, "archive_years": plan.labels,
            "year_counts": {label: live_counts(con, label) for label in plan.labels},
            "frozen_checksums": frozen_checksums(con, plan.labels), "as_of": plan.as_of.isoformat()}


def apply_rollover(con: Any, as_of: date, close_year: str = "", *, approve: str, run_id: str, actor: str,
                   require_clean_sync: bool = True, target_kind: str | None = None,
                   parameters: dict | None = None) -> dict:
    """Apply the rollover under the guard's protocol (module docstring). Writes, in one transaction, or
    nothing; returns the ledger counts. Refuses when not ready, when the plan is empty, or when the
    re-planned fingerprint differs from ``approve``."""
    def replan() -> Rollover:
        return _core(con, close_year_for(as_of, close_year), as_of, require_clean_sync)

    with guard.guarded_write(con, approve=approve, target_kind=target_kind, replan=replan) as plan:
        close = plan.close
        if not plan.ready:
            failed = plan.readiness[~plan.readiness["passed"]]
            raise GuardRefused(f"Refusing to close {close}: " + "; ".join(f"{r.check}: {r.detail}"
                               for r in failed.itertuples()) + ". Nothing was written.")
        if plan.is_empty:
            opened = f" and {plan.open} open" if plan.open else ""
            raise GuardRefused(f"{close} is already closed{opened}: nothing to do, nothing written.")
        info = {"runbook": RUNBOOK, "actor": actor, "parameters": parameters, "target_kind": target_kind
                or dialect_of(con), "fingerprint": plan.fingerprint}
        counts = _write(con, plan, run_id, info)
        guard.close_run(con, run_id, counts)
        guard.crash_point("before_commit")
    return counts


# --- after the commit -----------------------------------------------------------------------------


def written_record(applied: dict, run_id: str) -> dict:
    """What a committed rollover wrote, for the run's manifest (``written``): the run id to undo it by,
    the years closed and opened, rows marked archived per table, ``academic_years`` changes and the
    statistics rows recomputed. Pure."""
    statistics = {t: ops for t, ops in (applied.get("statistics") or {}).items() if any((ops or {}).values())}
    return {"run_id": run_id, "rollover": applied["rollover"], "marked": applied["marked"],
            "academic_years": applied["academic_years"], "statistics": statistics,
            "undo": f"vespa-ops undo {run_id} --target <the same target>"}


def rollover_words(close: str, open_: str | None, *, done: bool = True) -> str:
    """What a rollover does, in words: "2024/2025 closed (archived), 2025/2026 open and current" (``done``)
    or "close 2024/2025, open 2025/2026"; on 1 January a calendar year closes alone and "nothing opens"
    (docs/YEARLY_PROCEDURE.md). Pure."""
    alone = "nothing opens (a calendar year closes alone on 1 January)"
    if done:
        return f"{close} closed (archived), " + (f"{open_} open and current" if open_ else alone)
    return f"close {close}, " + (f"open {open_}" if open_ else alone)


def committed_message(applied: dict, run_id: str) -> str:
    """The sentence a run prints as soon as its rollover committed: it is applied, whatever a later check
    says, so nobody undoes or repeats a good rollover by mistake. Pure."""
    r = applied["rollover"]
    return (f"APPLIED: the rollover committed as run {run_id}: {rollover_words(r['close'], r['open'])}; "
            f"{sum(applied['marked'].values()):,} rows marked archived. The checks below verify it: if one "
            "fails, the rollover stays applied; do not repeat it, and undo it only on purpose "
            f"(vespa-ops undo {run_id}).")
