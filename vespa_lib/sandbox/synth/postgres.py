"""The damaged production DuckDB copied into PostgreSQL, as a database the workbook did not create
(tests, benchmarks): the docs/DOMAIN.md, “Production schema” schema with the legacy F2 key, no workbook additions. Writes
only to the given PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_into_postgres"]


def load_into_postgres(duck_path: Path | str, dsn: str) -> None:
    """Create the production schema in ``dsn`` and COPY every production table from ``duck_path``."""
    import duckdb  # noqa: PLC0415
    import psycopg  # noqa: PLC0415

    from vespa_lib.write import schema  # noqa: PLC0415
    from vespa_lib.write.pgcopy import copy_in  # noqa: PLC0415
    from vespa_lib.write.sql import q  # noqa: PLC0415

    src = duckdb.connect(str(duck_path), read_only=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as pg:
            schema.create_schema(pg, "postgres", workbook=False, legacy_email_key=True)
            for table in schema.PRODUCTION_TABLES:
                cols = [c["name"] for c in schema.table_columns(pg, table.name)]
                rows = src.sql(f"SELECT {', '.join(q(c) for c in cols)} FROM {table.name}")
                copy_in(pg, table.name, cols, rows.to_arrow_reader(50_000))  # streamed: 10x is 11 M answers
            # ids were copied explicitly: move the serial on, as a database that made them itself would have
            pg.execute("SELECT setval(pg_get_serial_sequence('academic_years', 'id'), "
                       "coalesce(max(id), 0) + 1, false) FROM academic_years")
    finally:
        src.close()
