"""One rehearsed night: Knack changes, cron runs the sync and the validation through ``vespa-ops``,
the data lead handles what cron cannot (a refused sync: review the plan and approve its fingerprint;
the rollovers: plan, review, approve), then the invariants are checked with the rehearsal's own SQL.

``Rehearsal`` holds the state across nights: the world, the ``Ops`` runner, the closed years' digests
and one ``NightRecord`` per night (what changed, each run with its evidence, validation failures,
invariant violations, rows per year per table).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from . import calendar, changes, invariants, setup
from .ops import STEP_STATUSES, Ops, RunResult
from .world import KnackWorld

__all__ = ["INVARIANTS", "NightRecord", "Rehearsal"]

# Checked after every night: the database invariants (``invariants.check_all``), then what the runs
# themselves must show (each run ended as the night calls for; the refused night wrote nothing; the
# validation after the skipped night named exactly the unsynced nights).
INVARIANTS = (*invariants.NAMES, "runs_as_expected", "refusal_night_wrote_nothing", "skipped_night_flagged_exactly")


@dataclass
class NightRecord:
    night: date
    changes: dict[str, int] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_sync: bool = False


class Rehearsal:
    """The night loop over ``nights`` (see the module docstring)."""

    def __init__(self, world: KnackWorld, ops: Ops, admin_dsn: str, data: Path, nights: list[date]):
        self.world, self.ops, self.admin_dsn, self.data, self.nights = world, ops, admin_dsn, Path(data), nights
        self.export = self.data / "knack_export"
        self.closed: dict[str, dict] = {}
        self.records: list[NightRecord] = []
        self.evolved = calendar.START - timedelta(days=1)
        self.joined = False
        self.unsynced: set[date] = set()  # nights whose sync did not end applied (skipped or refused)
        self.synced: dict = {}  # Knack's state the last applied sync read (edits change the world in place)

    # --- the night ------------------------------------------------------------------------------

    def run_night(self, night: date) -> NightRecord:
        rec = NightRecord(night)
        self.records.append(rec)
        rec.changes = self._evolve(night)
        if not self.joined and night >= changes.JOINING["day"]:
            setup.add_establishment(self.admin_dsn, changes.JOINING["name"], changes.JOINING["knack_id"])
            self.joined = True
            rec.notes.append("a school joined: its establishment was added to the dashboard")
        if night == calendar.START:
            self._import(rec)
        self._sync(rec, night)
        self._validate(rec, night)
        if night in (calendar.CALENDAR_CLOSE, calendar.ROLLOVER):
            self._rollover(rec, night)
        self._check(rec, night)
        return rec

    def _evolve(self, night: date) -> dict[str, int]:
        before = len(self.world.log)
        while self.evolved < night:
            self.evolved += timedelta(days=1)
            changes.apply_day(self.world, self.evolved)
        return dict(Counter(kind for _, kind, _ in self.world.log[before:]))

    def _run(self, rec: NightRecord, runbook: str, **params) -> RunResult:
        result = self.ops.run(runbook, **params)
        rec.runs.append(result)
        return result

    def _approve(self, rec: NightRecord, runbook: str, plan: RunResult, **params) -> RunResult | None:
        """The data lead approves the fingerprint the plan's evidence shows (re-planned when a step,
        like pending migrations, shows a new plan); never ``auto``."""
        result, fingerprint = None, plan.fingerprint
        for _ in range(3):
            if not fingerprint:
                return result
            result = self._run(rec, runbook, **params, approve=fingerprint)
            if result.manifest.get("apply_status") not in STEP_STATUSES:
                return result
            fingerprint = result.fingerprint  # a step applied: the next plan shows its own fingerprint
        return result

    def _import(self, rec: NightRecord) -> None:
        params = {"snapshot_dir": str(self.data / "world" / "snapshot"), "backup_dir": str(self.data / "backups")}
        plan = self._run(rec, "import", mode="plan", **params)
        done = self._approve(rec, "import", plan, mode="apply", **params)
        rec.notes.append(f"archive import: {done.status if done else 'no fingerprint to approve'}")
        if plan.status != "passed" or done is None or done.status != "passed":
            rec.violations.setdefault("runs_as_expected", []).append(
                f"archive import: plan {plan.status}, approval {done.status if done else 'not run'}")
        with self._con() as con:
            labels = [r[0] for r in con.execute("SELECT DISTINCT academic_year FROM students "
                                                "WHERE academic_year < '2025'").fetchall()]
            self.closed.update(invariants.closed_digests(con, labels))
        rec.notes.append(f"closed years from tonight: {sorted(self.closed)}")

    def _sync_params(self, night: date) -> dict:
        return {"source": f"csv:{self.export}", "as_of": night.isoformat(), "backup_dir": str(self.data / "backups")}

    def _sync(self, rec: NightRecord, night: date) -> None:
        drop = self._partial_export(night) if night == calendar.REFUSE else set()
        self.world.write_export(self.export, night, drop)
        tonight = self.world.expected(night)
        if night == calendar.SKIP:
            rec.skipped_sync = True
            rec.notes.append("sync skipped on purpose (cron did not run)")
            self.unsynced.add(night)
            return
        before = self._open_counts()
        result = self._run(rec, "sync_check", **self._sync_params(night))
        if night == calendar.REFUSE:
            self.unsynced.add(night)
            written = self._open_counts() != before
            rec.notes.append(f"partial export ({len(drop)} records of one school missing): sync "
                             f"{result.manifest.get('sync_status', result.status)}, "
                             f"{'ROWS WRITTEN' if written else 'nothing written'}")
            if written or result.manifest.get("sync_status") != "refused":
                rec.violations["refusal_night_wrote_nothing"] = [
                    f"expected a refusal writing nothing; got sync_status "
                    f"{result.manifest.get('sync_status')!r}, rows written: {written}"]
            return
        if result.manifest.get("sync_status") == "refused":
            rec.notes.append("policy refused: " + "; ".join(self._reasons(result)))
            plan = self._run(rec, "sync_check", **self._sync_params(night), mode="plan", approve="")
            result = self._approve(rec, "sync_check", plan, **self._sync_params(night), mode="apply") or plan
        if result.status == "passed":
            self.synced = tonight
        else:
            self.unsynced.add(night)
            rec.violations.setdefault("runs_as_expected", []).append(
                f"sync {night}: ended {result.manifest.get('sync_status') or result.status}, not applied: "
                + "; ".join(self._reasons(result)))

    @staticmethod
    def _reasons(result: RunResult) -> list[str]:
        for check in result.manifest.get("checks") or []:
            if not check.get("passed"):
                return [str(check.get("detail", ""))[:200]]
        return [str(result.manifest.get("error"))[:200]]

    def _partial_export(self, night: date) -> set[str]:
        """A third of the largest school's visible records, left out of tonight's export."""
        by_school: dict[str, list[str]] = {}
        for r in self.world.records.values():
            if r.syncs and r.visible(night):
                by_school.setdefault(r.email.rsplit("@", 1)[-1], []).append(r.rid)
        largest = max(by_school.values(), key=len)
        return set(sorted(largest)[: len(largest) // 3 + 1])

    def _validate(self, rec: NightRecord, night: date) -> None:
        """The nightly validation must flag exactly the nights of its window left unsynced (the skipped
        night, the refused one), fail on nothing else, and pass when there is none."""
        window = calendar.window(night, self.nights)
        result = self._run(rec, "year_transition", mode="validate", as_of=night.isoformat(), sync_window_days=window)
        flagged = _flagged_nights(result)
        nights = {night - timedelta(days=i) for i in range(window)}
        expected = sorted(n.isoformat() for n in self.unsynced & nights)
        problems = [] if flagged == expected else [f"validation flagged nights {flagged}, expected {expected}"]
        others = [c for c in result.failed_checks() if c != "sync_ran_every_night"]
        if others:
            problems.append(f"validation failed {others}: " + "; ".join(self._reasons(result)))
        if result.status == "no evidence":
            problems.append("validation left no evidence: " + result.output.strip()[-300:])
        prev = night - timedelta(days=1)
        if prev == calendar.SKIP and prev in self.nights:
            rec.notes.append(f"validation after the skipped night flags {flagged} "
                             f"({'exactly' if flagged == expected else 'NOT exactly'} the unsynced nights {expected})")
            if flagged != expected:
                rec.violations["skipped_night_flagged_exactly"] = [f"flagged {flagged}, expected {expected}"]
        if problems:
            rec.violations.setdefault("runs_as_expected", []).extend(problems)

    def _rollover(self, rec: NightRecord, night: date) -> None:
        params = {"mode": "rollover", "as_of": night.isoformat()}
        plan = self._run(rec, "year_transition", **params)
        done = self._approve(rec, "year_transition", plan, **params)
        rec.notes.append(f"rollover {night}: plan {plan.status} (fingerprint {'shown' if plan.fingerprint else 'none'}), "
                         f"approval {done.status if done else 'not run'}")
        if not (plan.fingerprint and plan.status == "passed" and done is not None and done.status == "passed"):
            rec.violations.setdefault("runs_as_expected", []).append(
                f"rollover {night}: plan {plan.status} {plan.failed_checks()}, approval "
                f"{done.status if done else 'not run'} {done.failed_checks() if done else ''}")
        closing = "2025/2025" if night == calendar.CALENDAR_CLOSE else "2025/2026"
        if done is not None and done.status == "passed":
            labels = [closing] + (["2025/2025"] if closing == "2025/2026" and "2025/2025" not in self.closed else [])
            with self._con() as con:
                self.closed.update(invariants.closed_digests(con, labels))
            rec.notes.append(f"closed from tonight: {labels}")

    # --- the invariants -------------------------------------------------------------------------

    def _con(self):
        import psycopg  # noqa: PLC0415

        return psycopg.connect(self.admin_dsn, autocommit=True)

    def open_labels(self, night: date) -> list[str]:
        """Canonical labels of the running years: the UK year of ``night`` and the calendar year."""
        uk = night.year if night.month >= 8 else night.year - 1
        wanted = {f"{uk}/{uk + 1}", f"{night.year}/{night.year}", f"{uk}/{uk}"}
        return sorted(wanted - set(self.closed))

    def _open_counts(self) -> dict:
        with self._con() as con:
            return invariants.row_counts(con)

    def _check(self, rec: NightRecord, night: date) -> None:
        with self._con() as con:
            found = invariants.check_all(con, closed=self.closed, expected=self.synced,
                                         open_labels=self.open_labels(night))
            rec.counts = invariants.row_counts(con)
        rec.violations.update({k: v for k, v in found.items() if v})


def _flagged_nights(result: RunResult) -> list[str]:
    """The nights the validation's ``sync_ran_every_night`` names (missing or failed), sorted."""
    for check in result.manifest.get("checks") or []:
        if check.get("name") == "sync_ran_every_night":
            figures = check.get("figures") or {}
            return sorted({str(n) for n in (figures.get("missing_nights") or []) + (figures.get("failed_nights") or [])})
    return []
