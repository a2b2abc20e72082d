"""SQL helpers for both engines (DuckDB and PostgreSQL): quoting, one statement, one value, IN lists,
order-independent digests, and the always-rolled-back transaction planning uses.

Values are always parameterised with ``?`` (rewritten to ``%s`` for psycopg); identifiers come from
this package, never from input. The lowest layer of the guarded write path: it imports only
``vespa_lib.write.schema``, so migrations, plans and the guard can all build on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vespa_lib.write.schema import dialect_of, table_columns

__all__ = ["checksum_expr", "digest_expr", "in_list", "q", "read_only_session", "rolled_back", "row_text_expr",
           "run", "scalar"]


def q(identifier: str) -> str:
    """Quote an identifier (``group`` is a keyword); identifiers come from this package, never input."""
    return '"' + identifier.replace('"', '""') + '"'


def run(con: Any, sql: str, params: list | tuple = ()) -> list[tuple]:
    """Execute one statement; rows for a query, ``[(rowcount,)]`` for DML on both engines."""
    if dialect_of(con) == "duckdb":
        return con.execute(sql, list(params)).fetchall()
    cur = con.execute(sql.replace("?", "%s"), list(params) or None)
    return cur.fetchall() if cur.description else [(cur.rowcount,)]


def scalar(con: Any, sql: str, params: list | tuple = ()) -> Any:
    """The first column of the first row (None when there is none)."""
    rows = run(con, sql, params)
    return rows[0][0] if rows else None


def in_list(values: list) -> str:
    """``(?, ?, ...)`` for a parameterised IN list."""
    return "(" + ", ".join("?" for _ in values) + ")"


_NULL = "'<null>'"


def checksum_expr(parts: list[str]) -> str:
    """An order-independent md5 aggregate over rows whose text is ``parts`` joined (NULLs marked)."""
    text = "concat_ws('|', " + ", ".join(f"coalesce(CAST({p} AS TEXT), {_NULL})" for p in parts) + ")"
    return f"md5(coalesce(string_agg({text}, chr(10) ORDER BY {text}), ''))"


def digest_expr(dialect: str, parts: list[str]) -> str:
    """An order-independent digest of rows whose text is ``parts`` joined: count and two 64-bit hash sums.

    Unlike ``checksum_expr`` it needs no sort (an ordered string_agg over a million rows took ~25 s),
    so it is one streaming aggregate per table slice (docs/ARCHITECTURE.md, “Quality bars”). A sum, not XOR: repeated rows count."""
    text = "concat_ws('|', " + ", ".join(f"coalesce(CAST({p} AS TEXT), {_NULL})" for p in parts) + ")"
    if dialect == "postgres":
        hi, lo = f"hashtextextended({text}, 0)", f"hashtextextended({text}, 1)"
    else:
        hi, lo = f"md5_number_upper({text})", f"md5_number_lower({text})"
    return f"concat(count(*), ':', coalesce(sum({hi}), 0), ':', coalesce(sum({lo}), 0))"


def row_text_expr(con: Any, table: str, alias: str, schema: str = "public") -> str:
    """Every column of the live table (including ones the workbook does not know) as one text."""
    cols = [c["name"] for c in table_columns(con, table, schema)]
    return "concat_ws('|', " + ", ".join(f"coalesce(CAST({alias}.{q(c)} AS TEXT), {_NULL})" for c in cols) + ")"


@contextmanager
def rolled_back(con: Any) -> Iterator[None]:
    """A transaction that is always rolled back: planning leaves nothing behind."""
    if dialect_of(con) == "postgres":
        with con.transaction(force_rollback=True):
            yield
        return
    con.begin()
    try:
        yield
    finally:
        con.rollback()


def read_only_session(con: Any) -> bool:
    """Whether a PostgreSQL connection opens read-only transactions (a target opened ``read_only``). Read-only."""
    return dialect_of(con) == "postgres" and scalar(con, "SELECT current_setting('default_transaction_read_only')") == "on"
