"""Order-independent digests of row sets that DuckDB and PostgreSQL compute identically. Read-only.

Used by the planner's no-op fast path (SPEC.md §9: a re-run that finds nothing to do ≤ 5 s): the
desired rows (Arrow, digested in an in-memory DuckDB) and the live slice of the target (one
aggregate query) are rendered to the same canonical text per row, hashed with md5 (both engines),
and two 60-bit prefixes of the hash are summed exactly (DuckDB HUGEINT, PostgreSQL NUMERIC). Equal
row counts and equal sums per academic year mean equal multisets of rows (up to a 2^-120 collision).

Canonical rendering, per column: NULL is ``~``; any other value is its text (dates as
``YYYY-MM-DD`` whatever the server's DateStyle) prefixed by its byte length and ``:``, so no value can
imitate a separator, another column or NULL. Columns are joined by ``|``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hash_expr", "hash_sums", "render_expr", "unchanged_groups"]


def _text(dialect: str, expr: str, sql_type: str) -> str:
    if sql_type.upper() == "DATE":
        return f"to_char({expr}, 'YYYY-MM-DD')" if dialect == "postgres" else f"strftime({expr}, '%Y-%m-%d')"
    return f"CAST({expr} AS TEXT)"


def render_expr(dialect: str, columns: list[tuple[str, str]]) -> str:
    """SQL text of one row: ``columns`` are (SQL expression, SQL type) pairs, rendered canonically."""
    parts = []
    for expr, sql_type in columns:
        text = _text(dialect, expr, sql_type)
        size = f"octet_length({text})" if dialect == "postgres" else f"strlen({text})"
        parts.append(f"CASE WHEN {expr} IS NULL THEN '~' ELSE concat({size}, ':', {text}) END")
    return "concat_ws('|', " + ", ".join(parts) + ")"


def _prefix(dialect: str, hexdigest: str, start: int) -> str:
    """A 60-bit non-negative integer from 15 hex digits of the md5 (identical on both engines)."""
    digits = f"substr({hexdigest}, {start}, 15)"
    if dialect == "postgres":
        return f"CAST(CAST(concat('x', {digits}) AS bit(60)) AS BIGINT)"
    return f"CAST(concat('0x', {digits}) AS BIGINT)"


def hash_expr(dialect: str, columns: list[tuple[str, str]]) -> str:
    """md5 (hex) of the row's canonical text; select it in a subquery and aggregate with ``hash_sums``."""
    return f"md5({render_expr(dialect, columns)})"


def hash_sums(dialect: str, hash_column: str, *, named: bool = False) -> str:
    """Select-list text: ``count(*)`` and the two exact sums of the hash prefixes, as text
    (named ``n``, ``hi``, ``lo`` when ``named``)."""
    hi, lo = _prefix(dialect, hash_column, 1), _prefix(dialect, hash_column, 16)
    n, h, low = (" AS n", " AS hi", " AS lo") if named else ("", "", "")
    return f"count(*){n}, CAST(coalesce(sum({hi}), 0) AS TEXT){h}, CAST(coalesce(sum({lo}), 0) AS TEXT){low}"


def unchanged_groups(table: Any, keys: list[str], columns: list[tuple[str, str]], live: Any
                     ) -> tuple[dict, Any, Any] | None:
    """Split desired rows by student group (academic_year, email) against the live rows of those groups.

    ``table`` and ``live`` (Arrow) both hold ``columns`` ((name, SQL type) pairs; live values may be
    text, both sides are cast to the type); ``keys`` are the natural key columns. A group is proven
    unchanged when its desired and live rows are the same multiset of (key, values): equal row counts
    and equal sums of two 64-bit DuckDB hashes of every typed row (two seeds; a false proof needs both
    sums to collide within one group). Desired keys must be unique (the planner checks that first).
    Returns ({year: rows proven unchanged}, indices of the desired rows left to classify, the proven
    groups as Arrow (email, academic_year)), or None
    when a value does not cast (the full path then reports it). Read-only: runs in a private in-memory
    DuckDB; aggregates per group instead of joining a million rows to a million (~3x faster)."""
    import duckdb  # noqa: PLC0415 - only the planner's fast path needs it
    import pyarrow as pa  # noqa: PLC0415

    mem = duckdb.connect()
    try:
        mem.register("vespa_desired", table.append_column("vespa_i", pa.array(range(table.num_rows), pa.int64())))
        mem.register("vespa_live", live)
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
