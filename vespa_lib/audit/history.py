"""The audit over time: comparison with the previous audit of the same target, the Parquet backup
that is the restore point (docs/ARCHITECTURE.md, “Runbooks”), and the audit's charts.

``find_previous``, ``compare_previous``, ``content_checksum`` and the charts are read-only.
``backup`` writes Parquet files into the folder it is given (the run's evidence folder) and nothing
else; it only reads the target.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vespa_lib.audit.base import Finding, Section, as_source
from vespa_lib.ops.files import sha256_of

__all__ = ["COUNT_KEYS", "find_previous", "read_counts", "compare_previous", "content_checksum", "backup",
           "backup_mismatches",
           "rows_per_year_chart", "scores_per_cycle_chart"]

COUNT_KEYS = ["table", "academic_year", "cycle"]
COUNTS_FILE = "counts.csv"  # what the audit notebook saves with run.save_table(counts, "counts")


def find_previous(outputs: Path | str, target: str, exclude: Path | str | None = None) -> Path | None:
    """The newest earlier audit run folder of the same target (manifest ``runbook == "audit"`` and
    equal ``target`` description) that holds ``counts.csv``; None if there is none. Read-only."""
    found = []
    for manifest in Path(outputs).glob("*/*/manifest.json"):
        run_dir = manifest.parent
        if exclude is not None and run_dir.resolve() == Path(exclude).resolve():
            continue
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged manifest is not a previous audit
        if data.get("runbook") == "audit" and data.get("target") == target and (run_dir / COUNTS_FILE).is_file():
            found.append((str(data.get("started_at") or ""), str(run_dir), run_dir))
    return max(found)[2] if found else None


def read_counts(run_dir: Path | str) -> pd.DataFrame:
    """The ``counts.csv`` of an audit run folder, typed like ``audit.counts(...).frame``. Read-only."""
    df = pd.read_csv(Path(run_dir) / COUNTS_FILE, dtype={"table": "str", "academic_year": "str"})
    df["cycle"] = pd.to_numeric(df["cycle"]).astype("Int64")
    df["n"] = df["n"].astype("int64")
    return df


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    # Merge keys must not be NULL: tables without a year or cycle get explicit placeholders.
    out = df[[*COUNT_KEYS, "n"]].copy()
    out["academic_year"] = out["academic_year"].astype("object").where(out["academic_year"].notna(), "(none)")
    out["cycle"] = pd.to_numeric(out["cycle"]).astype("Int64").fillna(0).astype("int64")
    return out.groupby(COUNT_KEYS, as_index=False)["n"].sum()


def compare_previous(current: pd.DataFrame, previous: pd.DataFrame | Path | str | None) -> Section:
    """Differences between this audit's counts and a previous one (a counts frame or an audit run
    folder). Rows are (table, year, cycle) groups whose count changed; cycle 0 = no cycle. Read-only."""
    label = str(previous) if isinstance(previous, Path | str) else "given counts"
    if previous is None:
        return Section("Changes since the previous audit (none found)", pd.DataFrame(columns=[*COUNT_KEYS, "previous", "current", "change"]),
                       [Finding("rows_lost_since_previous", 0, "no previous audit of this target to compare with")])
    prev = read_counts(previous) if isinstance(previous, Path | str) else previous
    merged = _keyed(prev).merge(_keyed(current), how="outer", on=COUNT_KEYS, suffixes=("_previous", "_current"))
    merged = merged.rename(columns={"n_previous": "previous", "n_current": "current"})
    merged[["previous", "current"]] = merged[["previous", "current"]].fillna(0).astype("int64")
    merged["change"] = merged["current"] - merged["previous"]
    changed = merged[merged["change"] != 0].sort_values(COUNT_KEYS, ignore_index=True)
    lost = int(-changed.loc[changed["change"] < 0, "change"].sum())
    finding = Finding("rows_lost_since_previous", lost,
                      f"{len(changed)} (table, year, cycle) counts changed; {lost} rows fewer than before",
                      {"previous": label, "groups_changed": len(changed),
                       "rows_added": int(changed.loc[changed["change"] > 0, "change"].sum())})
    return Section("Changes since the previous audit", changed, [finding])


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """A column as text for hashing; NULL becomes a marker no cast produces."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_binary(col.type) or pa.types.is_fixed_size_binary(col.type):
        text = pa.array([None if v is None else v.hex() for v in col.to_pylist()], pa.string())
    else:
        try:
            text = pc.cast(col, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            # Nested values (JSON distributions, lists): a canonical JSON text per value.
            text = pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str)
                             for v in col.to_pylist()], pa.string())
    return pc.fill_null(text, "\x00NULL")


def content_checksum(table: pa.Table) -> str:
    """SHA-256 over the table's rows, independent of row and column order: every row is rendered as
    text (columns by name), the rows are sorted, and the sorted rows are hashed. Read-only."""
    names = sorted(table.column_names)
    digest = hashlib.sha256("\x1f".join(names).encode())
    if table.num_rows == 0 or not names:
        return digest.hexdigest()
    parts = [_as_text(table.column(n)) for n in names]
    rows = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    rows = pc.take(rows, pc.array_sort_indices(rows))
    rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
    rows = rows.cast(pa.large_string())
    _, offset_buf, data_buf = rows.buffers()
    offsets = np.frombuffer(offset_buf, dtype=np.int64)[rows.offset: rows.offset + len(rows) + 1]
    # Lengths and bytes of the sorted rows: unambiguous even if a value contains the separators.
    digest.update((offsets - offsets[0]).tobytes())
    digest.update(memoryview(data_buf)[offsets[0]:offsets[-1]])
    return digest.hexdigest()


def restore_point_dir(root: Path | str, run_id: str, when: str) -> Path:
    """The folder for one audit's restore point: ``<root>/<YYYY-MM-DD>/<run_id>/``, owner-only (0700).

    Restore points hold raw personal data (a masked backup could restore nothing), so they are kept
    OUTSIDE the shareable evidence folder (docs/ARCHITECTURE.md, “Evidence and privacy”: evidence is masked); the manifest records their
    location, row counts and checksums."""
    path = Path(root) / when / run_id
    path.mkdir(parents=True, exist_ok=True)
    for folder in (Path(root), Path(root) / when, path):
        folder.chmod(0o700)
    return path


def backup(t, out_dir: Path | str) -> pd.DataFrame:
    """Write every audited production table to ``out_dir/<table>.parquet`` (via Arrow) and return
    per table: rows, file, bytes, file SHA-256 and the order-independent content checksum — the
    restore point to record in the manifest. Reads the target only; writes only into ``out_dir``."""
    src = as_source(t)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for table in src.tables:
        data = src.read_table(table)
        path = out / f"{table}.parquet"
        pq.write_table(data, path)
        rows.append({"table": table, "rows": data.num_rows, "file": path.name, "bytes": path.stat().st_size,
                     "file_sha256": sha256_of(path), "content_sha256": content_checksum(data)})
    return pd.DataFrame(rows, columns=["table", "rows", "file", "bytes", "file_sha256", "content_sha256"])


def rows_per_year_chart(counts: pd.DataFrame):
    """A matplotlib Figure: rows per academic year for each table with a year (log scale). Read-only."""
    from matplotlib.figure import Figure

    data = counts[counts["academic_year"].notna()]
    pivot = data.pivot_table(index="academic_year", columns="table", values="n", aggfunc="sum", fill_value=0)
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    if len(pivot):
        pivot.plot.bar(ax=ax, logy=True, rot=0)
    ax.set(title="Rows per academic year and table", xlabel="academic year", ylabel="rows (log scale)")
    return fig


def scores_per_cycle_chart(counts: pd.DataFrame):
    """A matplotlib Figure: vespa_scores rows per cycle for each academic year. Read-only."""
    from matplotlib.figure import Figure

    data = counts[(counts["table"] == "vespa_scores") & counts["cycle"].notna()]
    pivot = data.pivot_table(index="academic_year", columns="cycle", values="n", aggfunc="sum", fill_value=0)
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    if len(pivot):
        pivot.rename(columns=lambda c: f"cycle {c}").plot.bar(ax=ax, rot=0)
    ax.set(title="vespa_scores rows per cycle and academic year", xlabel="academic year", ylabel="rows")
    return fig


def backup_mismatches(restore: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Tables whose backup row count differs from the audit's exact count (empty = the restore
    point is complete). Read-only."""
    exact = counts.groupby("table", as_index=False)["n"].sum().rename(columns={"n": "counted"})
    merged = exact.merge(restore[["table", "rows"]], how="outer", on="table").fillna(0)
    return merged[merged["counted"].astype("int64") != merged["rows"].astype("int64")].reset_index(drop=True)
