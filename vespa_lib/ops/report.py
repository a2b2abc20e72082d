"""How a run's evidence reads: tables, the verdict box at the top of a report, the failure sentence.

Read-only: every function takes a frame, a manifest or a notebook and returns text or a Styler.

    styled(df)                -> Styler: no index, counts 1,234, "—" for missing, yes/no for booleans
    Table(df)                 -> what Run.show displays: that Styler as HTML, the same cells as text
    facts(manifest, run_dir)  -> mode, academic year, target (or rehearsal copy), rows written per table/year
    failure(nb)               -> where a failed notebook stopped: step, error, sections not reached
    verdict_html(manifest, …) -> the box a reviewer reads first (docs/ARCHITECTURE.md, "Evidence and privacy")
    run_state(manifest)       -> passed, failed, running, or interrupted (a running run whose process is gone)
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

DASH = "—"
PLAIN_INT = re.compile(r"year|version|line|cycle|(^|_)id$|knack", re.IGNORECASE)  # 2025, not 2,025
WRITE_OPS = ("insert", "update", "delete")
REHEARSAL_MARK = "vespa-rehearsal-"  # transition.rehearsal_copy's temp folder prefix
STALE_AFTER_S = 24 * 3600  # a "running" manifest older than this is interrupted, whatever its process


# --- tables --------------------------------------------------------------------------------------

def format_cell(value: Any, plain: bool = False) -> str:
    """One cell as a reviewer reads it: ``1,234``; ``302`` not ``302.0``; ``yes``/``no``; ``—`` if missing."""
    if value is None or value is _pd_na() or value is _pd_nat():
        return DASH
    if type(value).__name__ in ("bool", "bool_"):  # Python and numpy booleans
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value)) if plain else f"{int(value):,}"
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return DASH
        if number.is_integer() and abs(number) < 1e15:
            return format_cell(int(number), plain)
        return f"{number:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value if value.strip() else DASH
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _pd_na() -> Any:
    import pandas as pd

    return pd.NA


def _pd_nat() -> Any:
    import pandas as pd

    return pd.NaT


def styled(df: pd.DataFrame) -> Styler:
    """``df`` as a Styler without the index, every cell through ``format_cell`` (text HTML-escaped,
    nothing cut short). Year, id, cycle and line columns keep their digits together."""
    def formatter(plain: bool):
        return lambda v: html.escape(format_cell(v, plain))

    frame = df.reset_index(drop=True)
    style = frame.style.hide(axis="index")
    return style.format({c: formatter(bool(PLAIN_INT.search(str(c)))) for c in frame.columns})


class Table:
    """A frame as a report shows it: ``styled`` HTML in a notebook, the same cells as plain text
    elsewhere (a console, the notebook's text/plain copy)."""

    def __init__(self, df: pd.DataFrame):
        self.frame = df

    def _repr_html_(self) -> str:
        return styled(self.frame).to_html()

    def __repr__(self) -> str:
        plain = {c: bool(PLAIN_INT.search(str(c))) for c in self.frame.columns}
        text = self.frame.apply(lambda col: col.map(lambda v: format_cell(v, plain[col.name])))
        return text.to_string(index=False)


# --- what a run did, from its manifest -----------------------------------------------------------

@dataclass
class Facts:
    """What the verdict box and the index say about one run."""

    mode: str
    year: str
    target: str
    rehearsal: bool
    committed: bool
    written: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # table -> year -> op -> n
    heading: str = ""  # "Written", "Would be written (plan: nothing written)", "Nothing written (read-only)"
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(n for years in self.written.values() for ops in years.values() for n in ops.values())


def run_mode(m: dict[str, Any]) -> str:
    """plan, apply, rollover, validate, undo or read-only."""
    if m.get("undo_of") or m.get("runbook") == "undo":
        return "undo"
    return str((m.get("parameters") or {}).get("mode") or "read-only")


def run_year(m: dict[str, Any]) -> str:
    """The academic year the run is about (``N → N+1`` for a rollover), or a dash."""
    params = m.get("parameters") or {}
    roll = (m.get("written") or m.get("rollover") or {}).get("rollover") or {}
    if roll.get("close"):
        return f"{roll['close']} → {roll['open']}"
    for value in (params.get("academic_year"), m.get("academic_year"), params.get("close_year"), m.get("snapshot_year")):
        if value:
            return str(value)
    if m.get("runbook") == "audit":
        return "every year"
    if m.get("as_of"):  # a validation judges the year its as_of date falls in
        from vespa_lib.rules import years

        try:
            return f"{years.current_year(date.fromisoformat(str(m['as_of'])))} (as of {m['as_of']})"
        except ValueError:
            return DASH
    return DASH


def is_rehearsal(m: dict[str, Any]) -> bool:
    """Whether the run wrote to a throw-away copy (``rehearsal_copy``) rather than to its target."""
    return bool(m.get("rehearsal_copy")) or REHEARSAL_MARK in str(m.get("target") or "")


def shown_target(m: dict[str, Any]) -> str:
    """The target a reviewer should read: a rehearsal copy is named as a copy of the real target."""
    real = (m.get("parameters") or {}).get("target") or m.get("target") or DASH
    return f"rehearsal copy of {real}" if is_rehearsal(m) else str(m.get("target") or real)


def facts(m: dict[str, Any], run_dir: Path | None = None) -> Facts:
    """Mode, year, target and what was (or would be) written per table and year, from the manifest
    and the plan the run saved. Read-only."""
    mode, runbook = run_mode(m), m.get("runbook")
    f = Facts(mode, run_year(m), shown_target(m), is_rehearsal(m), committed=False)
    if runbook == "year_transition" and m.get("written"):
        f.committed, f.heading = True, "Written (rows marked archived)"
        close = m["written"]["rollover"]["close"]
        f.written = {t: {close: {"marked": int(n)}} for t, n in m["written"].get("marked", {}).items()}
        return f
    counts = m.get("counts") if runbook == "import" else _saved_plan(run_dir).get("counts")
    status = m.get("apply_status") or m.get("sync_status")
    f.committed = bool(m.get("write_committed")) or status == "applied"
    f.written = _write_counts(counts or {})
    if f.committed:
        f.heading = "Written"
    elif mode in ("plan", "apply") and (counts is not None or m.get("migrations_pending")):
        f.heading = "Would be written (nothing written)" if mode == "plan" else "Planned, not written"
    else:
        f.heading = "Nothing written (read-only)" if mode in ("read-only", "validate") else "Nothing written"
    pending = m.get("migrations_pending") or []
    if pending and not m.get("migrations_applied"):
        f.notes.append(f"{len(pending)} schema migration(s) first: " + "; ".join(
            f"{p.get('version')} {p.get('name')}" for p in pending) + ". Data rows are planned after them.")
    if m.get("migrations_applied"):
        f.notes.append(f"{len(m['migrations_applied'])} schema migration(s) applied.")
    repair = (m.get("f8_repair") or {}).get("applied") or {}
    deleted = sum(int((ops or {}).get("delete", 0)) for ops in repair.values())
    if deleted:
        f.notes.append(f"F8 repair run {m['f8_repair'].get('run_id')}: {deleted:,} duplicate rows deleted.")
    return f


def _saved_plan(run_dir: Path | None) -> dict[str, Any]:
    """The run's ``plan.json`` (saved as an object or as a JSON string), or {}."""
    path = run_dir / "plan.json" if run_dir else None
    if not path or not path.is_file():
        return {}
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        plan = json.loads(plan) if isinstance(plan, str) else plan
    except ValueError:
        return {}
    return plan if isinstance(plan, dict) else {}


def _write_counts(counts: dict) -> dict[str, dict[str, dict[str, int]]]:
    """{table: {year: {op: n}}} keeping only inserts, updates and deletes that are not zero."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for table, years in counts.items():
        for year, ops in sorted((years or {}).items()):
            kept = {op: int(ops.get(op, 0)) for op in WRITE_OPS if ops.get(op)}
            if kept:
                out.setdefault(table, {})[year] = kept
    return out


# --- a failed notebook ---------------------------------------------------------------------------

@dataclass
class Failure:
    """Where a notebook stopped: the step (section heading), the error, the sections never reached."""

    step: str | None
    error: str | None
    cell_index: int | None
    not_reached: list[str]


def _heading(source: str) -> str | None:
    for line in source.splitlines():
        if line.lstrip().startswith("#"):
            return line.lstrip("# ").strip()
    return None


def failure(nb: Any) -> Failure:
    """The first cell with an error output, the heading of its section, and later headings. Read-only."""
    step, found = None, None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and not _is_papermill_banner(cell):
            step = _heading(cell.source) or step
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if cell.cell_type == "code" and errors:
            found = Failure(step, f"{errors[0].get('ename')}: {_first_line(errors[0].get('evalue', ''))}", i, [])
            break
    if found is None:
        return Failure(None, None, None, [])
    later = [_heading(c.source) for c in nb.cells[found.cell_index + 1:] if c.cell_type == "markdown"]
    found.not_reached = [h for h in later if h and h.lower() != "verdict"]
    return found


def _first_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip()
    return text.splitlines()[0] if text else ""


def _is_papermill_banner(cell: Any) -> bool:
    return "papermill-error-cell-tag" in cell.get("metadata", {}).get("tags", [])


def report_notebook(nb: Any) -> Any:
    """A copy of the executed notebook for the report: papermill's "An Exception was encountered"
    banner dropped (the verdict box says it in one sentence) and nothing after the failed cell (its
    sections never ran). The "stopped here" anchor and the traceback stay, lower down."""
    import copy

    out = copy.deepcopy(nb)
    where = failure(out).cell_index
    if where is not None:
        out.cells = out.cells[: where + 1]
    out.cells = [c for c in out.cells if not (_is_papermill_banner(c) and "An Exception was encountered" in c.source)]
    return out


def failure_sentence(m: dict[str, Any], fail: Failure | None = None) -> str | None:
    """One sentence: what failed and why. None for a passed run."""
    if m.get("status") == "passed":
        return None
    checks = m.get("checks") or []
    failed = [c for c in checks if not c.get("passed")]
    error = str(m.get("error") or "")
    if failed and (not error or error.startswith("ValidationFailed")):
        named = "; ".join(f"{c['name']}" + (f" ({c['detail']})" if c.get("detail") else "") for c in failed)
        return f"{len(failed)} of {len(checks)} checks failed: {named}."
    step = (fail.step if fail else None) or m.get("failed_step")
    where = f"Stopped at step “{step}”" if step else "The run stopped"
    why = (fail.error if fail and fail.error else None) or _first_line(error) or "no error recorded"
    return f"{where}: {why}"


# --- the verdict box -----------------------------------------------------------------------------

VERDICT_CSS = """
.vespa-verdict { border: 2px solid #2e7d32; border-radius: .5rem; padding: .8rem 1.2rem; margin: 1rem 0 2rem;
  font-family: system-ui, sans-serif; background: #f6fbf6; }
.vespa-verdict.failed { border-color: #c62828; background: #fdf5f5; }
.vespa-verdict h1 { margin: 0 0 .4rem; font-size: 1.6rem; }
.vespa-verdict .why { font-size: 1.1rem; font-weight: 600; margin: .2rem 0 .6rem; }
.vespa-verdict table { border-collapse: collapse; margin: .4rem 0; }
.vespa-verdict th, .vespa-verdict td { text-align: left; padding: .15rem .8rem .15rem 0; }
.vespa-verdict td.n { text-align: right; font-variant-numeric: tabular-nums; }
"""


def verdict_html(m: dict[str, Any], run_dir: Path | None = None, fail: Failure | None = None) -> str:
    """The box at the top of ``report.html``: verdict, the failure in one sentence, target, year, mode,
    checks, and what was written or would be written per table and year."""
    esc = html.escape
    f = facts(m, run_dir)
    status = "passed" if m.get("status") == "passed" else "failed"
    title = f"{status.upper()}: {m.get('runbook', '')}"
    if f.committed and status == "failed":
        title = f"APPLIED (write committed), then FAILED: {m.get('runbook', '')}"
    parts = [f'<section class="vespa-verdict {status}" id="verdict"><h1>{esc(title)}</h1>']
    sentence = failure_sentence(m, fail)
    if sentence:
        parts.append(f'<p class="why">{esc(sentence)}</p>')
    checks = m.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    rows = [("Target", f.target), ("Academic year", f.year), ("Mode", f.mode),
            ("Checks", f"{passed} of {len(checks)} passed"), ("Run", f"{m.get('run_id', '')}, {m.get('started_at', '')}")]
    parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows) + "</table>")
    parts.append(f"<p><b>{esc(f.heading)}</b></p>")
    if f.written:
        parts.append(_written_table(f.written))
    parts += [f"<p>{esc(note)}</p>" for note in f.notes]
    if fail and fail.not_reached:
        parts.append(f"<p>Not reached: {esc(', '.join(fail.not_reached))}.</p>")
    if fail and fail.cell_index is not None:
        parts.append('<p><a href="#papermill-error-cell">The traceback is below, where the run stopped.</a></p>')
    parts.append("</section>")
    return f"<style>{VERDICT_CSS}</style>" + "".join(parts)


def _written_table(written: dict[str, dict[str, dict[str, int]]]) -> str:
    ops = [op for op in (*WRITE_OPS, "marked") if any(op in c for y in written.values() for c in y.values())]
    head = "<tr><th>table</th><th>academic year</th>" + "".join(f"<th>{op}</th>" for op in ops) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{html.escape(y)}</td>"
        + "".join(f'<td class="n">{format_cell(c.get(op, 0))}</td>' for op in ops) + "</tr>"
        for t, years in written.items() for y, c in years.items())
    return f"<table>{head}{body}</table>"


# --- the state of a run for the index -----------------------------------------------------------

def run_state(m: dict[str, Any], now: datetime | None = None) -> str:
    """``passed``, ``failed``, ``running`` or ``interrupted``: a ``running`` manifest whose process on
    this host is gone (killed, or the machine restarted), or that is older than its timeout."""
    status = m.get("status")
    if status != "running":
        return "passed" if status == "passed" else "failed"
    try:
        started = datetime.fromisoformat(str(m.get("started_at")))
        age = ((now or datetime.now().astimezone()) - started).total_seconds()
    except (TypeError, ValueError):
        age = 0.0
    if age > float(m.get("timeout_s") or STALE_AFTER_S):
        return "interrupted"
    pid = m.get("pid")
    if isinstance(pid, int) and m.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "interrupted"
        except PermissionError:
            return "running"
    return "running"
