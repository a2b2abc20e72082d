"""Shared fixtures. Kept small and generic; add feature-specific fixtures in their test files.

PostgreSQL (docs/ARCHITECTURE.md, “Setting up and testing”): tests use the server named by ``VESPA_TEST_DATABASE_URL`` if set, else a
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

from vespa_lib.sandbox.localpg import (
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


# --- production-shaped PostgreSQL (vespa_lib.sandbox.prodshape) ----------------------------------------
#
#   prodshape_world      session: a synthetic world (snapshot, damaged production.duckdb, fresh export)
#   prodshape_template   session: factory legacy_email_key -> name of a built template database
#   prod_pg_legacy       function: ProdDB copy of the template with the legacy key unique(email)
#   prod_pg_yearkey      function: ProdDB copy with unique(email, academic_year)


class ProdDB:
    """A function-scoped production-shaped database: the owner role's DSN (what runbooks log in
    with), the superuser's DSN of the same database (for catalog checks), and the world it came from."""

    def __init__(self, owner_dsn: str, admin_dsn: str, dbname: str, legacy_email_key: bool, world: Path):
        self.owner_dsn, self.admin_dsn, self.dbname = owner_dsn, admin_dsn, dbname
        self.legacy_email_key, self.world = legacy_email_key, world


@pytest.fixture(scope="session")
def prodshape_world(tmp_path_factory) -> Path:
    """synth.generate(300 students, seed 2025) and the fresh export as of 2026-03-15 (read-only for tests)."""
    from datetime import date

    from vespa_lib.sandbox import synth

    out = tmp_path_factory.mktemp("prodshape_world")
    synth.generate(out, students=300, seed=2025)
    synth.generate_fresh_export(out, seed=2025, as_of=date(2026, 3, 15))
    return out


@pytest.fixture(scope="session")
def prodshape_template(pg_server, prodshape_world):
    """Factory: the template database of one key variant, built once per session."""
    from vespa_lib.sandbox import prodshape

    built: dict[bool, str] = {}

    def template(legacy_email_key: bool) -> str:
        if legacy_email_key not in built:
            name = f"vespa_prodshape_{'legacy' if legacy_email_key else 'yearkey'}_{uuid.uuid4().hex[:8]}"
            prodshape.build(pg_server, name, prodshape_world / "production.duckdb", legacy_email_key=legacy_email_key)
            built[legacy_email_key] = name
        return built[legacy_email_key]

    yield template
    for name in built.values():
        drop_database_on(pg_server, name)


def _prod_copy(pg_server: str, template: str, legacy: bool, world: Path) -> Iterator[ProdDB]:
    from vespa_lib.sandbox import prodshape

    name = f"vespa_prod_{uuid.uuid4().hex[:12]}"
    owner = prodshape.clone(pg_server, template, name)
    try:
        yield ProdDB(owner, dsn_with_dbname(pg_server, name), name, legacy, world)
    finally:
        drop_database_on(pg_server, name)


@pytest.fixture
def prod_pg_legacy(pg_server, prodshape_template, prodshape_world) -> Iterator[ProdDB]:
    """A fresh production-shaped database with the legacy student key unique(email) (F2)."""
    yield from _prod_copy(pg_server, prodshape_template(True), True, prodshape_world)


@pytest.fixture
def prod_pg_yearkey(pg_server, prodshape_template, prodshape_world) -> Iterator[ProdDB]:
    """A fresh production-shaped database with the student key unique(email, academic_year)."""
    yield from _prod_copy(pg_server, prodshape_template(False), False, prodshape_world)
