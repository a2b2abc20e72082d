"""Versioned schema migrations for a database the workbook did not create (docs/ARCHITECTURE.md, “Guarded writes”).

    1  vespa_ops schema and tables (migrations, ledger, archive grants, quarantine, backups)
    2  is_archived markers on every data table and academic_years
    3  replace any single-year unique key on students (F2: unique(email)) by unique(email, academic_year)
    4  archive protection triggers (PostgreSQL only; ``vespa_lib.write.protect``): statement-level
    5  replace the FOR EACH ROW archive triggers of migration 4's first version (~60 µs a row,
       docs/ARCHITECTURE.md, “Quality bars”) by the statement-level ones; pending only on a database that still has them
    6  archive protection version 2 (``protect.INSTALL_SQL``): trigger functions SECURITY DEFINER with a
       fixed search_path (writers without rights on vespa_ops write again), years compared normalised,
       plain writers wait for a guarded run, PUBLIC's rights on vespa_ops revoked; pending until
       installed, and whenever migration 5 is (it re-installs version 1)

Whether a migration is pending is decided from the schema actually present (so a database built by
``schema.create_schema`` needs only what it lacks), never from bookkeeping alone. ``pending`` is
read-only; ``apply_pending`` runs inside the guard's transaction and records each migration with its
checksum and run id in ``vespa_ops.schema_migrations`` in that same transaction (sqlite-utils style).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vespa_lib.write import protect
from vespa_lib.write.schema import (
    PRODUCTION_TABLES,
    WORKBOOK_SCHEMA,
    WORKBOOK_TABLES,
    constraints,
    ddl,
    dialect_of,
    table_columns,
)
from vespa_lib.write.sql import q, run, scalar

__all__ = ["MIGRATIONS", "Migration", "apply_pending", "f2_offending_keys", "pending", "recorded"]

STUDENT_KEY = "students_email_academic_year_key"  # docs/DOMAIN.md, “Production schema” / F2: one row per student per year
ARCHIVED_TABLES = tuple(t.name for t in PRODUCTION_TABLES if any(c.name == "is_archived" for c in t.columns))


@dataclass(frozen=True)
class Migration:
    """One versioned change: ``needed`` inspects the schema (read-only), ``apply`` changes it."""

    version: int
    name: str
    definition: str  # the text the checksum covers
    needed: Callable[[Any], bool]
    apply: Callable[[Any, str], list[str]]
    dialects: tuple[str, ...] = ("duckdb", "postgres")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(f"{self.version}\n{self.name}\n{self.definition}".encode()).hexdigest()

    def describe(self) -> dict:
        return {"version": self.version, "name": self.name, "checksum": self.checksum}


def _execute(con: Any, statements: list[str]) -> list[str]:
    for statement in statements:
        run(con, statement)
    return statements


# --- 1: vespa_ops --------------------------------------------------------------------------------


def _workbook_ddl(dialect: str) -> list[str]:
    return [s for s in ddl(dialect) if f'"{WORKBOOK_SCHEMA}"' in s or f"{WORKBOOK_SCHEMA}." in s]


def _needs_ops(con: Any) -> bool:
    return any(not table_columns(con, t.name, WORKBOOK_SCHEMA) for t in WORKBOOK_TABLES)


# --- 2: is_archived ------------------------------------------------------------------------------


def _missing_archived(con: Any) -> list[str]:
    return [t for t in ARCHIVED_TABLES
            if not any(c["name"] == "is_archived" for c in table_columns(con, t))]


def _add_archived(con: Any, dialect: str) -> list[str]:
    # schema.py: DuckDB cannot add NOT NULL together with a default on a referenced table
    kind = "BOOLEAN NOT NULL DEFAULT false" if dialect == "postgres" else "BOOLEAN DEFAULT false"
    return _execute(con, [f"ALTER TABLE {q(t)} ADD COLUMN is_archived {kind}" for t in _missing_archived(con)])


# --- 3: the F2 key -------------------------------------------------------------------------------


def f2_offending_keys(con: Any) -> list[dict]:
    """Unique keys on students that do not include academic_year (F2). Read-only."""
    return [c for c in constraints(con) if c["schema"] == "public" and c["table"] == "students"
            and c["kind"] == "unique" and "academic_year" not in c["columns"]]


def _has_year_key(con: Any) -> bool:
    return any(c["schema"] == "public" and c["table"] == "students" and c["kind"] == "unique"
               and sorted(c["columns"]) == ["academic_year", "email"] for c in constraints(con))


def _needs_f2(con: Any) -> bool:
    return bool(f2_offending_keys(con)) or not _has_year_key(con)


def _replace_f2(con: Any, dialect: str) -> list[str]:
    todo = []
    for key in f2_offending_keys(con):
        if key["source"] == "index":
            todo.append(f"DROP INDEX {q(key['name'])}")
        else:
            todo.append(f"ALTER TABLE students DROP CONSTRAINT {q(key['name'])}")
    if not _has_year_key(con):
        todo.append(f"ALTER TABLE students ADD CONSTRAINT {STUDENT_KEY} UNIQUE (email, academic_year)"
                    if dialect == "postgres" else
                    f"CREATE UNIQUE INDEX {STUDENT_KEY} ON students (email, academic_year)")
    return _execute(con, todo)


# --- 4: triggers ---------------------------------------------------------------------------------


def _legacy_triggers(con: Any) -> bool:
    """Whether FOR EACH ROW archive triggers (or their function) of migration 4's first version remain."""
    rows = scalar(con, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND starts_with(tgname, 'vespa_archive_') "
                       "AND (tgtype & 1) = 1")  # tgtype bit 0: FOR EACH ROW
    functions = scalar(con, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = ? AND p.proname = ANY(?)",
                       [WORKBOOK_SCHEMA, list(protect.LEGACY_FUNCTION_NAMES)])
    return bool(rows or functions)


def _functions(con: Any) -> dict[str, tuple[str, bool, list[str]]]:
    """vespa_ops functions: name -> (source, security definer, settings). Read-only."""
    rows = run(con, "SELECT p.proname, p.prosrc, p.prosecdef, coalesce(p.proconfig, '{}') FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ?", [WORKBOOK_SCHEMA])
    return {name: (src, definer, list(config)) for name, src, definer, config in rows}


def _triggers_present(con: Any, names: tuple[str, ...]) -> bool:
    return scalar(con, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(?)",
                  [list(names)]) == len(names)


def _needs_triggers(con: Any) -> bool:
    if _legacy_triggers(con):
        return False  # migration 5 replaces them
    if not _triggers_present(con, protect.TRIGGER_NAMES):
        return True
    current = _functions(con)
    # either version counts as installed: migration 6 replaces version 1's bodies
    return any(current.get(name) is None or (current[name][0] not in protect.V1_INSTALL_SQL
                                             and current[name][0] not in protect.INSTALL_SQL)
               for name in protect.FUNCTION_NAMES)


def _install_triggers(con: Any, dialect: str) -> list[str]:
    run(con, protect.V1_INSTALL_SQL)
    return [protect.V1_INSTALL_SQL]


# --- 6: protection version 2 ---------------------------------------------------------------------


def _needs_v2(con: Any) -> bool:
    if _legacy_triggers(con):
        return True  # migration 5 installs version 1; this one follows it
    if not _triggers_present(con, protect.TRIGGER_NAMES + protect.LOCK_TRIGGER_NAMES):
        return True
    current = _functions(con)
    for name in protect.V2_FUNCTION_NAMES:
        src, definer, config = current.get(name, ("", False, []))
        pure = name == "vespa_canonical_year"  # reads nothing: needs no owner's rights
        if not src or src not in protect.INSTALL_SQL or not (definer or pure) or \
                not any(c.startswith("search_path=") for c in config):
            return True
    return bool(scalar(con, "SELECT has_schema_privilege('public', ?, 'USAGE')", [WORKBOOK_SCHEMA]))


def _install_v2(con: Any, dialect: str) -> list[str]:
    run(con, protect.INSTALL_SQL)
    return [protect.INSTALL_SQL]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create vespa_ops schema and tables", "\n".join(_workbook_ddl("postgres")), _needs_ops,
              lambda con, d: _execute(con, _workbook_ddl(d))),
    Migration(2, "add is_archived markers", "ADD COLUMN is_archived BOOLEAN NOT NULL DEFAULT false ON "
              + ", ".join(ARCHIVED_TABLES), lambda con: bool(_missing_archived(con)), _add_archived),
    Migration(3, "replace single-year student key unique(email) by unique(email, academic_year) (F2)",
              f"DROP every unique key on students lacking academic_year; ADD {STUDENT_KEY} UNIQUE (email, academic_year)",
              _needs_f2, _replace_f2),
    Migration(4, "install archive protection triggers", protect.V1_INSTALL_SQL, _needs_triggers, _install_triggers,
              dialects=("postgres",)),
    Migration(5, "replace row-level archive triggers by statement-level triggers (docs/ARCHITECTURE.md, “Quality bars”)",
              "DROP FOR EACH ROW vespa_archive_* triggers and vespa_archive_row_guard();\n" + protect.V1_INSTALL_SQL,
              _legacy_triggers, _install_triggers, dialects=("postgres",)),
    Migration(6, "archive protection v2: SECURITY DEFINER triggers, normalised years, plain writers wait for "
              "a guarded run", protect.INSTALL_SQL, _needs_v2, _install_v2, dialects=("postgres",)),
)


def pending(con: Any) -> list[Migration]:
    """Migrations this database still needs, in order. Read-only."""
    dialect = dialect_of(con)
    return [m for m in MIGRATIONS if dialect in m.dialects and m.needed(con)]


def apply_pending(con: Any, run_id: str) -> list[dict]:
    """Apply every pending migration in the caller's transaction and record each. Writes DDL."""
    dialect = dialect_of(con)
    done = []
    for migration in pending(con):
        migration.apply(con, dialect)
        done.append(migration.describe())
    for m in done:
        run(con, f"DELETE FROM {WORKBOOK_SCHEMA}.schema_migrations WHERE version = ?", [m["version"]])
        run(con, f"INSERT INTO {WORKBOOK_SCHEMA}.schema_migrations (version, name, checksum, run_id) "
                 "VALUES (?, ?, ?, ?)", [m["version"], m["name"], m["checksum"], run_id])
    return done


def recorded(con: Any) -> list[dict]:
    """Rows of vespa_ops.schema_migrations (empty before migration 1). Read-only."""
    if not table_columns(con, "schema_migrations", WORKBOOK_SCHEMA):
        return []
    rows = run(con, f"SELECT version, name, checksum, run_id FROM {WORKBOOK_SCHEMA}.schema_migrations ORDER BY 1")
    return [dict(zip(("version", "name", "checksum", "run_id"), r, strict=True)) for r in rows]
