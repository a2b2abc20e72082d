"""Bulk-load mode for a guarded insert of many rows into one PostgreSQL table (docs/ARCHITECTURE.md, “Quality bars”). Writes.

Maintaining a table's keys row by row costs more than building them once: at realistic scale the
archive import inserts ~1M answers, and the per-row work of the primary key, the unique key and the
foreign-key check took ~17 s of a ~20 s insert, against ~8 s for insert plus rebuild. PostgreSQL's
own advice for loading data ("Populating a Database": remove indexes, remove foreign-key
constraints, re-create them after the load) is followed inside the guard's single transaction:

1. read the table's outgoing foreign keys, its key constraints and its other indexes with their
   exact definitions (``pg_get_constraintdef`` / ``pg_get_indexdef``), so a database the workbook
   did not create gets back precisely what it had, under the same names;
2. drop them, run the insert, re-create indexes and keys (one sort each), then the foreign keys
   (one set-based validation each);
3. any failure (a duplicate key, a dangling reference) raises and the transaction rolls back, so the
   table is exactly as before: DDL is transactional on PostgreSQL, and a process killed here leaves
   nothing behind (tests/test_crash.py kills it with the keys dropped).

What is never dropped: a key another table's foreign key references (dropping it would need CASCADE)
and, when the table is in a publication, its replica-identity index (updates would be refused).

The cost: ``DROP`` takes an ACCESS EXCLUSIVE lock on the table until COMMIT, so readers of that
table wait for the rest of the run (seconds). That is why the mode is used only for a load that is
large both absolutely and relative to the table (``MIN_ROWS``, ``MIN_SHARE``): the yearly archive
import, never the nightly sync's few thousand rows. The plan says which tables it applies to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vespa_lib.errors import ValidationFailed

__all__ = ["MIN_ROWS", "MIN_SHARE", "Definitions", "definitions", "is_bulk", "keys_rebuilt"]

MIN_ROWS = 100_000  # rows inserted into one table by one run
MIN_SHARE = 0.2  # ... and at least this share of the rows the table already holds

_KEYS = """
SELECT c.conname, pg_get_constraintdef(c.oid), c.contype
FROM pg_constraint c
WHERE c.conrelid = to_regclass(%s) AND c.contype IN ('p', 'u', 'f')
  AND NOT (c.contype IN ('p', 'u') AND EXISTS (          -- referenced by another table's FK: kept
      SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid
        AND f.conrelid <> c.conrelid))
  AND NOT (c.contype IN ('p', 'u') AND %s AND EXISTS (   -- replica identity of a published table: kept
      SELECT 1 FROM pg_index x JOIN pg_class r ON r.oid = x.indrelid
      WHERE x.indexrelid = c.conindid
        AND ((r.relreplident = 'd' AND x.indisprimary) OR (r.relreplident = 'i' AND x.indisreplident))))
ORDER BY c.contype DESC, c.conname
"""

_INDEXES = """
SELECT i.relname, pg_get_indexdef(x.indexrelid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = to_regclass(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u', 'x'))
  AND NOT (%s AND x.indisreplident)
ORDER BY i.relname
"""

_PUBLISHED = "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE schemaname = %s AND tablename = %s)"


@dataclass(frozen=True)
class Definitions:
    """What bulk mode drops and re-creates on one table: (name, definition) pairs."""

    table: str
    keys: tuple[tuple[str, str], ...]  # primary key and unique constraints
    foreign_keys: tuple[tuple[str, str], ...]
    indexes: tuple[tuple[str, str], ...]  # plain indexes (CREATE INDEX statements)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in (*self.foreign_keys, *self.keys, *self.indexes)]


def is_bulk(inserts: int, rows_before: int) -> bool:
    """Whether inserting ``inserts`` rows into a table of ``rows_before`` rows uses bulk mode."""
    return inserts >= MIN_ROWS and inserts >= MIN_SHARE * rows_before


def definitions(con: Any, table: str, schema: str = "public") -> Definitions:
    """The keys, foreign keys and indexes bulk mode would drop on ``schema.table``. Read-only."""
    qualified = f"{schema}.{table}"
    published = con.execute(_PUBLISHED, [schema, table]).fetchone()[0]
    keys, fks = [], []
    for name, definition, kind in con.execute(_KEYS, [qualified, published]).fetchall():
        (fks if kind == "f" else keys).append((name, definition))
    indexes = con.execute(_INDEXES, [qualified, published]).fetchall()
    return Definitions(qualified, tuple(keys), tuple(fks), tuple((n, d) for n, d in indexes))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def keys_rebuilt(con: Any, table: str, schema: str = "public") -> Iterator[Definitions]:
    """Inside the caller's transaction: drop ``table``'s foreign keys, keys and indexes, yield, then
    re-create them exactly. A violation found while re-creating raises ``ValidationFailed`` (the
    caller's transaction then rolls back, so nothing is written)."""
    found = definitions(con, table, schema)
    for name, _ in (*found.foreign_keys, *found.keys):
        con.execute(f"ALTER TABLE {found.table} DROP CONSTRAINT {_ident(name)}")
    for name, _ in found.indexes:
        con.execute(f"DROP INDEX {schema}.{_ident(name)}")
    yield found
    import psycopg  # noqa: PLC0415 - PostgreSQL only

    try:
        for name, definition in found.keys:
            con.execute(f"ALTER TABLE {found.table} ADD CONSTRAINT {_ident(name)} {definition}")
        for _, definition in found.indexes:
            con.execute(definition)
        for name, definition in found.foreign_keys:
            con.execute(f"ALTER TABLE {found.table} ADD CONSTRAINT {_ident(name)} {definition}")
    except (psycopg.errors.IntegrityError, psycopg.errors.InvalidForeignKey) as exc:
        raise ValidationFailed(["bulk_keys"], f"Re-creating the keys of {found.table} after the bulk insert "
                               f"failed ({exc.diag.message_primary}), so everything was rolled back and nothing "
                               "was written. Another writer changed the table during the run, or the plan was "
                               "wrong: re-plan and investigate.") from exc
