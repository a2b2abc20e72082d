"""Charts for the reports, where a reviewer would rather look than read. Each function is read-only and
returns a matplotlib ``Figure`` (no pyplot state), or None when there is nothing to draw; a runbook
shows one with ``run.chart(fig)`` (embedded as PNG in the report).

    rows_before_after(counts)       import or sync plan: rows per table and year before and after
    rollover_marked(written)        rollover: rows of the closed year per table, marked archived
    drift_per_school(students)      sync: students per establishment by drift kind
    completions_per_month(months)   csv_profile: object_10 completions per month
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

DRIFT_COLOURS = {"changed": "#f9a825", "new": "#2e7d32", "extra": "#c62828", "missing": "#6a1b9a",
                 "unchanged": "#b0bec5"}


def _figure(width: float = 9, height: float = 3.5, ncols: int = 1) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def rows_before_after(counts: dict, title: str = "Rows per table and academic year") -> Figure | None:
    """From a plan's counts ({table: {year: {insert, update, unchanged, delete}}}): the rows of each
    planned year slice before (unchanged + update + delete) and after (unchanged + update + insert),
    one panel per table."""
    tables = {t: years for t, years in (counts or {}).items() if years}
    if not tables:
        return None
    fig, axes = _figure(3.4 * len(tables) + 1, 3.4, len(tables))
    for ax, (table, years) in zip(axes, tables.items(), strict=True):
        labels = sorted(years)
        kept = [years[y].get("unchanged", 0) + years[y].get("update", 0) for y in labels]
        before = [k + years[y].get("delete", 0) for k, y in zip(kept, labels, strict=True)]
        after = [k + years[y].get("insert", 0) for k, y in zip(kept, labels, strict=True)]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#90a4ae")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#1565c0")
        ax.set_xticks(list(xs), labels)
        ax.set_title(table)
        ax.yaxis.set_major_formatter(_thousands())
    axes[0].set_ylabel("rows")
    axes[0].legend()
    fig.suptitle(title)
    return fig


def rollover_marked(written: dict) -> Figure | None:
    """From a rollover's ``written`` record: rows of the closed year per table marked archived."""
    marked = (written or {}).get("marked") or {}
    if not marked:
        return None
    fig, (ax,) = _figure(9, 3)
    ax.barh(list(marked), list(marked.values()), color="#1565c0")
    ax.set_xscale("log")
    for y, n in enumerate(marked.values()):
        ax.annotate(f"{n:,}", (n, y), xytext=(3, 0), textcoords="offset points", va="center")
    close = (written.get("rollover") or {}).get("close", "")
    ax.set(title=f"Rows of {close} marked archived, per table", xlabel="rows (log scale)")
    return fig


def drift_per_school(students: pd.DataFrame) -> Figure | None:
    """Students per establishment by drift kind (stacked), establishments with drift first."""
    if students is None or students.empty:
        return None
    table = students.pivot_table(index="establishment", columns="drift", values="email", aggfunc="count", fill_value=0)
    kinds = [k for k in DRIFT_COLOURS if k in table.columns] + [k for k in table.columns if k not in DRIFT_COLOURS]
    table = table[kinds]
    drifting = table.drop(columns=["unchanged"], errors="ignore").sum(axis=1)
    table = table.loc[drifting.sort_values().index]
    fig, (ax,) = _figure(9, max(2.5, 0.35 * len(table) + 1.2))
    table.plot.barh(ax=ax, stacked=True, color=[DRIFT_COLOURS.get(k, "#795548") for k in kinds])
    ax.set(title="Drift per establishment: students by kind", xlabel="students", ylabel="establishment")
    return fig


def completions_per_month(months: pd.DataFrame) -> Figure | None:
    """object_10 completions per month (columns ``month``, ``completions``)."""
    if months is None or months.empty:
        return None
    fig, (ax,) = _figure(10, 3)
    ax.bar(months["month"].astype(str), months["completions"], color="#1565c0")
    ax.set(title="object_10 completions per month (field_855)", ylabel="completions")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.yaxis.set_major_formatter(_thousands())
    return fig


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:,.0f}")
