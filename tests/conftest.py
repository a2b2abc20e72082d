"""Shared fixtures. Kept small and generic; add feature-specific fixtures in their test files.

PostgreSQL (SPEC.md §3): tests use the server named by ``VESPA_TEST_DATABASE_URL`` if set, else a
throw-away ``LocalPostgres``; without server binaries they are skipped with the install command.

    pg_server     session: a server DSN (maintenance database) that may create databases
    pg_dsn        function: DSN of a fresh empty database, dropped after the test
    duckdb_path   function: path of a not-yet-created DuckDB file in tmp_path
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vespa_lib.localpg import (
    HOW_TO_INSTALL,
    LocalPostgres,
    create_database_on,
    drop_database_on,
    dsn_with_dbname,
    find_binaries,
)

TEST_DATABASE_ENV = "VESPA_TEST_DATABASE_URL"


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a PostgreSQL server for the whole session (external, or a throw-away cluster)."""
    external = os.environ.get(TEST_DATABASE_ENV)
    if external:
        yield external
        return
    if find_binaries() is None:
        pytest.skip(
            f"PostgreSQL server binaries not found and {TEST_DATABASE_ENV} is not set; "
            f"install them with: {HOW_TO_INSTALL}"
        )
    with LocalPostgres() as server:
        yield server.dsn()


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """DSN of a fresh, empty database on ``pg_server``; dropped after the test."""
    name = f"vespa_test_{uuid.uuid4().hex[:12]}"
    create_database_on(pg_server, name)
    try:
        yield dsn_with_dbname(pg_server, name)
    finally:
        drop_database_on(pg_server, name)


# --- DuckDB ------------------------------------------------------------------------------------


@pytest.fixture
def duckdb_path(tmp_path: Path) -> Path:
    """Path of a DuckDB file that does not exist yet, in the test's own tmp_path."""
    return tmp_path / "t.duckdb"
