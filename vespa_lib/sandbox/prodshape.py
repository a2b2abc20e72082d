"""A production-shaped PostgreSQL database: the dashboard's tables exactly as production holds them,
filled with the damaged synthetic history, for tests, ``make demo-pg`` and the year rehearsal.

What makes it production-shaped (and not the workbook's own DDL of ``vespa_lib.write.schema``):

- the DDL of ``prodshape.sql``: statistics as ``decimal(4,2)``, the columns production has and the
  workbook does not know (``vespa_scores.student_email``, ``school_statistics.average``,
  ``national_statistics.additional_stats``, ``establishments.trust_id``), ``academic_years.id serial``,
  PostgreSQL's own constraint names, row level security with Supabase-style policies;
- the student key in either variant: the legacy ``unique(email)`` (F2) or ``unique(email, academic_year)``;
- the database is created by a superuser (the workbook did not create it), and every table is owned
  by a role that is **not** a superuser (as Supabase's ``postgres``: NOSUPERUSER, owns the public
  tables, may create schemas in the database). The runbooks log in as that role;
- the data: the damaged 2024/2025 history and the current year 2025/2026 with its statistics from a
  synthetic "damaged production" DuckDB (``vespa_lib.sandbox.synth``), then the plain SQL the old nightly
  scripts ran on top (student_email, average, additional_stats), never the workbook's guard.

    owner_dsn = build(superuser_dsn, "prod_copy", "data/demo/production.duckdb")

Writes only the database it creates (and the cluster-wide roles it needs, created when missing).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["OWNER_ROLE", "SUPABASE_ROLES", "TABLES", "build", "clone", "owner_dsn"]

OWNER_ROLE = "vespa_prod_owner"
SUPABASE_ROLES = ("anon", "authenticated", "service_role")
TABLES = ("establishments", "students", "vespa_scores", "question_responses", "school_statistics",
          "national_statistics", "academic_years")
DDL_FILE = Path(__file__).with_name("prodshape.sql")
CURRENT = "2025/2026"

# What the old nightly scripts wrote on top of the data, as plain SQL (no guard, no ledger).
OLD_SYSTEM_SQL = (
    "UPDATE vespa_scores v SET student_email = s.email FROM students s WHERE s.id = v.student_id",
    "UPDATE school_statistics SET average = mean",
    "UPDATE national_statistics SET additional_stats = jsonb_build_object('source', 'nightly', 'n', count) "
    f"WHERE academic_year = '{CURRENT}'",
    "UPDATE establishments SET trust_id = '00000000-0000-4000-8000-00000000beef' "
    "WHERE id IN (SELECT id FROM establishments ORDER BY knack_id LIMIT 2)",
)


def _ident(name: str):
    from psycopg import sql  # noqa: PLC0415

    return sql.Identifier(name)


def _ensure_roles(admin, owner_role: str, owner_password: str | None) -> None:
    """The owner role (NOSUPERUSER, may log in) and Supabase's API roles, created when missing."""
    from psycopg import errors, sql  # noqa: PLC0415

    wanted = [(owner_role, sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"))]
    wanted += [(r, sql.SQL("NOLOGIN NOSUPERUSER")) for r in SUPABASE_ROLES]
    for role, options in wanted:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            continue
        try:
            admin.execute(sql.SQL("CREATE ROLE {} ").format(_ident(role)) + options)
        except errors.DuplicateObject:
            pass  # another build created it in between: roles are cluster-wide
    if owner_password is not None:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(_ident(owner_role), sql.Literal(owner_password)))


def owner_dsn(server_dsn: str, dbname: str, owner_role: str = OWNER_ROLE, owner_password: str | None = None) -> str:
    """The DSN of ``dbname`` on the server of ``server_dsn``, logging in as the owner role."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    params = conninfo_to_dict(server_dsn)
    params.update(dbname=dbname, user=owner_role)
    params.pop("password", None)
    if owner_password is not None:
        params["password"] = owner_password
    return make_conninfo(**params)


def _create_database(server_dsn: str, dbname: str, owner_role: str, owner_password: str | None,
                     template: str | None = None) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    with psycopg.connect(server_dsn, autocommit=True) as admin:
        _ensure_roles(admin, owner_role, owner_password)
        create = sql.SQL("CREATE DATABASE {}").format(_ident(dbname))
        if template:
            create += sql.SQL(" TEMPLATE {}").format(_ident(template))
        admin.execute(create)
        admin.execute(sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
            _ident(dbname), _ident(owner_role)))


def _load(pg, duck_path: Path) -> None:
    """COPY every production table from the damaged DuckDB (columns both have; extras stay NULL)."""
    import duckdb  # noqa: PLC0415

    from vespa_lib.write.pgcopy import copy_in  # noqa: PLC0415
    from vespa_lib.write.sql import q  # noqa: PLC0415

    src = duckdb.connect(str(duck_path), read_only=True)
    try:
        for table in TABLES:
            have = {r[0] for r in src.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = ?", [table]).fetchall()}
            cols = [r[0] for r in pg.execute("SELECT column_name FROM information_schema.columns WHERE "
                                             "table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                                             [table]).fetchall() if r[0] in have]
            rows = src.sql(f"SELECT {', '.join(q(c) for c in cols)} FROM {table}")
            copy_in(pg, table, cols, rows.to_arrow_reader(50_000))
    finally:
        src.close()
    pg.execute("SELECT setval(pg_get_serial_sequence('academic_years', 'id'), coalesce(max(id), 0) + 1, false) "
               "FROM academic_years")


def build(server_dsn: str, dbname: str, source_duckdb: str | Path, *, legacy_email_key: bool = True,
          owner_role: str = OWNER_ROLE, owner_password: str | None = None) -> str:
    """Create database ``dbname`` as the superuser of ``server_dsn``, production-shaped and filled from
    ``source_duckdb`` (a ``vespa_lib.sandbox.synth`` damaged production); return the owner role's DSN.

    ``legacy_email_key`` chooses the student key: ``unique(email)`` (F2) or ``unique(email, academic_year)``.
    ``owner_password`` is set on the owner role when given (servers that do not trust local logins)."""
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    from vespa_lib.sandbox.localpg import dsn_with_dbname  # noqa: PLC0415

    _create_database(server_dsn, dbname, owner_role, owner_password)
    key = "UNIQUE (email)" if legacy_email_key else "UNIQUE (email, academic_year)"
    with psycopg.connect(dsn_with_dbname(server_dsn, dbname), autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(_ident(owner_role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role"))
        with admin.transaction():
            admin.execute(sql.SQL("SET LOCAL ROLE {}").format(_ident(owner_role)))  # the owner owns every table
            admin.execute(DDL_FILE.read_text(encoding="utf-8"))
            admin.execute(f"ALTER TABLE students ADD {key}")
            _load(admin, Path(source_duckdb))
            for statement in OLD_SYSTEM_SQL:
                admin.execute(statement)
        admin.execute("ANALYZE")
    return owner_dsn(server_dsn, dbname, owner_role, owner_password)


def clone(server_dsn: str, template: str, dbname: str, *, owner_role: str = OWNER_ROLE,
          owner_password: str | None = None) -> str:
    """A copy of the production-shaped database ``template`` as ``dbname`` (``CREATE DATABASE ...
    TEMPLATE``: nobody may be connected to ``template``); returns the owner role's DSN."""
    _create_database(server_dsn, dbname, owner_role, owner_password, template=template)
    return owner_dsn(server_dsn, dbname, owner_role, owner_password)
