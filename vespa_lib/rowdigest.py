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

__all__ = ["hash_expr", "hash_sums", "render_expr"]


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


def hash_sums(dialect: str, hash_column: str) -> str:
    """Select-list text: ``count(*)`` and the two exact sums of the hash prefixes, as text."""
    hi, lo = _prefix(dialect, hash_column, 1), _prefix(dialect, hash_column, 16)
    return f"count(*), CAST(coalesce(sum({hi}), 0) AS TEXT), CAST(coalesce(sum({lo}), 0) AS TEXT)"
