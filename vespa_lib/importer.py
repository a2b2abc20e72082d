"""The import runbook's orchestration (docs/ARCHITECTURE.md, “Runbooks”; docs/ARCHITECTURE.md, “Guarded writes”): preflight, rows, rehearsal, plan, apply,
verify, reconcile. ``notebooks/import.ipynb`` calls these one step per cell.

    open_import(target, read_only)        a connection the guard can plan (and apply) on
    preflight(snapshot_dir, target)       the csv_profile blockers and fallbacks (read-only)
    import_rows(...)                      the year's rows and quarantine (vespa_lib.rules.rows; read-only)
    desired_for(rows, con, year, scope)   the guard's Desired: the year's labels, the F16 scope
    rehearse(...)                         a sample planned; on DuckDB applied to a throw-away copy
    find_repairs(con, rows, labels, ests) F8 cross-year duplicates and kept rows of the year (read-only)
    repair_desired(desired, repairs)      the repair run's Desired: deletes exactly the F8 duplicates
    plan_import / apply_import            the guarded write (migrations, then the F8 repair, then data)
    reconcile(con, desired)               source against target key by key (read-only)

Only ``apply_import`` (and ``rehearse`` on its throw-away copy) writes, and only through
``vespa_lib.write.guard``: pending migrations are applied as their own guarded run (run id ``<id>-m``),
then the data plan is applied with statistics recomputed and the quarantine stored in
``vespa_ops.quarantine`` inside the same transaction. Refusals come back as an ``ImportOutcome``
with the reason (nothing written), so the runbook records a failed check instead of crashing.

**Repairs of planted damage** (docs/ARCHITECTURE.md). Before year N is imported and archived:

* F8 cross-year duplicates: rows of ``vespa_scores``/``question_responses`` labelled N (or a
  misspelling of N, F11) hanging off a student whose own ``academic_year`` is another year, *and*
  whose identical copy (same cycle, question, values) exists under that student's own year, are
  deleted by their own guarded run ``<run id>-f8`` (backed up, undoable, counted as
  ``f8_cross_year_duplicates``). It runs first because production keys answers by
  ``(email, academic_year, cycle, question_id)``: while such a row exists, a re-enrolled student's
  imported answers would match it by key and update it instead of being inserted for the student
  of year N. The repair's Desired is every other live row of those labels with ``allow_delete``, so
  the only planned deletes are the duplicates; ``apply_import`` refuses if the plan deletes a
  different number (two live rows sharing one natural key cannot be told apart by the guard).
  Cross-year rows without an identical copy are not deleted: they are counted as
  ``f8_cross_year_unresolved`` and left for a person.
* Rows of N already in the database that the snapshot does not contradict (no row of the same key)
  are kept as they are (``kept_not_in_snapshot``) and put into the data Desired unchanged, so the
  plan (and the ledger row) counts every row year N holds after the apply:
  ``live = insert + update + unchanged``, which ``transition_checks.archived_counts_match_ledger``
  compares. The per-cycle counts right after the merge (inside the transaction) are recorded in the
  run's manifest (``post_apply_counts``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from vespa_lib.errors import GuardRefused, ParameterError, VespaError
from vespa_lib.ops import privacy
from vespa_lib.profile import Profile, profile_snapshot
from vespa_lib.rules import rows as rowsmod
from vespa_lib.rules import stats, years
from vespa_lib.sources import duckwork, targets
from vespa_lib.sources.snapshot import Snapshot, open_snapshot
from vespa_lib.write import guard
from vespa_lib.write import plan as planmod
from vespa_lib.write.classify import live_sql
from vespa_lib.write.schema import WORKBOOK_SCHEMA, dialect_of
from vespa_lib.write.sql import in_list, q, run

__all__ = ["RUNBOOK", "ImportOutcome", "Rehearsal", "Repairs", "actor", "find_repairs", "repair_complete",
           "repair_desired", "repairs_for", "applied_matches_plan", "archive_labels",
           "check_parameters", "reconciled", "verify_frame", "apply_import", "desired_for", "import_rows",
           "open_import", "plan_frame", "plan_import", "preflight", "quarantine_frame", "reconcile",
           "rehearse", "rule_frame", "sample_rows", "samples_frame", "totals", "write_quarantine"]

RUNBOOK = "import"
TABLES = ("students", "vespa_scores", "question_responses")
CHANGING = ("insert", "update", "delete")


@dataclass
class ImportOutcome:
    """What an apply step did: ``applied``, ``migrated`` (data awaits approval), ``nothing`` or ``refused``."""

    status: str
    reason: str = ""
    result: guard.ApplyResult | None = None
    migrations: list[dict] = field(default_factory=list)
    plan: planmod.Plan | None = None  # the data plan current after this step
    repair: guard.ApplyResult | None = None  # the F8 repair run, when one was applied
    post_apply_counts: dict = field(default_factory=dict)  # per label: tables and cycles after the merge


@dataclass
class Rehearsal:
    """A sample's plan (and, on DuckDB, its apply on a throw-away copy and the re-plan after it)."""

    students: int
    counts: pd.DataFrame
    applied: bool
    verified: bool | None
    note: str


def check_parameters(mode: str, approve: str, target: str) -> None:
    """Refuse a bad mode, or ``auto`` approval of a non-DuckDB target, before any work (docs/ARCHITECTURE.md, “Guarded writes”)."""
    if mode not in ("plan", "apply"):
        raise ParameterError(f"mode must be 'plan' or 'apply', got {mode!r}: plan first, then apply with approval.")
    if approve == "auto" and targets.parse_target(target).kind != "duckdb":
        raise ParameterError("approve='auto' is for DuckDB rehearsal targets only (docs/ARCHITECTURE.md, “Guarded writes”): nothing was "
                             "planned or written. Run mode=plan, review the plan and pass its fingerprint.")


def actor() -> str:
    """Who runs this (recorded in the ledger): ``VESPA_ACTOR``, else the login name."""
    return os.environ.get("VESPA_ACTOR") or getpass.getuser()


def open_import(target: str, *, read_only: bool = False) -> targets.Target:
    """Open ``target`` for the import. Planning stages temp tables, so PostgreSQL needs a writable
    session even for a plan (it is always rolled back). Supabase REST cannot be written (docs/ARCHITECTURE.md, “Targets”)."""
    spec = targets.parse_target(target)
    if spec.kind == "supabase":
        raise ParameterError("The import writes over PostgreSQL, never REST (docs/ARCHITECTURE.md, “Targets”): name a "
                             "postgres:ENV_VAR target holding the session-mode connection string.")
    return targets.open_target(spec, read_only=read_only and spec.kind == "duckdb")


def preflight(snapshot_dir: str | Path, target: targets.Target) -> tuple[Snapshot, Profile]:
    """Open the snapshot and profile it against the target (the csv_profile blockers). Read-only."""
    snap = open_snapshot(snapshot_dir)
    return snap, profile_snapshot(snap, db=target)


def import_rows(snap: Snapshot, academic_year: str, target: targets.Target, *, convert_q29_percentage: bool,
                establishment_scope: list[str] | None, late_cycles_only: bool = False) -> rowsmod.ImportRows:
    """The year's rows by the rule chains (``vespa_lib.rules.rows.build_rows``). Read-only. ``late_cycles_only``:
    only the late cycles continuing a cohort of the year (docs/DOMAIN.md, "Cohort rule across 1 August")."""
    return rowsmod.build_rows(snap, academic_year, target, convert_q29_percentage=convert_q29_percentage,
                              establishment_scope=establishment_scope or None, late_cycles_only=late_cycles_only)


def rule_frame(rows: rowsmod.ImportRows) -> pd.DataFrame:
    """Rule-chain outcomes as (chain, outcome, count): which rule decided how many rows."""
    out = []
    for key, n in sorted(rows.rule_counts.items()):
        chain, _, outcome = key.rpartition(".") if "." in key else ("totals", "", key)
        out.append({"chain": chain or "totals", "outcome": outcome, "count": int(n)})
    return pd.DataFrame(out, columns=["chain", "outcome", "count"])


def quarantine_frame(rows: rowsmod.ImportRows) -> pd.DataFrame:
    """The set-aside records with reason, detail, file and line; emails masked (docs/ARCHITECTURE.md, “Evidence and privacy”)."""
    frame = rows.quarantine.to_pandas()
    frame["email"] = frame["email"].map(privacy.mask_email)
    frame["source_file"] = frame["source_file"].map(lambda p: Path(p).name if isinstance(p, str) else p)
    return frame.sort_values(["object", "line_number"], kind="stable").reset_index(drop=True)


def _labels(rows: rowsmod.ImportRows, academic_year: str) -> list[str]:
    """The import's year labels: N and calendar years counted in N (docs/ARCHITECTURE.md year chain)."""
    found = set(rows.students.column("academic_year").to_pylist())
    return sorted({years.canonical(academic_year)} | found)


def _establishment_ids(con: Any, scope: list[str] | None) -> list[str] | None:
    """F16: the establishments' uuids for the scope's knack ids; unknown ids refuse the run."""
    if not scope:
        return None
    found = dict(run(con, "SELECT knack_id, CAST(id AS TEXT) FROM establishments WHERE knack_id IN "
                                  f"{in_list(scope)}", list(scope)))
    unknown = [k for k in scope if k not in found]
    if unknown:
        raise ParameterError(f"establishment_scope names {unknown}, which no establishment in the target has as "
                             "knack_id: nothing was planned. Check the ids (establishments.knack_id).")
    return [found[k] for k in scope]


def desired_for(rows: rowsmod.ImportRows, con: Any, academic_year: str,
                establishment_scope: list[str] | None = None, repairs: Repairs | None = None) -> planmod.Desired:
    """The guard's desired rows: the three tables, the import's labels, the establishment scope; with
    ``repairs``, plus the year's live rows the snapshot does not contradict (kept, planned unchanged)."""
    from vespa_lib.sync.checks import concat  # noqa: PLC0415 - cast to the desired schema, NULL elsewhere

    tables = {"students": rows.students, "vespa_scores": rows.vespa_scores,
              "question_responses": rows.question_responses}
    if repairs is not None:
        tables = {t: concat(v, repairs.kept.get(t)) for t, v in tables.items()}
    return planmod.Desired(tables, years=_labels(rows, academic_year),
                           establishment_ids=_establishment_ids(con, establishment_scope))


def repairs_for(rows: rowsmod.ImportRows, con: Any, academic_year: str,
                establishment_scope: list[str] | None = None) -> Repairs:
    """``find_repairs`` over the import's labels and establishment scope. Read-only."""
    return find_repairs(con, rows, _labels(rows, academic_year), _establishment_ids(con, establishment_scope))


def archive_labels(desired: planmod.Desired, archive: bool) -> list[str]:
    """Labels the run marks archived: every label of the import when ``archive``. A run scoped to some
    establishments archives nothing: marking a year archived touches every school's rows (F16)."""
    return list(desired.years) if archive and desired.establishment_ids is None else []


# --- repairs of planted damage (module docstring) -------------------------------------------------

CHILD_TABLES = ("vespa_scores", "question_responses")
_SAME = {"vespa_scores": ("cycle", "vision", "effort", "systems", "practice", "attitude", "overall"),
         "question_responses": ("cycle", "question_id", "response_value")}


@dataclass
class Repairs:
    """What the import repairs or keeps in year N: per table, the F8 duplicates (natural keys), the
    cross-year rows it leaves (no identical copy), the live rows it keeps, and the live rows of the
    tables with duplicates (the repair's Desired). Arrow tables with the spec's key + compared columns."""

    labels: list[str]
    f8: dict[str, pa.Table]
    unresolved: dict[str, int]
    kept: dict[str, pa.Table]
    survivors: dict[str, pa.Table]
    establishment_ids: list[str] | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        """{measure: {table: rows}} for the plan and the evidence."""
        return {"f8_cross_year_duplicates": {t: int(v.num_rows) for t, v in self.f8.items()},
                "f8_cross_year_unresolved": dict(self.unresolved),
                "kept_not_in_snapshot": {t: int(v.num_rows) for t, v in self.kept.items()}}

    @property
    def f8_rows(self) -> int:
        return sum(int(v.num_rows) for v in self.f8.values())


def _variants(con: Any, labels: list[str]) -> list[str]:
    """``labels`` and stored misspellings of them (F11: ``2024-25`` is 2024/2025). Read-only."""
    stored = {r[0] for t in TABLES for r in run(con, f"SELECT DISTINCT academic_year FROM {t}")}
    wanted = {years.canonical(x) for x in labels}
    out = set(labels)
    for label in stored:
        try:
            if label and years.canonical(label) in wanted:
                out.add(label)
        except years.YearError:
            continue
    return sorted(out)


def _live_rows(con: Any, spec: planmod.TableSpec, labels: list[str], ests: list[str] | None) -> pa.Table:
    """Live rows of ``labels`` with natural keys, compared columns, and ``_f8`` / ``_cross`` flags."""
    from vespa_lib.sync.checks import fetch_arrow  # noqa: PLC0415 - one Arrow reader for both dialects

    cols = [c for c in (*spec.keys, *spec.compared) if c not in ("email", "academic_year")]
    sel = ", ".join(f"CAST(t.{q(c)} AS TEXT) AS {q(c)}" if spec.types[c] == "UUID"
                    else f"t.{q(c)}" for c in cols)
    if not spec.via_student:
        sql = (f"SELECT t.email, t.academic_year, {sel}, false AS _f8, false AS _cross, "
               "CAST(t.establishment_id AS TEXT) AS _est FROM students t WHERE t.academic_year IN ")
    else:
        # docs/DOMAIN.md, “Failure catalogue” F8: the identical copy under the student's own year makes this row a duplicate
        same = " AND ".join(f"c.{q(c)} = t.{q(c)}" for c in _SAME[spec.name])
        sql = (f"SELECT s.email, t.academic_year, {sel}, (t.academic_year <> s.academic_year AND EXISTS "
               f"(SELECT 1 FROM {spec.name} c WHERE c.student_id = t.student_id AND c.academic_year = "
               f"s.academic_year AND {same})) AS _f8, t.academic_year <> s.academic_year AS _cross, "
               f"CAST(s.establishment_id AS TEXT) AS _est FROM {spec.name} t JOIN students s ON s.id = t.student_id "
               "WHERE t.academic_year IN ")
    sql += in_list(labels)
    params = list(labels)
    if ests is not None:
        sql += f" AND CAST({'t' if not spec.via_student else 's'}.establishment_id AS TEXT) IN " + in_list(
            ests or [""])
        params += list(ests or [""])
    table = fetch_arrow(con, sql, params)
    if table.num_rows == 0 and not table.column_names:
        return pa.table({c: pa.array([], pa.string()) for c in ["email", "academic_year", *cols, "_f8", "_cross"]})
    return table.set_column(table.column_names.index("_f8"), "_f8", _as_bool(table.column("_f8"))).set_column(
        table.column_names.index("_cross"), "_cross", _as_bool(table.column("_cross")))


def _as_bool(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """PostgreSQL's COPY gives booleans as ``t``/``f`` text."""
    if pa.types.is_boolean(col.type):
        return col
    return pc.is_in(col, value_set=pa.array(["t", "true", "True"]))


def _typed(live: pa.Table, like: pa.Table, keys: tuple[str, ...], compared: tuple[str, ...]) -> pa.Table:
    """``live`` restricted to the spec's columns, cast to the desired table's types where it has them."""
    out = {}
    for name in (*keys, *compared):
        if name not in live.column_names:
            continue
        col = live.column(name)
        if name in like.column_names and col.type != like.schema.field(name).type:
            col = col.cast(like.schema.field(name).type)
        out[name] = col
    return pa.table(out)


def _missing_from(rows: pa.Table, keys_of: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """The rows of ``rows`` whose natural key is not in ``keys_of``: an anti-join in a capped DuckDB work
    connection (``vespa_lib.sources.duckwork``). Not Arrow's hash join: it refuses a dictionary-encoded key whose
    chunks carry different dictionaries ("Unifying differing dictionaries"), which is what the answers
    are at realistic scale (read in batches, cast chunk by chunk), and it is 4x slower on a million
    answers. The rows keep their order in ``rows``: a parallel join's output order varies from run to
    run, and ``_dedupe`` keeps the first row of a key, so another order would be another plan (and a
    fingerprint the apply could never match). Read-only."""
    con = duckwork.connect()
    try:
        con.register("vespa_rows", rows.append_column("_vespa_row", pa.array(range(rows.num_rows), pa.int64())))
        con.register("vespa_keys", keys_of.select(list(keys)))
        using = ", ".join(q(k) for k in keys)
        return con.sql(f"SELECT * EXCLUDE (_vespa_row) FROM vespa_rows ANTI JOIN vespa_keys USING ({using}) "
                       "ORDER BY _vespa_row").to_arrow_table()
    finally:
        con.close()


def _dedupe(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """One row per natural key (two live rows of one key both match it in the plan)."""
    if table.num_rows == 0:
        return table
    frame = table.to_pandas(types_mapper=pd.ArrowDtype).drop_duplicates(list(keys))
    return pa.Table.from_pandas(frame, preserve_index=False, schema=table.schema)


def find_repairs(con: Any, rows: rowsmod.ImportRows, labels: list[str],
                 establishment_ids: list[str] | None = None) -> Repairs:
    """The F8 duplicates to delete and the live rows to keep in ``labels`` (module docstring). Read-only."""
    scope = _variants(con, labels)
    desired = {"students": rows.students, "vespa_scores": rows.vespa_scores,
               "question_responses": rows.question_responses}
    f8, unresolved, kept, survivors = {}, {}, {}, {}
    for spec in planmod.SPECS:
        live = _live_rows(con, spec, scope, establishment_ids)
        like = desired[spec.name]
        dup = pc.fill_null(live.column("_f8"), False)
        cross = pc.and_(pc.fill_null(live.column("_cross"), False), pc.invert(dup))
        unresolved[spec.name] = int(pc.sum(pc.cast(cross, pa.int64())).as_py() or 0) if live.num_rows else 0
        rest = _typed(live.filter(pc.invert(dup)), like, spec.keys, spec.compared)
        survivors[spec.name] = _dedupe(rest, spec.keys)  # students too: the plan resolves children through them
        if spec.via_student:
            f8[spec.name] = _typed(live.filter(dup), like, spec.keys, ())
        own = rest.filter(pc.is_in(rest.column("academic_year"), value_set=pa.array(labels, pa.string())))
        kept[spec.name] = _dedupe(_missing_from(own, like, spec.keys), spec.keys) if own.num_rows else own
    wanted = [t for t in CHILD_TABLES if f8[t].num_rows]
    return Repairs(list(labels), f8, unresolved, kept,
                   {t: survivors[t] for t in ("students", *wanted)} if wanted else {}, establishment_ids)


def repair_desired(repairs: Repairs) -> planmod.Desired | None:
    """The F8 repair run's Desired: every other live row of the tables with duplicates, deletions
    allowed in the year's labels (and their misspellings), so the duplicates are the only deletes."""
    if not repairs.survivors:
        return None
    scope = sorted({*repairs.labels, *(y for t in repairs.f8.values() for y in t.column("academic_year").to_pylist())})
    return planmod.Desired(dict(repairs.survivors), years=scope, establishment_ids=repairs.establishment_ids,
                           allow_delete=True)


def repair_complete(plan: planmod.Plan, repairs: Repairs) -> tuple[bool, str]:
    """The repair plan deletes exactly the F8 duplicates, touches nothing else and refuses nothing."""
    totals_ = totals(plan.counts())
    want = {t: int(repairs.f8[t].num_rows) if t in repairs.f8 else 0 for t in repairs.survivors}
    got = {t: totals_.get(t, {}).get("delete", 0) for t in want}
    other = sum(c.get(op, 0) for c in totals_.values() for op in ("insert", "update", "refused"))
    ok = got == want and other == 0
    return ok, (f"the repair deletes {got} (F8 duplicates {want}) and changes nothing else" if ok else
                f"the repair plan deletes {got} against {want} F8 duplicates with {other} other change(s): two live "
                "rows share a natural key, so the guard cannot delete only the duplicate. Nothing was written; "
                "delete the rows listed in the evidence by hand through a reviewed run.")


def sample_rows(rows: rowsmod.ImportRows, students: int) -> rowsmod.ImportRows:
    """The first ``students`` students by email, with all their scores and answers (rehearsal)."""
    emails = sorted(set(rows.students.column("email").to_pylist()))[:students]
    keep = pa.array(emails, pa.string())

    def pick(table: pa.Table) -> pa.Table:  # noqa: E306 - a three-line filter
        return table.filter(pc.is_in(table.column("email"), value_set=keep))

    return rowsmod.ImportRows(rows.academic_year, pick(rows.students), pick(rows.vespa_scores),
                              pick(rows.question_responses), rows.quarantine.slice(0, 0), dict(rows.rule_counts))


def plan_import(con: Any, desired: planmod.Desired, archive: list[str],
                repairs: Repairs | None = None) -> planmod.Plan:
    """The plan (docs/ARCHITECTURE.md, “Guarded writes”): the pending migrations while any are pending, then the F8 repair
    (``kind = "repair"``) while duplicates remain, then the data. Read-only."""
    # an archived year the run (re-)archives may be written with approval: a late cycle is added this way
    plan = planmod.plan_changes(con, desired, archive_years=archive, archived_write_years=archive, keep=True)
    fix = repair_desired(repairs) if repairs is not None and not plan.migrations else None
    if fix is not None:
        repair = planmod.plan_changes(con, fix)
        if not repair.is_empty:
            repair.kind = "repair"
            return repair
    return plan


def plan_frame(plan: planmod.Plan) -> pd.DataFrame:
    """Per table × year: insert, update, unchanged, delete, refused (and refusal reasons)."""
    frame = plan.summary_frame()
    frame["refused_reasons"] = [", ".join(f"{k}: {v}" for k, v in plan.refused_reasons.get(t, {}).items())
                                for t in frame["table"]]
    return frame


def samples_frame(plan: planmod.Plan) -> pd.DataFrame:
    """A few planned updates with the before/after of each changed column (emails masked)."""
    out = []
    for table, samples in plan.samples.items():
        for s in samples:
            key = {k: v for k, v in s.items() if k != "changes"}
            for col, change in s["changes"].items():
                out.append({"table": table, "key": ", ".join(f"{k}={v}" for k, v in key.items()),
                            "column": col, "before": change["before"], "after": change["after"]})
    return pd.DataFrame(out, columns=["table", "key", "column", "before", "after"])


def totals(counts: dict) -> dict[str, dict[str, int]]:
    """{table: {op: n}} summed over years, from a plan's counts or the guard's applied counts."""
    out: dict[str, dict[str, int]] = {}
    for table, cells in counts.items():
        if all(isinstance(v, int) for v in cells.values()):  # applied counts: {op: n}
            out[table] = {op: int(cells.get(op, 0)) for op in CHANGING}
            continue
        out[table] = {op: sum(int(c.get(op, 0)) for c in cells.values()) for op in planmod.OPS}
    return out


# --- writes (only through the guard) -------------------------------------------------------------


def write_quarantine(con: Any, quarantine: pa.Table, run_id: str) -> int:
    """Store the run's set-aside records in vespa_ops.quarantine (masked email). Caller's transaction."""
    if quarantine.num_rows == 0:
        return 0
    masked = [privacy.mask_email(e) for e in quarantine.column("email").to_pylist()]
    data = pa.table({"run_id": [run_id] * quarantine.num_rows,
                     "source_file": [Path(p).name if p else None for p in quarantine.column("source_file").to_pylist()],
                     "line_number": quarantine.column("line_number").cast(pa.int64()),
                     "record_id": quarantine.column("record_id"), "object": quarantine.column("object"),
                     "reason": quarantine.column("reason"), "detail": quarantine.column("detail"),
                     "masked_email": masked})
    cols = ", ".join(data.column_names)
    if dialect_of(con) == "duckdb":
        con.register("vespa_quarantine_in", data)
        con.execute(f"INSERT INTO {WORKBOOK_SCHEMA}.quarantine ({cols}) SELECT {cols} FROM vespa_quarantine_in")
        con.unregister("vespa_quarantine_in")
        return data.num_rows
    with con.cursor().copy(f"COPY {WORKBOOK_SCHEMA}.quarantine ({cols}) FROM STDIN") as copy:
        for row in zip(*(data.column(c).to_pylist() for c in data.column_names), strict=True):
            copy.write_row(row)
    return data.num_rows


def _hook(quarantine: pa.Table, run_id: str, post: dict | None = None) -> Callable:
    """Inside the guard's transaction: statistics of the touched benchmark years, then the quarantine,
    then (into ``post``) each label's rows per table and per score cycle right after the merge."""
    from vespa_lib.transition.ledger import live_counts  # noqa: PLC0415 - one definition of "year counts"

    def hook(con: Any, dialect: str, labels: list[str], establishment_ids: list[str] | None) -> None:
        benchmark = sorted({years.benchmark_year(y) if years.is_calendar_label(y) else y for y in labels})
        stats.recompute_statistics(con, benchmark, establishment_ids)
        write_quarantine(con, quarantine, run_id)
        if post is not None:
            post.update({label: live_counts(con, label) for label in labels})
    return hook


def _guarded(call: Callable[[], guard.ApplyResult]) -> tuple[guard.ApplyResult | None, str]:
    try:
        return call(), ""
    except (GuardRefused, VespaError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def apply_import(con: Any, desired: planmod.Desired, rows: rowsmod.ImportRows, *, approve: str, run_id: str,
                 target_kind: str, archive: list[str], parameters: dict | None = None,
                 backup_dir: Path | str | None = None, planned: planmod.Plan | None = None,
                 repairs: Repairs | None = None) -> ImportOutcome:
    """Migrations first (own guarded run), then the F8 repair (own guarded run ``<id>-f8``, when
    ``repairs`` finds duplicates), then the data plan, each approved (docs/ARCHITECTURE.md, “Guarded writes”). Writes.

    ``approve`` is the fingerprint of the plan the operator reviewed, or ``auto`` (DuckDB only). A
    fingerprint that approved pending migrations does not approve the data plan computed after them:
    the outcome is ``migrated`` and names the new plan for review. ``planned``: the plan the caller just
    computed (saves planning outside the guard; under its lock the guard reuses the plan's kept tables
    when they are still valid, else it re-plans: ``plan.reuse_kept``)."""
    common = {"runbook": RUNBOOK, "actor": actor(), "parameters": parameters, "target_kind": target_kind}
    migrations: list[dict] = []
    current = planned if planned is not None and not planned.is_empty else plan_import(con, desired, archive, repairs)
    if current.migrations:
        result, reason = _guarded(lambda: guard.apply_plan(con, desired, approve=approve, run_id=f"{run_id}-m",
                                                           recompute=False, archive_years=archive,
                                                           archived_write_years=archive, **common))  # as planned
        if result is None:
            return ImportOutcome("refused", reason)
        migrations = result.migrations
        if approve != "auto":
            return ImportOutcome("migrated", "migrations applied; review the data plan and approve its fingerprint",
                                 migrations=migrations, plan=plan_import(con, desired, archive, repairs))
        current = plan_import(con, desired, archive, repairs)
    repaired = None
    if current.kind == "repair":
        repaired, early = _apply_repair(con, current, repairs, approve=approve, run_id=run_id, common=common)
        if early is not None:
            early.migrations = migrations
            if early.status == "repaired":
                early.plan = plan_import(con, desired, archive, repairs)
            return early
        current = plan_import(con, desired, archive, repairs)
    if current.is_empty:  # docs/ARCHITECTURE.md, “Quality bars”: a repeated apply changes nothing (and leaves no ledger row)
        if approve not in ("auto", current.fingerprint):
            return ImportOutcome("refused", f"GuardRefused: approval {approve[:12]}… does not name the current plan "
                                 f"{current.fingerprint[:12]}…: nothing was written. Re-plan, review, approve again.")
        return ImportOutcome("nothing", "the target already holds every planned row", migrations=migrations,
                             plan=current, repair=repaired)
    post: dict = {}
    result, reason = _guarded(lambda: guard.apply_plan(
        con, desired, approve=approve, run_id=run_id, planned=current,
        recompute=_hook(rows.quarantine, run_id, post), archive_years=archive, archived_write_years=archive,
        backup_dir=backup_dir, **common))
    if result is None:
        return ImportOutcome("refused", reason, migrations=migrations, repair=repaired)
    return ImportOutcome("applied" if result.applied else "nothing", result=result, migrations=migrations,
                         plan=result.plan, repair=repaired, post_apply_counts=post)


def _apply_repair(con: Any, plan: planmod.Plan, repairs: Repairs, *, approve: str, run_id: str,
                  common: dict) -> tuple[guard.ApplyResult | None, ImportOutcome | None]:
    """The F8 repair as its own guarded run ``<run id>-f8`` (module docstring). Writes. Returns the run
    and, unless the data run follows in the same call (``auto``), the outcome to return."""
    ok, why = repair_complete(plan, repairs)
    if not ok:
        return None, ImportOutcome("refused", f"GuardRefused: {why}")
    result, reason = _guarded(lambda: guard.apply_plan(con, repair_desired(repairs), approve=approve,
                                                       run_id=f"{run_id}-f8", **common))
    if result is None:
        return None, ImportOutcome("refused", reason)
    if approve != "auto":
        return result, ImportOutcome("repaired", f"F8 repair applied ({why}); review the data plan and approve its "
                                     "fingerprint", repair=result)
    return result, None


def applied_matches_plan(outcome: ImportOutcome) -> bool:
    """The guard's written counts equal the approved plan's, per table and operation."""
    if outcome.result is None or not outcome.result.applied:
        return False
    planned = totals(outcome.result.plan.counts())
    written = outcome.result.applied["applied"]
    return all(int(written.get(t, {}).get(op, 0)) == planned[t][op] for t in planned for op in CHANGING)


# --- rehearsal -----------------------------------------------------------------------------------


def rehearse(target: targets.Target, rows: rowsmod.ImportRows, academic_year: str, students: int, *,
             establishment_scope: list[str] | None, archive: bool) -> Rehearsal:
    """Plan a sample of ``students`` with all their rows; on DuckDB also apply it (migrations first) to a
    throw-away copy of the target file and re-plan. A target already holding every sampled row (a re-plan
    after the import) gives ``applied`` False, the sample's empty plan and a note saying nothing to do.
    Writes nothing to the target."""
    sample = sample_rows(rows, students)
    n = sample.students.num_rows
    if target.kind != "duckdb":
        desired = desired_for(sample, target.con, academic_year, establishment_scope)
        plan = plan_import(target.con, desired, archive_labels(desired, archive))
        note = ("PostgreSQL: the sample is planned (rolled back), not applied; migrations pending"
                if plan.migrations else "PostgreSQL: the sample is planned (rolled back), not applied")
        return Rehearsal(n, plan_frame(plan), False, None, note)
    target.con.execute("CHECKPOINT")  # the file on disk is complete before it is copied
    with tempfile.TemporaryDirectory(prefix="vespa-rehearsal-") as tmp:
        copy = Path(tmp) / "rehearsal.duckdb"
        shutil.copyfile(target.spec.path, copy)
        con = duckdb.connect(str(copy))
        try:
            desired = desired_for(sample, con, academic_year, establishment_scope)
            labels = archive_labels(desired, archive)
            outcome = apply_import(con, desired, sample, approve="auto", run_id="rehearsal", target_kind="duckdb",
                                   archive=labels)
            if outcome.status == "refused":
                return Rehearsal(n, pd.DataFrame(), False, False, outcome.reason)
            applied = outcome.result is not None and bool(outcome.result.applied)
            counts = plan_frame(outcome.result.plan if outcome.result is not None else outcome.plan)
            verified = guard.verify(con, desired).is_empty
        finally:
            con.close()
    if not applied:  # the target already holds every sampled row (e.g. re-planning after the import)
        return Rehearsal(n, counts, False, verified, "DuckDB: nothing to do: the target already holds every row of "
                         "the sample; the re-plan on a throw-away copy changes nothing")
    return Rehearsal(n, counts, True, verified, "DuckDB: applied to a throw-away copy of the target, then re-planned")


# --- verification --------------------------------------------------------------------------------


def verify_frame(con: Any, desired: planmod.Desired) -> tuple[planmod.Plan, pd.DataFrame]:
    """docs/ARCHITECTURE.md, “Guarded writes”: re-plan after commit; every count but ``unchanged`` should be zero. Read-only."""
    plan = guard.verify(con, desired)
    return plan, plan_frame(plan)


def reconcile(con: Any, desired: planmod.Desired) -> pd.DataFrame:
    """Source against target key by key, per table × year: rows in the source, found with equal values,
    missing, different, and rows of the year in the target the source lacks (kept, not deleted).
    Read-only (the staging is rolled back)."""
    plan = guard.verify(con, desired)
    out = []
    for spec in planmod.SPECS:
        if spec.name not in desired.tables:
            continue
        table = desired.tables[spec.name]
        source = pc.value_counts(table.column("academic_year")).to_pylist() if table.num_rows else []
        live = dict(run(con, _live_count_sql(spec, desired), _live_params(desired)))
        for item in source:
            year, n = item["values"], int(item["counts"])
            cell = plan.counts().get(spec.name, {}).get(year, dict.fromkeys(planmod.OPS, 0))
            out.append({"table": spec.name, "academic_year": year, "source_rows": n, "matched": cell["unchanged"],
                        "missing": cell["insert"], "different": cell["update"], "refused": cell["refused"],
                        "target_only": int(live.get(year, 0)) - cell["unchanged"] - cell["update"]})
    return pd.DataFrame(out, columns=["table", "academic_year", "source_rows", "matched", "missing", "different",
                                      "refused", "target_only"])


def _live_count_sql(spec: planmod.TableSpec, desired: planmod.Desired) -> str:
    where = f"l.academic_year IN {in_list(desired.years)}"
    if desired.establishment_ids is not None:
        where += f" AND CAST(l.l_est AS TEXT) IN {in_list(desired.establishment_ids)}"
    return f"SELECT l.academic_year, count(*) FROM ({live_sql(spec, list(spec.keys))}) l WHERE {where} GROUP BY 1"


def _live_params(desired: planmod.Desired) -> list:
    return [*desired.years, *(desired.establishment_ids or [])]


def reconciled(frame: pd.DataFrame) -> bool:
    """Every source row found in the target with equal values."""
    return bool(len(frame)) and bool((frame["matched"] == frame["source_rows"]).all())
