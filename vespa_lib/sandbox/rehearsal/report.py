"""The rehearsal's report in the evidence: ``outputs/rehearsals/<stamp>/report.html`` with the
timeline chart (``timeline.png``: rows per academic year per table across the nights), each night's
changes, runs (linked to their evidence folders), notes, validation failures and invariant counts."""

from __future__ import annotations

import html
import os
from pathlib import Path

from . import calendar
from .invariants import TABLES
from .night import NightRecord

__all__ = ["timeline_chart", "write_report"]


MARKS = ((calendar.CALENDAR_CLOSE, "1 Jan close"), (calendar.REFUSE, "refused export"),
         (calendar.ROLLOVER, "1 Aug rollover"))  # dotted lines on the timeline


def timeline_chart(records: list[NightRecord], path: Path) -> Path:
    """One panel per table, one line per academic year: rows after each night."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(TABLES), 1, figsize=(12, 2.6 * len(TABLES)), sharex=True)
    nights = [r.night for r in records]
    every = sorted({label for r in records for by_label in r.counts.values() for label in by_label})
    palette = plt.get_cmap("tab10")
    colour = {label: palette(i % 10) for i, label in enumerate(every)}  # a year keeps its colour in every panel
    for ax, table in zip(axes, TABLES, strict=True):
        labels = sorted({label for r in records for label in r.counts.get(table, {})})
        for label in labels:
            ax.plot(nights, [r.counts.get(table, {}).get(label, 0) for r in records], marker=".", label=label,
                    color=colour[label])
        for day, text in MARKS:
            if nights and nights[0] <= day <= nights[-1]:
                ax.axvline(day, color="grey", linestyle=":", linewidth=1)
                if table == TABLES[0]:
                    ax.annotate(text, (day, 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                                va="top", ha="right", color="grey")
        ax.set_title(table, fontsize=10)
        ax.set_ylabel("rows")
        if labels:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="academic year",
                      title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _run_cell(run, folder: Path) -> str:
    link = os.path.relpath(run.folder / "report.html", folder) if run.folder else ""
    status = html.escape(run.manifest.get("sync_status") or run.status)
    failed = run.failed_checks()
    extra = f" <small>failed: {html.escape(', '.join(failed))}</small>" if failed else ""
    name = html.escape(run.label())
    return f'<a href="{html.escape(link)}">{name}</a>: <b>{status}</b>{extra}' if link else f"{name}: {status}"


def _row(rec: NightRecord, folder: Path) -> str:
    changes = ", ".join(f"{k} {v}" for k, v in sorted(rec.changes.items())) or "none"
    runs = "<br>".join(_run_cell(r, folder) for r in rec.runs) or "no run"
    notes = "<br>".join(html.escape(n) for n in rec.notes)
    bad = "<br>".join(html.escape(f"{k}: {v}") for k, vs in rec.violations.items() for v in vs)
    return (f"<tr><td>{rec.night}</td><td>{html.escape(changes)}</td><td>{runs}</td><td>{notes}</td>"
            f"<td class='{'bad' if bad else 'ok'}'>{bad or '0'}</td></tr>")


def write_report(records: list[NightRecord], folder: Path, summary: str, invariant_totals: dict[str, int]) -> Path:
    """Write ``timeline.png`` and ``report.html`` in ``folder``; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    timeline_chart(records, folder / "timeline.png")
    totals = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in invariant_totals.items())
    rows = "\n".join(_row(r, folder) for r in records)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Year rehearsal</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;
font-size:12px}}table{{border-collapse:collapse}}.bad{{background:#fdd}}.ok{{background:#dfd}}</style></head><body>
<h1>A school year rehearsed night by night</h1><p><b>{html.escape(summary)}</b></p>
<h2>Rows per academic year per table</h2><img src="timeline.png" alt="timeline of rows per year per table">
<h2>Invariant violations (nights with a violation, per invariant)</h2><table><tr><th>invariant</th><th>nights</th></tr>
{totals}</table>
<h2>Nights</h2><table><tr><th>night</th><th>Knack changes that day(s)</th><th>runs (evidence)</th><th>notes</th>
<th>invariant violations</th></tr>
{rows}</table></body></html>"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
