"""Prove desired row groups unchanged against live rows without joining them row by row. Read-only.

Used by the planner's fast path (docs/ARCHITECTURE.md, “Quality bars”: a re-run that finds nothing to do ≤ 5 s): the desired
rows (Arrow) and the live rows of the same years (an Arrow stream read over COPY) are aggregated per
student group (academic_year, email) in a private in-memory DuckDB: row count and two exact sums of DuckDB's
64-bit row hash (two seeds) over the typed values. Equal aggregates mean equal multisets of rows
(a false proof needs both sums to collide within one group). Only groups that differ are staged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["unchanged_groups"]


def unchanged_groups(table: Any, keys: list[str], columns: list[tuple[str, str]], live: Any, ids: Any = None
                     ) -> tuple[dict, Any, Any] | None:
    """Split desired rows by student group (academic_year, email) against the live rows of those groups.

    ``table`` and ``live`` (Arrow tables, ``live`` also a stream read once) both hold ``columns``
    ((name, SQL type) pairs; live values may be text, both sides are cast to the type), except that
    with ``ids`` (Arrow: student_id, email) live rows carry ``student_id`` in place of ``email`` and
    are resolved through it (an inner join, as the database's foreign key does); ``keys`` are the
    natural key columns. A group is proven unchanged when its desired and live rows are the same
    multiset of (key, values): equal row counts and equal sums of two 64-bit DuckDB hashes of every
    typed row (two seeds; a false proof needs both sums to collide within one group). Desired keys must
    be unique (the planner checks that first). Returns ({year: rows proven unchanged}, indices of the
    desired rows left to classify, the proven groups as Arrow (email, academic_year)), or None when a
    value does not cast (the full path then reports it). Read-only: runs in a private, memory-capped
    DuckDB (``duckwork``); aggregates per group instead of joining a million rows to a million."""
    import duckdb  # noqa: PLC0415 - only the planner's fast path needs it
    import pyarrow as pa  # noqa: PLC0415

    from vespa_lib.sources import duckwork  # noqa: PLC0415

    mem = duckwork.connect()
    try:
        mem.register("vespa_desired", table.append_column("vespa_i", pa.array(range(table.num_rows), pa.int64())))
        mem.register("vespa_live_rows", live)
        if ids is None:
            mem.execute("CREATE VIEW vespa_live AS SELECT * FROM vespa_live_rows")
        else:
            mem.register("vespa_ids", ids)
            mem.execute("CREATE VIEW vespa_live AS SELECT i.email, l.* EXCLUDE (student_id) "
                        "FROM vespa_live_rows l JOIN vespa_ids i ON i.student_id = l.student_id")
        cast = ", ".join(f"CAST({_quote(c)} AS {t}) AS {_quote(c)}" for c, t in columns)
        every = ", ".join(_quote(c) for c, _ in columns)
        sums = (f"count(*) AS n, sum(CAST(hash({every}) AS HUGEINT)) AS h1, "
                f"sum(CAST(hash({every}, 'vespa') AS HUGEINT)) AS h2")
        for side, source in (("l", "vespa_live"), ("d", "vespa_desired")):
            mem.execute(f"CREATE TEMP TABLE {side} AS SELECT academic_year AS y, email AS e, {sums} "
                        f"FROM (SELECT {cast} FROM {source}) GROUP BY 1, 2")
        mem.execute("CREATE TEMP TABLE p AS SELECT d.y, d.e, d.n FROM d JOIN l ON d.y = l.y AND d.e = l.e "
                    "AND d.n = l.n AND d.h1 = l.h1 AND d.h2 = l.h2")
        years = dict(mem.execute("SELECT y, sum(n) FROM p GROUP BY y").fetchall())
        groups = mem.sql("SELECT e AS email, y AS academic_year FROM p ORDER BY 2, 1").to_arrow_table()
        rest = mem.sql("SELECT vespa_i FROM vespa_desired d WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.y = "
                       "CAST(d.academic_year AS TEXT) AND p.e = CAST(d.email AS TEXT)) ORDER BY vespa_i"
                       ).to_arrow_table().column(0)
    except duckdb.Error:
        return None
    finally:
        mem.close()
    return {y: int(n) for y, n in years.items()}, rest, groups


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
