"""One definition of the target tables, rendered as DuckDB and PostgreSQL DDL. DDL only.

``PRODUCTION_TABLES`` are the dashboard's tables (docs/DOMAIN.md, “Production schema”: names, keys and checks kept);
``WORKBOOK_TABLES`` live in the workbook's own schema ``vespa_ops`` (migrations, ledger, pre-image
backups, quarantine, archive grants: docs/ARCHITECTURE.md, “Guarded writes”). Columns and checks the workbook adds to production
tables carry ``workbook_addition=True`` so a migration can add them to a database created by
someone else; ``create_schema(..., workbook=False)`` builds the tables without them (what
production looks like before the workbook's first migration).

Dialect differences and DuckDB 2.0 limits (checked against duckdb 2.0.1):

- Unique keys: PostgreSQL gets named ``CONSTRAINT ... UNIQUE``; DuckDB gets named
  ``CREATE UNIQUE INDEX`` because DuckDB cannot drop a UNIQUE constraint (ALTER TABLE DROP
  CONSTRAINT is not implemented) but can drop an index, and the F2 key must be replaceable.
  ``INSERT ... ON CONFLICT (cols)`` works against such a unique index; with more than one unique key
  on a table (the primary key counts) ``DO UPDATE`` must name its conflict target.
- DuckDB ignores ``CONSTRAINT <name>``: its catalog reports generated names (``students_id_pkey``,
  ``vespa_scores_cycle_check``), so ``constraints()`` names on DuckDB are DuckDB's own.
- DuckDB has no ``ON DELETE CASCADE`` (the parser refuses it): ``vespa_scores.student_id`` is a plain
  foreign key there, so a student with scores cannot be deleted until its scores are.
- DuckDB cannot update an indexed column (a unique-index column or a key) of a row that a foreign
  key references (an ART update is a delete + insert): e.g. changing ``students.email`` of a student
  that has scores fails; update non-key columns, or delete children first.
- DuckDB cannot ``ADD COLUMN ... NOT NULL`` together with ``IF NOT EXISTS`` and cannot ``SET NOT
  NULL`` on a table other tables depend on; a migration adding ``is_archived`` to an existing DuckDB
  table adds it ``DEFAULT false`` without NOT NULL.
- ``serial`` does not exist on DuckDB: ``academic_years.id`` uses a sequence there.
- jsonb/``jsonb_array_length`` on PostgreSQL; JSON/``json_array_length`` on DuckDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb

from vespa_lib.errors import SchemaError

__all__ = [
    "DIALECTS", "PRODUCTION_TABLES", "WORKBOOK_SCHEMA", "WORKBOOK_TABLES",
    "Check", "Column", "ForeignKey", "Table",
    "all_tables", "constraints", "create_schema", "ddl", "dialect_of", "indexes", "table_columns", "transaction",
]

DIALECTS = ("duckdb", "postgres")
WORKBOOK_SCHEMA = "vespa_ops"
ELEMENTS = ("vision", "effort", "systems", "practice", "attitude", "overall", "ERI")  # docs/DOMAIN.md, “Production schema”

Sql = str | dict[str, str]  # one SQL text for both dialects, or one per dialect

UUID_DEFAULT: Sql = {"postgres": "gen_random_uuid()", "duckdb": "uuid()"}
NOW = "current_timestamp"
_TYPES = {  # logical type -> (postgres, duckdb)
    "uuid": ("UUID", "UUID"), "text": ("TEXT", "TEXT"), "integer": ("INTEGER", "INTEGER"),
    "bigint": ("BIGINT", "BIGINT"), "boolean": ("BOOLEAN", "BOOLEAN"), "date": ("DATE", "DATE"),
    "timestamptz": ("TIMESTAMPTZ", "TIMESTAMPTZ"), "double": ("DOUBLE PRECISION", "DOUBLE"),
    "json": ("JSONB", "JSON"), "serial": ("SERIAL", "INTEGER"),
}


@dataclass(frozen=True)
class Column:
    """A column; ``type`` is a logical type (keys of ``_TYPES``); ``check`` becomes ``<table>_<name>_check``."""

    name: str
    type: str
    nullable: bool = True
    default: Sql | None = None
    check: Sql | None = None
    workbook_addition: bool = False


@dataclass(frozen=True)
class Check:
    """A named table check, SQL per dialect; ``workbook_addition`` as for columns."""

    sql: Sql
    workbook_addition: bool = False


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str | None = None  # PostgreSQL only: DuckDB has no cascading actions
    ref_schema: str | None = None


@dataclass(frozen=True)
class Table:
    """A table. ``schema`` None means the connection's default schema (public / main)."""

    name: str
    schema: str | None
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    uniques: dict[str, tuple[str, ...]] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    foreign_keys: dict[str, ForeignKey] = field(default_factory=dict)
    indexes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # non-unique, for lookups

    @property
    def qualified(self) -> str:
        return f"{_q(self.schema)}.{_q(self.name)}" if self.schema else _q(self.name)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def all_checks(self, workbook: bool = True) -> dict[str, Check]:
        """Column checks (named ``<table>_<column>_check``, PostgreSQL's convention) and table checks."""
        found = {f"{self.name}_{c.name}_check": Check(c.check, c.workbook_addition)
                 for c in self.columns if c.check is not None}
        found.update(self.checks)
        return {k: v for k, v in found.items() if workbook or not v.workbook_addition}


# --- the definition ------------------------------------------------------------------------------

_YEAR_RE = r"^\d{4}/\d{4}$"  # docs/DOMAIN.md, “Academic years”: canonical YYYY/YYYY, both years in full
YEAR_CHECK: Sql = {"postgres": f"academic_year ~ '{_YEAR_RE}'",
                   "duckdb": f"regexp_full_match(academic_year, '{_YEAR_RE}')"}
_ELEMENT_CHECK = "element IN (" + ", ".join(f"'{e}'" for e in ELEMENTS) + ")"
_DIST_CHECK: Sql = {"postgres": "jsonb_array_length(distribution) = 10",  # docs/DOMAIN.md, “Production schema”: scores 1..10
                    "duckdb": "json_array_length(distribution) = 10"}


def _id() -> Column:
    return Column("id", "uuid", nullable=False, default=UUID_DEFAULT)


def _ts(name: str) -> Column:
    return Column(name, "timestamptz", default=NOW)


def _archived() -> Column:
    # docs/ARCHITECTURE.md, “Guarded writes”: rows of an archived year carry is_archived = true
    return Column("is_archived", "boolean", nullable=False, default="false", workbook_addition=True)


def _year_check(table: str, workbook_addition: bool = True) -> dict[str, Check]:
    return {f"{table}_academic_year_check": Check(YEAR_CHECK, workbook_addition)}


def _stats_columns() -> tuple[Column, ...]:
    return (Column("cycle", "integer"), Column("academic_year", "text", nullable=False),
            Column("element", "text"), Column("mean", "double"), Column("std_dev", "double"),
            Column("count", "integer"), Column("percentile_25", "double"),
            Column("percentile_50", "double"), Column("percentile_75", "double"),
            Column("distribution", "json"))


def _stats_checks(table: str) -> dict[str, Check]:
    return {f"{table}_element_check": Check(_ELEMENT_CHECK), f"{table}_distribution_check": Check(_DIST_CHECK),
            f"{table}_cycle_check": Check("cycle BETWEEN 1 AND 3", workbook_addition=True),
            **_year_check(table)}


_SCORE = "BETWEEN 0 AND 10"

PRODUCTION_TABLES: tuple[Table, ...] = (
    Table("establishments", None, (
        _id(), Column("knack_id", "text", nullable=False), Column("name", "text", nullable=False),
        Column("is_australian", "boolean", default="false"), Column("use_standard_year", "boolean"),
        Column("status", "text"), Column("portal_type", "text"), _ts("created_at"), _ts("updated_at"),
    ), ("id",), uniques={"establishments_knack_id_key": ("knack_id",)}),
    Table("students", None, (
        _id(), Column("knack_id", "text", nullable=False),  # object_10 id; NOT unique (re-enrolments)
        Column("email", "text", nullable=False), Column("name", "text"), Column("establishment_id", "uuid"),
        Column("year_group", "text"), Column("course", "text"), Column("faculty", "text"),
        Column("group", "text"), Column("gender", "text"),
        Column("academic_year", "text", nullable=False, check=YEAR_CHECK),
        _ts("created_at"), _ts("updated_at"), _archived(),
    ), ("id",), uniques={"students_email_academic_year_key": ("email", "academic_year")},  # F2
        foreign_keys={"students_establishment_id_fkey": ForeignKey(("establishment_id",), "establishments", ("id",))}),
    Table("vespa_scores", None, (
        _id(), Column("student_id", "uuid", nullable=False),
        Column("cycle", "integer", nullable=False, check="cycle BETWEEN 1 AND 3"),
        *(Column(n, "integer", check=f"{n} {_SCORE}")
          for n in ("vision", "effort", "systems", "practice", "attitude", "overall")),
        Column("completion_date", "date"), Column("academic_year", "text", nullable=False),
        _ts("created_at"), _archived(),
    ), ("id",), uniques={"vespa_scores_student_id_cycle_academic_year_key": ("student_id", "cycle", "academic_year")},
        checks=_year_check("vespa_scores"),
        foreign_keys={"vespa_scores_student_id_fkey": ForeignKey(("student_id",), "students", ("id",), "CASCADE")}),
    Table("question_responses", None, (
        _id(), Column("student_id", "uuid", nullable=False),
        Column("cycle", "integer", nullable=False, check="cycle BETWEEN 1 AND 3"),
        Column("question_id", "text", nullable=False),
        Column("response_value", "integer", check="response_value BETWEEN 1 AND 5"),
        Column("academic_year", "text", nullable=False), _ts("created_at"), _archived(),
    ), ("id",),  # 63-byte identifier limit on PostgreSQL: the key name is shortened on purpose
        uniques={"question_responses_student_cycle_year_question_key":
                 ("student_id", "cycle", "academic_year", "question_id")},
        checks=_year_check("question_responses"),
        foreign_keys={"question_responses_student_id_fkey": ForeignKey(("student_id",), "students", ("id",))}),
    Table("school_statistics", None, (
        _id(), Column("establishment_id", "uuid"), *_stats_columns(), _ts("calculated_at"), _archived(),
    ), ("id",), uniques={"school_statistics_establishment_cycle_year_element_key":
                         ("establishment_id", "cycle", "academic_year", "element")},
        checks=_stats_checks("school_statistics")),
    Table("national_statistics", None, (
        _id(), *_stats_columns(),
        *(Column(n, "double") for n in ("eri_score", "min_value", "max_value", "confidence_interval_lower",
                                         "confidence_interval_upper", "skewness")),
        _ts("calculated_at"), _archived(),
    ), ("id",), uniques={"national_statistics_cycle_academic_year_element_key": ("cycle", "academic_year", "element")},
        checks=_stats_checks("national_statistics")),
    Table("academic_years", None, (
        Column("id", "serial", nullable=False), Column("academic_year", "text", nullable=False),
        Column("start_date", "date"), Column("end_date", "date"), Column("is_current", "boolean", default="false"),
        _archived(),
    ), ("id",), uniques={"academic_years_academic_year_key": ("academic_year",)},
        checks=_year_check("academic_years")),
)

LEGACY_EMAIL_KEY = {"students_email_key": ("email",)}  # F2: the damaged production key
RUN_OPS = ("insert", "update", "delete")


def _backup_table(table: Table) -> Table:
    """Pre-image backup of ``table`` (docs/ARCHITECTURE.md, “Guarded writes”): its columns, loose, plus the run and operation."""
    loose = tuple(Column(c.name, "integer" if c.type == "serial" else c.type) for c in table.columns)
    name = f"backup_{table.name}"
    return Table(name, WORKBOOK_SCHEMA, (
        *loose, Column("_run_id", "text", nullable=False),
        Column("_op", "text", nullable=False, check="_op IN ('insert', 'update', 'delete')"),
        Column("_backed_up_at", "timestamptz", nullable=False, default=NOW),
        Column("_extra", "json"),  # production columns the workbook does not know (docs/DOMAIN.md, “Production schema”)
    ), indexes={f"{name}_run_id_idx": ("_run_id",)})


WORKBOOK_TABLES: tuple[Table, ...] = (
    Table("schema_migrations", WORKBOOK_SCHEMA, (
        Column("version", "integer", nullable=False), Column("name", "text", nullable=False),
        Column("checksum", "text", nullable=False), Column("applied_at", "timestamptz", nullable=False, default=NOW),
        Column("run_id", "text"),
    ), ("version",)),
    Table("ledger", WORKBOOK_SCHEMA, (
        Column("run_id", "text", nullable=False), Column("runbook", "text", nullable=False),
        Column("actor", "text", nullable=False), Column("status", "text", nullable=False),
        Column("started_at", "timestamptz", nullable=False, default=NOW), Column("finished_at", "timestamptz"),
        Column("target", "text"), Column("parameters", "json"), Column("fingerprint", "text"),
        Column("counts", "json"), Column("years", "json"), Column("error", "text"),
    ), ("run_id",)),
    Table("archive_grants", WORKBOOK_SCHEMA, (  # which run may write which archived year (docs/ARCHITECTURE.md, “Guarded writes”)
        Column("run_id", "text", nullable=False), Column("academic_year", "text", nullable=False),
        Column("granted_by", "text"), Column("granted_at", "timestamptz", nullable=False, default=NOW),
    ), ("run_id", "academic_year"), checks=_year_check("archive_grants", workbook_addition=False),
        foreign_keys={"archive_grants_run_id_fkey": ForeignKey(("run_id",), "ledger", ("run_id",),
                                                                ref_schema=WORKBOOK_SCHEMA)}),
    Table("quarantine", WORKBOOK_SCHEMA, (
        _id(), Column("run_id", "text", nullable=False), Column("source_file", "text"),
        Column("line_number", "bigint"), Column("record_id", "text"), Column("object", "text"),
        Column("reason", "text", nullable=False), Column("detail", "text"), Column("masked_email", "text"),
        _ts("created_at"),
    ), ("id",), indexes={"quarantine_run_id_idx": ("run_id",)}),
    *(_backup_table(t) for t in PRODUCTION_TABLES),
)


def all_tables(*, workbook: bool = True, legacy_email_key: bool = False) -> list[Table]:
    """The tables ``create_schema`` builds, with the chosen options applied. Read-only."""
    tables = []
    for table in PRODUCTION_TABLES:
        if not workbook:
            table = replace(table, columns=tuple(c for c in table.columns if not c.workbook_addition),
                            checks={k: v for k, v in table.checks.items() if not v.workbook_addition})
        if legacy_email_key and table.name == "students":
            table = replace(table, uniques=dict(LEGACY_EMAIL_KEY))
        tables.append(table)
    return tables + (list(WORKBOOK_TABLES) if workbook else [])


# --- rendering -----------------------------------------------------------------------------------


def _q(identifier: str) -> str:
    """Quote an identifier (``group``, ``count`` are keywords); identifiers come from this module."""
    return '"' + identifier.replace('"', '""') + '"'


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(map(_q, names))


def _sql(value: Sql, dialect: str) -> str:
    return value[dialect] if isinstance(value, dict) else value


def _column_sql(table: Table, col: Column, dialect: str) -> str:
    kind = _TYPES[col.type][0 if dialect == "postgres" else 1]
    parts = [_q(col.name), kind]
    if col.type == "serial" and dialect == "duckdb":
        parts.append(f"DEFAULT nextval('{_sequence(table)}')")
    elif col.default is not None:
        parts.append(f"DEFAULT {_sql(col.default, dialect)}")
    if not col.nullable:
        parts.append("NOT NULL")
    return " ".join(parts)


def _sequence(table: Table) -> str:
    return f"{table.schema + '.' if table.schema else ''}{table.name}_id_seq"


def _table_statements(table: Table, dialect: str) -> list[str]:
    """CREATE statements for one table (sequence, table, unique indexes, indexes)."""
    lines = [_column_sql(table, c, dialect) for c in table.columns]
    if table.primary_key:
        lines.append(f"CONSTRAINT {_q(table.name + '_pkey')} PRIMARY KEY ({_cols(table.primary_key)})")
    if dialect == "postgres":
        lines += [f"CONSTRAINT {_q(n)} UNIQUE ({_cols(c)})" for n, c in table.uniques.items()]
    lines += [f"CONSTRAINT {_q(n)} CHECK ({_sql(c.sql, dialect)})" for n, c in table.all_checks().items()]
    for name, fk in table.foreign_keys.items():
        ref = f"{_q(fk.ref_schema)}.{_q(fk.ref_table)}" if fk.ref_schema else _q(fk.ref_table)
        action = f" ON DELETE {fk.on_delete}" if fk.on_delete and dialect == "postgres" else ""
        lines.append(f"CONSTRAINT {_q(name)} FOREIGN KEY ({_cols(fk.columns)}) "
                     f"REFERENCES {ref} ({_cols(fk.ref_columns)}){action}")
    statements = []
    if dialect == "duckdb" and any(c.type == "serial" for c in table.columns):
        statements.append(f"CREATE SEQUENCE IF NOT EXISTS {_sequence(table)}")
    body = ",\n    ".join(lines)
    statements.append(f"CREATE TABLE IF NOT EXISTS {table.qualified} (\n    {body}\n)")
    if dialect == "duckdb":
        statements += [f"CREATE UNIQUE INDEX IF NOT EXISTS {_q(n)} ON {table.qualified} ({_cols(c)})"
                       for n, c in table.uniques.items()]
    statements += [f"CREATE INDEX IF NOT EXISTS {_q(n)} ON {table.qualified} ({_cols(c)})"
                   for n, c in table.indexes.items()]
    return statements


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise SchemaError(f"Unknown SQL dialect {dialect!r}: the schema renders only {', '.join(DIALECTS)}.")


def ddl(dialect: str, *, workbook: bool = True, legacy_email_key: bool = False) -> list[str]:
    """The DDL statements for ``dialect`` in execution order (pure rendering, no database)."""
    _check_dialect(dialect)
    tables = all_tables(workbook=workbook, legacy_email_key=legacy_email_key)
    statements = [f"CREATE SCHEMA IF NOT EXISTS {_q(WORKBOOK_SCHEMA)}"] if workbook else []
    for table in tables:
        statements += _table_statements(table, dialect)
    return statements


# --- connections ---------------------------------------------------------------------------------


def dialect_of(con: Any) -> str:
    """``"duckdb"`` for a DuckDB connection, ``"postgres"`` for a psycopg connection."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return "duckdb"
    import psycopg

    if isinstance(con, psycopg.Connection):
        return "postgres"
    raise SchemaError(f"Cannot tell the SQL dialect of a {type(con).__name__}: "
                      "pass a duckdb or psycopg connection.")


def _default_schema(dialect: str) -> str:
    return "main" if dialect == "duckdb" else "public"


def _existing_tables(con: Any, dialect: str) -> set[tuple[str, str]]:
    """(schema, table) pairs present in the connection's current database."""
    rows = _fetch(con, dialect, "SELECT table_schema, table_name FROM information_schema.tables "
                  "WHERE table_catalog = current_database()")
    return {(s, t) for s, t in rows}


def _fetch(con: Any, dialect: str, query: str, params: tuple = ()) -> list[tuple]:
    """Run a read query; ``?`` placeholders (translated to ``%s`` for psycopg)."""
    if dialect == "postgres":
        query = query.replace("?", "%s")
    return con.execute(query, params or None).fetchall()


def create_schema(con: Any, dialect: str | None = None, *, workbook: bool = True,
                  legacy_email_key: bool = False) -> list[str]:
    """Create the missing tables in one transaction; returns the statements executed (writes DDL).

    Whole tables at a time: a table that already exists is left exactly as it is (changing an
    existing table is a migration's job), so running it twice executes nothing the second time.
    On PostgreSQL the work commits, or joins the caller's transaction if one is open.
    """
    dialect = dialect or dialect_of(con)
    _check_dialect(dialect)
    default = _default_schema(dialect)
    with transaction(con, dialect):
        existing = _existing_tables(con, dialect)
        todo: list[str] = []
        if workbook and not any(s == WORKBOOK_SCHEMA for s, _ in existing):
            todo.append(f"CREATE SCHEMA IF NOT EXISTS {_q(WORKBOOK_SCHEMA)}")
        for table in all_tables(workbook=workbook, legacy_email_key=legacy_email_key):
            if (table.schema or default, table.name) not in existing:
                todo += _table_statements(table, dialect)
        for statement in todo:
            con.execute(statement)
    return todo


@contextmanager
def transaction(con: Any, dialect: str | None = None) -> Iterator[None]:
    """One all-or-nothing transaction on either engine: commit on success, roll back and re-raise on
    any error (both engines have transactional DDL). The single implementation the guard uses too."""
    if (dialect or dialect_of(con)) == "postgres":
        with con.transaction():
            yield
        return
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


# --- introspection (read-only) -------------------------------------------------------------------
# Both dialects report the default schema as "public" so callers can compare results.

_PG_KINDS = {"p": "primary_key", "u": "unique", "c": "check", "f": "foreign_key"}
_DUCK_KINDS = {"PRIMARY KEY": "primary_key", "UNIQUE": "unique", "CHECK": "check", "FOREIGN KEY": "foreign_key"}
_PG_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"

_PG_CONSTRAINTS = f"""
SELECT n.nspname, c.relname, k.conname, k.contype::text,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY u.ord),
       pg_get_constraintdef(k.oid), 'constraint'
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype IN ('p', 'u', 'c', 'f') AND n.nspname NOT IN {_PG_SYSTEM}
UNION ALL
SELECT n.nspname, t.relname, i.relname, 'u', {{cols}}, pg_get_indexdef(i.oid), 'index'
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE x.indisunique AND n.nspname NOT IN {_PG_SYSTEM}
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x'))
ORDER BY 1, 2, 3
"""
_PG_INDEX_COLS = """ARRAY(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.attnum ORDER BY u.ord)"""

_PG_INDEXES = f"""
SELECT n.nspname, t.relname, i.relname, x.indisunique, x.indisprimary, {_PG_INDEX_COLS}, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname NOT IN {_PG_SYSTEM} ORDER BY 1, 2, 3
"""

_DUCK_CONSTRAINTS = """
SELECT schema_name, table_name, constraint_name, constraint_type, constraint_column_names, constraint_text
FROM duckdb_constraints() WHERE database_name = current_database()
  AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'CHECK', 'FOREIGN KEY')
ORDER BY 1, 2, 3
"""
_DUCK_INDEXES = """
SELECT schema_name, table_name, index_name, is_unique, is_primary, expressions, sql
FROM duckdb_indexes() WHERE database_name = current_database() ORDER BY 1, 2, 3
"""


def _public(schema: str) -> str:
    return "public" if schema == "main" else schema


def _duck_expressions(text: str | None) -> list[str]:
    """Column names from duckdb_indexes().expressions, e.g. ``['"group"', y]``."""
    inner = (text or "").strip().removeprefix("[").removesuffix("]")
    return [part.strip().strip("'").strip('"') for part in inner.split(",") if part.strip()]


def constraints(con: Any) -> list[dict]:
    """Keys and checks present: dicts of schema, table, name, kind, columns, definition, source.

    ``kind`` is primary_key | unique | check | foreign_key; a unique index that backs no constraint
    (how DuckDB carries this schema's unique keys) is reported as kind ``unique`` with source
    ``index``. NOT NULL is not reported (see ``table_columns``). Read-only.
    """
    keys = ("schema", "table", "name", "kind", "columns", "definition", "source")
    if dialect_of(con) == "postgres":
        rows = _fetch(con, "postgres", _PG_CONSTRAINTS.format(cols=_PG_INDEX_COLS))
        return [dict(zip(keys, (s, t, n, _PG_KINDS[k], list(c), d, src), strict=True))
                for s, t, n, k, c, d, src in rows]
    found = [dict(zip(keys, (_public(s), t, n, _DUCK_KINDS[k], list(c), d, "constraint"), strict=True))
             for s, t, n, k, c, d in _fetch(con, "duckdb", _DUCK_CONSTRAINTS)]
    found += [dict(zip(keys, (i["schema"], i["table"], i["name"], "unique", i["columns"], i["definition"],
                              "index"), strict=True))
              for i in indexes(con) if i["unique"] and not i["primary"]]
    return found


def indexes(con: Any) -> list[dict]:
    """Indexes present: dicts of schema, table, name, unique, primary, columns, definition.

    DuckDB lists only explicitly created indexes here (its key constraints are in ``constraints``).
    Read-only.
    """
    keys = ("schema", "table", "name", "unique", "primary", "columns", "definition")
    if dialect_of(con) == "postgres":
        return [dict(zip(keys, (s, t, n, u, p, list(c), d), strict=True))
                for s, t, n, u, p, c, d in _fetch(con, "postgres", _PG_INDEXES)]
    return [dict(zip(keys, (_public(s), t, n, u, p, _duck_expressions(e), d), strict=True))
            for s, t, n, u, p, e, d in _fetch(con, "duckdb", _DUCK_INDEXES)]


def table_columns(con: Any, table: str, schema: str = "public") -> list[dict]:
    """Columns of ``schema.table`` in order: dicts of name, type, nullable, default. Read-only.

    ``public`` means the default schema on both dialects; an unknown table gives an empty list.
    """
    dialect = dialect_of(con)
    if dialect == "duckdb" and schema == "public":
        schema = "main"
    rows = _fetch(con, dialect, "SELECT column_name, data_type, is_nullable, column_default "
                  "FROM information_schema.columns WHERE table_catalog = current_database() "
                  "AND table_schema = ? AND table_name = ? ORDER BY ordinal_position", (schema, table))
    return [{"name": n, "type": t, "nullable": nl == "YES", "default": d} for n, t, nl, d in rows]
