"""The one authoritative sync (docs/ARCHITECTURE.md, “Runbooks”, F17): plan the current year, prove it, apply.

``plan_sync(source, con, as_of)`` is read-only: it reads the source (:mod:`vespa_lib.sync.source`),
builds the current year's rows with the import's decoding and rule chains
(:func:`vespa_lib.rules.rows.build_rows` with ``year_fallback=None``: a blank date is set aside as
``no_date``, never given a year, F1), and plans them with :func:`vespa_lib.write.plan.plan_changes` keyed as
production is keyed. Its scope is each school's own running year on ``as_of`` (the library never
reads the clock; docs/DOMAIN.md, “Academic years”): the UK year ``N`` of ``as_of`` for UK-rule schools, the calendar year
of ``as_of`` (``Y/Y``) for calendar-year schools (on 15/03/2026: ``2025/2026`` and ``2026/2026``),
and any non-canonical spelling of those two labels stored in the database (F11: relabelled by
delete + insert); a calendar-year record dated in an earlier calendar year is set aside as
``stale_date`` (that year is closed on 1 January, docs/YEARLY_PROCEDURE.md); deletions are only
of rows of those labels, only within ``establishment_scope``, and never of a student whose record
the source still has but cannot sync (set aside: kept, but relabelled canonically, so no misspelt
label of the year survives a sync; ``f11_labels_canonical`` proves it). The proofs and the drift report
are in :mod:`vespa_lib.sync.checks`.

``apply_sync`` applies through :func:`vespa_lib.write.guard.apply_plan` (one transaction, lock, backup,
ledger) when every proof passed and the approval holds: a fingerprint, ``auto`` (DuckDB only) or
``policy`` (unattended: :func:`policy_decision`). Every run asked to apply leaves a ledger row
(``refused``, ``failed``, the guard's ``applied``, or ``no changes`` when the approved plan changes
nothing: a night the sync ran and found the database equal to its source); ``sync_history`` lists
them. A plan-only run (no approval) writes nothing to the target, not even a ledger row: it may run on
a read-only connection, and its record is its evidence (the plan and its fingerprint). Ledgers written
before that hold ``planned`` rows, which the readers still understand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import pyarrow as pa

from vespa_lib.errors import GuardRefused, ParameterError, VespaError
from vespa_lib.rules import rows as rowsmod
from vespa_lib.rules import years
from vespa_lib.sync import checks as sync_checks
from vespa_lib.sync.source import SyncSource, open_source
from vespa_lib.write import plan as planmod
from vespa_lib.write.guard import apply_plan, write_transaction
from vespa_lib.write.schema import WORKBOOK_SCHEMA, dialect_of
from vespa_lib.write.sql import in_list, run

__all__ = ["NO_CHANGES", "RUNBOOK", "SyncPlan", "SyncResult", "apply_sync", "plan_for_rows", "plan_sync",
           "policy_decision", "record_run", "run_years", "sync_history"]

RUNBOOK = "sync_check"
NO_CHANGES = "no changes"  # the ledger status of an approved run whose plan changes nothing
TABLES = ("students", "vespa_scores", "question_responses")
POLICY_KEYS = {"max_deletes": int, "max_change_ratio": float, "max_count_change": float, "ratio_floor": int,
               "max_school_loss": float, "require_current_year_only": bool, "require_no_refused": bool}
SCHOOL_LOSS_FROM = 3  # max_school_loss judges a school losing at least this many students in one run


@dataclass
class SyncPlan:
    """The sync's plan for one year: desired rows, the guard's Plan, proofs, drift, set-asides."""

    year: str
    as_of: date
    years: list[str]
    plan: planmod.Plan
    desired: planmod.Desired
    rows: rowsmod.ImportRows
    checks: list[dict]
    drift: sync_checks.Drift
    unsyncable: pd.DataFrame
    source: dict
    archived: list[str]
    establishment_scope: list[str] | None = None

    @property
    def fingerprint(self) -> str:
        return self.plan.fingerprint

    @property
    def passed(self) -> bool:
        """True when every proof passed and the plan is not blocked by pending migrations."""
        return self.plan.blocked is None and all(c["passed"] for c in self.checks)

    def totals(self) -> dict[str, dict[str, int]]:
        """{table: {insert, update, unchanged, delete, refused}} summed over years."""
        out = {t: dict.fromkeys(planmod.OPS, 0) for t in TABLES}
        for table, by_year in self.plan.counts().items():
            for cell in by_year.values():
                for op in planmod.OPS:
                    out[table][op] += cell.get(op, 0)
        return out


@dataclass
class SyncResult:
    """What ``apply_sync`` did: ``applied``, ``no changes`` (approved, nothing to write), ``refused``
    (nothing written) or ``planned`` (no approval: nothing written, no ledger row)."""

    run_id: str
    status: str
    reasons: list[str] = field(default_factory=list)
    applied: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)


def run_years(year: str, con: Any, calendar: str | None = None) -> list[str]:
    """Labels the sync owns: UK ``year``, the calendar-year schools' running year ``calendar`` (default
    the calendar year counted in ``year``), and stored misspellings of either (F11). Read-only."""
    own = {year, calendar or f"{year[:4]}/{year[:4]}"}
    stored = set()
    for table in TABLES:
        stored |= {r[0] for r in run(con, f"SELECT DISTINCT academic_year FROM {table}")}
    variants = set()
    for label in stored:
        try:
            if years.canonical(label) in own:
                variants.add(label)
        except years.YearError:
            continue
    return sorted(own | variants)


class _Reader:
    """``.sql(query)`` over a DuckDB or psycopg connection, as build_rows' ``reference`` wants."""

    def __init__(self, con: Any):
        self.con = con

    def sql(self, query: str) -> pa.Table:
        return sync_checks.fetch_arrow(self.con, query)


def _establishment_ids(con: Any, scope: list[str] | None) -> list[str] | None:
    if scope is None:
        return None
    rows = run(con, f"SELECT knack_id, CAST(id AS TEXT) FROM establishments WHERE knack_id IN "
                            f"{in_list(scope)}", list(scope))
    found = dict(rows)
    unknown = [k for k in scope if k not in found]
    if unknown:
        raise ParameterError(f"establishment_scope names {unknown}, which are not establishments' knack ids in "
                             "the target: nothing was planned. Check the ids (establishments.knack_id).")
    return [found[k] for k in scope]


def plan_sync(source: str | SyncSource, con: Any, as_of: date, *, establishment_scope: list[str] | None = None,
              convert_q29_percentage: bool = False, **source_options: Any) -> SyncPlan:
    """Plan the sync of the current year of ``as_of`` from ``source`` into ``con``. Read-only."""
    if not isinstance(as_of, date):
        raise ParameterError(f"as_of must be a date, got {as_of!r}: the library never reads the clock (F1).")
    scope = list(establishment_scope) if establishment_scope else None
    year, calendar = years.running_years(as_of)  # each school's own running year (docs/DOMAIN.md, “Academic years”)
    src = source if isinstance(source, SyncSource) else open_source(source, year, **source_options)
    archived, cohort = cohort_years(year, planmod.archived_years(con), calendar)
    rows = rowsmod.build_rows(src, year, _Reader(con), convert_q29_percentage=convert_q29_percentage,
                              establishment_scope=scope, year_fallback=None, calendar_year=calendar,
                              archived_years=archived, cohort_years=cohort)
    return plan_for_rows(rows, src, con, as_of, establishment_scope=scope)


def cohort_years(year: str, archived: list[str], calendar: str | None = None) -> tuple[list[str], list[str]]:
    """(archived, open) cohort years a late cycle of the sync of ``year`` can belong to (docs/DOMAIN.md,
    "Cohort rule across 1 August"): the year before the UK running year ``year`` and the year before the
    calendar-year schools' running year ``calendar`` (default: the calendar year counted in ``year``). A
    calendar year ``Y/Y`` counts as archived when it is, or when the UK year ``Y/Y+1`` it is counted in
    is. A late cycle of an archived year is set aside; of an open one, written into that year."""
    closed = set(archived) | {f"{y[:4]}/{y[:4]}" for y in archived if not years.is_calendar_label(y)}
    cal_first = int((calendar or year)[:4])
    before = [years.previous_year(year), f"{cal_first - 1}/{cal_first - 1}"]
    return sorted(closed), [y for y in before if y not in closed]


def _open_cohort_rows(con: Any, tables: dict[str, pa.Table], extra: list[str]) -> dict[str, pa.Table]:
    """Every live row of the open cohort years ``extra`` that the built rows do not replace, planned
    unchanged: the sync writes a late cycle into its open year and deletes nothing there. Read-only."""
    out = {}
    for table, keys in sync_checks.KEYS.items():
        names = ["email", "academic_year", *keys[2:]]
        want = tables[table].select(names).to_pylist()
        have = {tuple(str(r[k]) for k in names) for r in want if r["academic_year"] in extra}
        live = sync_checks.db_slice(con, table, extra)
        live = live.drop_columns([c for c in ("est", "establishment_id") if c in live.column_names
                                  and not (table == "students" and c == "establishment_id")])
        mask = [tuple(str(v) for v in key) not in have for key in zip(*(live.column(k).to_pylist() for k in names),
                                                                        strict=True)] if live.num_rows else []
        out[table] = sync_checks.concat(tables[table], live.filter(pa.array(mask, pa.bool_())))
    return out


def plan_for_rows(rows: rowsmod.ImportRows, src: SyncSource, con: Any, as_of: date, *,
                  establishment_scope: list[str] | None = None) -> SyncPlan:
    """Plan, prove and reconcile already-built rows (``plan_sync``'s second half). Read-only.

    Separate so a test can hand in rows a broken builder made and see the proofs catch them."""
    year, calendar = years.running_years(as_of)
    labels = run_years(year, con, calendar)
    est_ids = _establishment_ids(con, establishment_scope)
    tables = {"students": rows.students, "vespa_scores": rows.vespa_scores,
              "question_responses": rows.question_responses}
    kept = sync_checks.kept_as_is(src, rows, con, labels, est_ids)  # set aside, still in Knack: never deleted
    anchored = kept.pop("_anchored")
    relabels = kept.pop("_relabels")
    tables = {t: sync_checks.concat(tables[t], kept[t]) for t in TABLES}
    own = labels
    open_cohorts = cohort_years(year, planmod.archived_years(con), calendar)[1]  # a late cycle of an open year is written there
    extra = sorted(set(rows.students.column("academic_year").to_pylist()) & set(open_cohorts) - set(labels))
    if extra:
        tables, labels = _open_cohort_rows(con, tables, extra), sorted(set(labels) | set(extra))
    desired = planmod.Desired(tables, years=labels, establishment_ids=est_ids, allow_delete=True)
    plan = planmod.plan_changes(con, desired, keep=True)  # reused by apply_sync when still valid
    archived = planmod.archived_years(con)
    drift = sync_checks.drift(con, desired, labels, anchored)
    drift.late_cycles = sync_checks.late_cycles(rows, src)
    checks = sync_checks.proofs(con, src, rows, desired, plan, drift, labels=labels, archived=archived,
                                est_ids=est_ids, anchored=anchored, own_labels=own, running=(year, calendar))
    checks.append(sync_checks.label_proof(relabels))
    unsyncable = sync_checks.unsyncable(rows)
    return SyncPlan(year, as_of, labels, plan, desired, rows, checks, drift, unsyncable, src.summary(), archived,
                    establishment_scope)


# --- ledger --------------------------------------------------------------------------------------


def _json_type(con: Any) -> str:
    return "JSONB" if dialect_of(con) == "postgres" else "JSON"


def _counts_doc(sp: SyncPlan, extra: dict | None = None) -> dict:
    return {"plan": sp.plan.counts(), "year": sp.year, "as_of": sp.as_of.isoformat(),
            "checks": {c["name"]: c["passed"] for c in sp.checks}, "set_aside": int(len(sp.unsyncable)),
            **(extra or {})}


def record_run(con: Any, sp: SyncPlan, *, run_id: str, status: str, actor: str, target_kind: str | None = None,
               parameters: dict | None = None, error: str | None = None, extra: dict | None = None) -> None:
    """Write (commit) the ledger row of a sync_check run that applied nothing. Writes vespa_ops only."""
    params = json.dumps(_clean(parameters), default=str)
    with write_transaction(con):
        run(con, f"INSERT INTO {WORKBOOK_SCHEMA}.ledger (run_id, runbook, actor, status, target, parameters, "
                         f"fingerprint, counts, years, error, finished_at) VALUES (?, ?, ?, ?, ?, "
                         f"CAST(? AS {_json_type(con)}), ?, CAST(? AS {_json_type(con)}), "
                         f"CAST(? AS {_json_type(con)}), ?, current_timestamp)",
                    [run_id, RUNBOOK, actor, status, target_kind or dialect_of(con), params, sp.fingerprint,
                     json.dumps(_counts_doc(sp, extra), default=str), json.dumps(sp.years), error])


def _clean(parameters: dict | None) -> dict:
    from vespa_lib.write.guard import _clean as guard_clean  # one definition of "parameters without secrets"

    return guard_clean(parameters)


def sync_history(con: Any, *, limit: int | None = None) -> pd.DataFrame:
    """Every sync_check run in the ledger, newest first: run id, started, status, year and counts. Read-only."""
    sql = (f"SELECT run_id, started_at, finished_at, status, fingerprint, CAST(counts AS TEXT), error, "
           "CAST(years AS TEXT) "
           f"FROM {WORKBOOK_SCHEMA}.ledger WHERE runbook = ? ORDER BY started_at DESC, run_id DESC")
    rows = run(con, sql + (f" LIMIT {int(limit)}" if limit else ""), [RUNBOOK])
    out = []
    for run_id, started, finished, status, fp, counts, error, labels in rows:
        doc = json.loads(counts or "{}")
        uk = [y for y in json.loads(labels or "[]") if years.is_canonical(y) and not years.is_calendar_label(y)]
        doc.setdefault("year", uk[0] if uk else None)
        totals = _totals(doc.get("plan", {}))
        out.append({"run_id": run_id, "started_at": started, "finished_at": finished, "status": status,
                    "academic_year": doc.get("year"), "fingerprint": (fp or "")[:12], **totals, "error": error})
    cols = ["run_id", "started_at", "finished_at", "status", "academic_year", "fingerprint",
            *(f"{op}s" for op in ("insert", "update", "delete", "refused")), "desired_rows", "error"]
    return pd.DataFrame(out, columns=cols)


def _totals(plan_counts: dict) -> dict[str, int]:
    cells = [c for by_year in plan_counts.values() for c in by_year.values()]
    out = {f"{op}s": sum(c.get(op, 0) for c in cells) for op in ("insert", "update", "delete", "refused")}
    out["desired_rows"] = sum(c.get("insert", 0) + c.get("update", 0) + c.get("unchanged", 0) for c in cells)
    return out


def previous_counts(con: Any, year: str | None = None) -> dict | None:
    """Totals of the last sync_check run that applied, found no changes or (older ledgers) planned
    cleanly, for the policy; with ``year``, the last such run of that running year. Read-only."""
    hist = sync_history(con)
    ok = hist[hist["status"].isin(["applied", NO_CHANGES, "planned"])]
    if year is not None:
        ok = ok[ok["academic_year"] == year]
    return None if ok.empty else ok.iloc[0].to_dict()


def _comparison(year: str, prev: dict | None) -> str:
    """What the policy's count bounds compare with (a new running year starts from nothing)."""
    if prev is None:
        return (f"first sync run of {year}: no previous sync run of this year to compare with, so "
                "max_change_ratio and max_count_change do not apply; max_deletes and the other bounds do")
    return f"compared with the previous sync run of {year}, {prev['run_id']}"


# --- policy and apply ----------------------------------------------------------------------------


def _policy(policy: dict | None) -> dict:
    policy = dict(policy or {})
    unknown = set(policy) - set(POLICY_KEYS)
    if unknown:
        raise ParameterError(f"policy has unknown keys {sorted(unknown)}; known: {sorted(POLICY_KEYS)}.")
    out = {"max_deletes": 0, "max_change_ratio": 0.2, "max_count_change": 0.2, "ratio_floor": 0,
           "max_school_loss": 0.2, "require_current_year_only": True, "require_no_refused": True} | policy
    for key, kind in POLICY_KEYS.items():
        ok = isinstance(out[key], kind) or (kind is float and isinstance(out[key], int))
        if not ok or (kind is not bool and isinstance(out[key], bool)):
            raise ParameterError(f"policy.{key} must be {kind.__name__}, got {out[key]!r}.")
    return out


def school_losses(con: Any, sp: SyncPlan) -> list[dict]:
    """Per establishment (Knack id) whose students the plan deletes: {establishment, lost, students}
    with ``students`` its students of the run's years before the run. Students kept because they own
    another year's rows are not lost. Read-only."""
    d = sp.drift.rows
    if d.empty:
        return []
    kept = set(zip(sp.desired.tables["students"].column("email").to_pylist(),
                   sp.desired.tables["students"].column("academic_year").to_pylist(), strict=True))
    gone = d[(d["table"] == "students") & (d["kind"] == "extra")]
    gone = gone[[(e, y) not in kept for e, y in zip(gone["email"], gone["academic_year"], strict=True)]]
    if gone.empty:
        return []
    knack = {str(i): str(k) for i, k in run(con, "SELECT CAST(id AS TEXT), knack_id FROM establishments")}
    staying: dict[str, int] = {}
    for est in sp.desired.tables["students"].column("establishment_id").to_pylist():
        key = knack.get(str(est), "(none)")
        staying[key] = staying.get(key, 0) + 1
    lost = gone["establishment"].fillna("(none)").astype(str).value_counts()
    return [{"establishment": k, "lost": int(n), "students": int(n) + staying.get(k, 0)}
            for k, n in sorted(lost.items())]


def policy_decision(con: Any, sp: SyncPlan, policy: dict | None) -> dict:
    """Whether the unattended policy approves ``sp``: {approved, reasons, figures}. Read-only."""
    pol = _policy(policy)
    totals = _totals(sp.plan.counts())
    prev = previous_counts(con, sp.year)  # a new running year is not compared with the last year's runs
    reasons = [f"proof failed: {c['name']}" for c in sp.checks if not c["passed"]]
    touched = sorted({y for by_year in sp.plan.counts().values() for y, c in by_year.items()
                      if c["insert"] or c["update"] or c["delete"]})
    if pol["require_current_year_only"] and set(touched) - set(sp.years):
        reasons.append(f"the plan touches years {sorted(set(touched) - set(sp.years))} besides the current year")
    if pol["require_no_refused"] and totals["refuseds"]:
        reasons.append(f"the plan refuses {totals['refuseds']} row(s)")
    counts = sp.plan.counts()
    removed = sum(c.get("delete", 0) for t in ("students", "vespa_scores") for c in counts.get(t, {}).values())
    if removed > pol["max_deletes"]:  # students and completions; their answers go with them, uncounted
        reasons.append(f"{removed} deletions (students and completions) exceed max_deletes={pol['max_deletes']}")
    losses = school_losses(con, sp)
    for loss in losses:
        if loss["lost"] >= SCHOOL_LOSS_FROM and loss["lost"] > pol["max_school_loss"] * loss["students"]:
            reasons.append(f"establishment {loss['establishment']} would lose {loss['lost']} of its {loss['students']} "
                           f"students ({loss['lost'] / loss['students']:.0%}), above max_school_loss="
                           f"{pol['max_school_loss']:.0%}")
    changes = totals["inserts"] + totals["updates"] + totals["deletes"]
    ratio = changes / max(1, totals["desired_rows"])
    # ratio_floor: a change of at most that many rows is not judged by the ratios (2 changes in a year
    # of 2 rows are 100 %); max_deletes and the proofs still apply to it.
    if prev is not None and ratio > pol["max_change_ratio"] and changes > pol["ratio_floor"]:
        reasons.append(f"{changes} changes are {ratio:.1%} of {totals['desired_rows']} rows, above "
                       f"max_change_ratio={pol['max_change_ratio']:.0%}")
    drift = (abs(totals["desired_rows"] - prev["desired_rows"]) / max(1, prev["desired_rows"])) if prev else 0.0
    moved = abs(totals["desired_rows"] - prev["desired_rows"]) if prev else 0
    if prev is not None and drift > pol["max_count_change"] and moved > pol["ratio_floor"]:
        reasons.append(f"{totals['desired_rows']} rows against {prev['desired_rows']} in the previous sync run "
                       f"{prev['run_id']} ({drift:.1%}, above max_count_change={pol['max_count_change']:.0%})")
    if sp.plan.blocked:
        reasons.append(sp.plan.blocked)
    figures = {"policy": pol, **totals, "deleted_students_and_completions": removed, "school_losses": losses,
               "change_ratio": round(ratio, 4), "count_change": round(drift, 4),
               "previous_run": prev["run_id"] if prev else None, "comparison": _comparison(sp.year, prev),
               "touched_years": touched}
    return {"approved": not reasons, "reasons": reasons, "figures": figures}


def apply_sync(con: Any, sp: SyncPlan, *, approve: str, run_id: str, actor: str, policy: dict | None = None,
               target_kind: str | None = None, parameters: dict | None = None, backup_dir: Any = None,
               recompute: Any = None) -> SyncResult:
    """Apply ``sp`` through the guard, or refuse and write nothing; with an approval, a ledger row always.

    No approval (``approve=""``, a plan-only run): nothing is written at all, so it works on a read-only
    connection; the result is ``planned``. An approved plan that changes nothing is not handed to the
    guard: its ledger row says ``no changes`` (module docstring)."""
    common = {"run_id": run_id, "actor": actor, "target_kind": target_kind, "parameters": parameters}
    decision = policy_decision(con, sp, policy) if approve == "policy" else {}
    reasons = ([f"proof failed: {c['name']}" for c in sp.checks if not c["passed"]]
               + ([sp.plan.blocked] if sp.plan.blocked else []))
    if approve == "auto" and (dialect_of(con) != "duckdb" or target_kind not in (None, "duckdb")):
        reasons.append(f"approve='auto' is for DuckDB rehearsals only, not a {target_kind or dialect_of(con)} target "
                       "(docs/ARCHITECTURE.md, “Guarded writes”): pass the reviewed plan's fingerprint")
    if approve == "policy":
        reasons = decision["reasons"]
    elif not approve:
        return SyncResult(run_id, "planned")
    if reasons:
        record_run(con, sp, status="refused", error="; ".join(reasons), extra={"policy": decision}, **common)
        return SyncResult(run_id, "refused", reasons, policy=decision)
    if sp.plan.is_empty:
        return _no_changes(con, sp, approve, decision, common)
    guard_kw = {"runbook": RUNBOOK, "actor": actor, "parameters": parameters, "target_kind": target_kind,
                "backup_dir": backup_dir, "recompute": recompute_statistics if recompute is None else recompute}
    try:
        approval = sp.fingerprint if approve == "policy" else approve
        if dialect_of(con) == "duckdb" and sp.totals()["students"]["delete"]:
            approval = _children_first(con, sp, approval, run_id, guard_kw)
        result = apply_plan(con, sp.desired, approve=approval, run_id=run_id, planned=sp.plan, **guard_kw)
    except VespaError as exc:
        record_run(con, sp, status="failed", error=str(exc), **common)
        raise
    return SyncResult(run_id, "applied", applied=result.applied, policy=decision)


def _no_changes(con: Any, sp: SyncPlan, approve: str, decision: dict, common: dict) -> SyncResult:
    """The ledger row of an approved plan that changes nothing; a fingerprint that is not this plan's is
    refused as the guard refuses it (``failed``, raised). Writes the ledger only."""
    if approve not in ("auto", "policy", sp.fingerprint):
        exc = GuardRefused(f"The plan changed since it was approved (approved {approve[:12]}…, now "
                           f"{sp.fingerprint[:12]}…): nothing was written. Re-plan, review, approve again.")
        record_run(con, sp, status="failed", error=str(exc), **common)
        raise exc
    record_run(con, sp, status=NO_CHANGES, extra={"policy": decision} if decision else None, **common)
    return SyncResult(common["run_id"], NO_CHANGES, policy=decision)


def recompute_statistics(con: Any, dialect: str, labels: list[str], establishment_ids: list[str] | None) -> None:
    """The guard's statistics hook: school and national statistics of the touched years (canonical
    labels, calendar years counted in their benchmark year, docs/DOMAIN.md, “Academic years”). Writes."""
    from vespa_lib.rules import stats  # noqa: PLC0415 - heavy, only needed when applying

    stats.recompute_statistics(con, sorted({years.benchmark_year(years.canonical(y)) for y in labels}), establishment_ids)


def _children_first(con: Any, sp: SyncPlan, approve: str, run_id: str, guard_kw: dict) -> str:
    """DuckDB cannot delete a student and its scores in one transaction (schema.py limits): first a
    guarded run that deletes everything but the students to delete, then the rest. Both are checked
    against the approved full plan, which must still be current. Writes (through the guard)."""
    now = planmod.plan_changes(con, sp.desired)
    if approve not in ("auto", now.fingerprint):
        raise GuardRefused(f"The plan changed since it was approved (approved {approve[:12]}…, now "
                           f"{now.fingerprint[:12]}…): nothing was written. Re-plan, review, approve again.")
    rows = sp.drift.rows
    doomed = rows[(rows["table"] == "students") & (rows["kind"] == "extra")]
    live = sync_checks.db_slice(con, "students", sp.years, sorted(set(doomed["email"])))
    keep = {(e, y) for e, y in zip(sp.desired.tables["students"].column("email").to_pylist(),
                                   sp.desired.tables["students"].column("academic_year").to_pylist(), strict=True)}
    mask = [(e, y) not in keep for e, y in zip(live.column("email").to_pylist(),
                                               live.column("academic_year").to_pylist(), strict=True)]
    tables = dict(sp.desired.tables)
    tables["students"] = sync_checks.concat(tables["students"], live.filter(pa.array(mask, pa.bool_())))
    first = planmod.Desired(tables, years=sp.desired.years, establishment_ids=sp.desired.establishment_ids,
                            allow_delete=True)
    step = planmod.plan_changes(con, first)
    apply_plan(con, first, approve=step.fingerprint, run_id=f"{run_id}.children", **guard_kw)
    return planmod.plan_changes(con, sp.desired).fingerprint
