"""Targets: where data is read (docs/ARCHITECTURE.md, “Targets”). Parsing the ``target`` parameter and opening it.

    duckdb:PATH                       an embedded DuckDB file (rehearsals, the demo)
    postgres:ENV_VAR                  the NAME of an environment variable holding a PostgreSQL DSN
    supabase:URL_VAR,KEY_VAR          the NAMES of variables holding the project URL and an API key

Secrets never appear in params: they come from the process environment or from a ``.env`` file
(read with ``dotenv_values``, never loaded into ``os.environ``); the environment wins. Everything
shown (``describe()``, reprs, error messages) has credentials removed, and ``secret_values`` hands
the evidence scrubber the strings it must remove.

Every target offers the same read interface (``tables``, ``count``, ``read_table``, ``sql``); all
of it is read-only, and targets open read-only by default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import duckdb
import pyarrow as pa

from vespa_lib.errors import ParameterError, TargetError
from vespa_lib.sources import duckwork

__all__ = [
    "TargetSpec", "parse_target", "redact_dsn", "resolve_env", "secret_values", "open_target",
    "Target", "DuckDBTarget", "PostgresTarget", "RestTarget", "to_duckdb",
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMS = "duckdb:PATH, postgres:ENV_VAR_NAME or supabase:URL_VAR_NAME,KEY_VAR_NAME"
# libpq key=value form: password='quoted \' value' or password=bare; also sslpassword.
_KV_PASSWORD = re.compile(r"""\b((?:ssl)?password)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)\s*""", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&])((?:ssl)?password)=[^&#]*&?", re.IGNORECASE)


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``target`` parameter. Holds a path or variable NAMES, never a secret value."""

    kind: str  # "duckdb" | "postgres" | "supabase"
    path: str | None = None
    dsn_var: str | None = None
    url_var: str | None = None
    key_var: str | None = None
    dotenv_path: str | None = None

    def env_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.dsn_var, self.url_var, self.key_var) if n)

    def describe(self) -> str:
        """A one-line description safe for evidence: no password, no key."""
        if self.kind == "duckdb":
            return f"duckdb:{self.path}"
        values = resolve_env(self.env_names(), self.dotenv_path)
        if self.kind == "postgres":
            dsn = values.get(self.dsn_var)
            return f"postgres:{self.dsn_var} ({_dsn_summary(dsn) if dsn else 'not set'})"
        url = values.get(self.url_var)
        host = (urlsplit(url).hostname or "no host") if url else "not set"
        return f"supabase:{self.url_var},{self.key_var} (host {host}, key not shown)"


def parse_target(spec: str, *, dotenv_path: str | os.PathLike | None = None) -> TargetSpec:
    """Parse ``duckdb:PATH``, ``postgres:VAR`` or ``supabase:URL_VAR,KEY_VAR``.

    Anything else, notably a literal DSN or URL, raises ``ParameterError`` whose message never
    repeats the input (it may be a secret).
    """
    dotenv = str(dotenv_path) if dotenv_path is not None else None
    kind, sep, rest = str(spec).partition(":")
    if sep and kind == "duckdb" and rest.strip():
        return TargetSpec("duckdb", path=rest.strip(), dotenv_path=dotenv)
    if sep and kind == "postgres" and _ENV_NAME.match(rest):
        return TargetSpec("postgres", dsn_var=rest, dotenv_path=dotenv)
    names = rest.split(",")
    if sep and kind == "supabase" and len(names) == 2 and all(_ENV_NAME.match(n) for n in names):
        return TargetSpec("supabase", url_var=names[0], key_var=names[1], dotenv_path=dotenv)
    # docs/ARCHITECTURE.md, “Targets”: secrets never appear in params, so the input is not echoed back.
    raise ParameterError(
        f"The target parameter is not one of {_FORMS}. A DSN, URL or key written into params is "
        "refused: put it in an environment variable (or .env) and name the variable instead, "
        "e.g. postgres:VESPA_DATABASE_URL."
    )


def resolve_env(names, dotenv_path: str | os.PathLike | None = None) -> dict[str, str]:
    """Values of the named variables: the process environment first, then ``.env``.

    ``.env`` is ``dotenv_path`` or ``./.env``; it is read, never loaded into ``os.environ``.
    Names set nowhere are absent from the result. Read-only.
    """
    from dotenv import dotenv_values

    path = Path(dotenv_path) if dotenv_path is not None else Path.cwd() / ".env"
    file_values = dotenv_values(path) if path.is_file() else {}
    found = {}
    for name in names:
        value = os.environ.get(name) or file_values.get(name)
        if value:
            found[name] = value
    return found


def _require(spec: TargetSpec, name: str, what: str) -> str:
    value = resolve_env([name], spec.dotenv_path).get(name)
    if not value:
        where = spec.dotenv_path or str(Path.cwd() / ".env")
        raise TargetError(
            f"Environment variable {name} is not set (neither in the environment nor in {where}). "
            f"Set it to {what}, in the environment or in .env."
        )
    return value


def redact_dsn(dsn: str) -> str:
    """The DSN with its password removed (URL form ``scheme://user:pw@host`` and ``key=value`` form)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return _KV_PASSWORD.sub("", dsn).strip()
    # The LAST '@' ends the user info: unencoded '@', ':' or '/' in passwords stay inside it.
    at = rest.rfind("@")
    if at >= 0:
        user = rest[:at].partition(":")[0]
        rest = f"{user}@{rest[at + 1:]}" if user else rest[at + 1:]
    rest = _QUERY_PASSWORD.sub(r"\1", rest).rstrip("?&")
    return f"{scheme}://{rest}"


def _dsn_parts(dsn: str) -> dict[str, str]:
    """host/port/dbname/user/password of a DSN via libpq's own parser; {} if it cannot parse."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:  # noqa: BLE001 -- any parse failure just means "not shown"
        return {}


def _dsn_summary(dsn: str) -> str:
    # Parse the REDACTED form: libpq ends the user info at the first '@', so an unencoded '@' in a
    # password would otherwise surface the rest of the password as part of the host.
    parts = _dsn_parts(redact_dsn(dsn))
    if not parts:
        return "unparseable DSN, not shown"
    where = f"{parts.get('host', 'localhost')}:{parts.get('port', '5432')}/{parts.get('dbname', '?')}"
    return f"{where}, user {parts.get('user', '?')}, password removed"


def secret_values(spec: TargetSpec) -> list[str]:
    """The secret strings this target uses (full DSN, its password in raw and decoded form,
    Supabase key), for the evidence scrubber. Unset variables contribute nothing. Read-only."""
    values = resolve_env(spec.env_names(), spec.dotenv_path)
    secrets: list[str] = []
    if spec.kind == "postgres" and spec.dsn_var in values:
        dsn = values[spec.dsn_var]
        secrets += [dsn, _dsn_parts(dsn).get("password", "")]
        scheme, sep, rest = dsn.partition("://")
        if sep and "@" in rest:
            raw = rest[: rest.rfind("@")].partition(":")[2]
            secrets += [raw, unquote(raw)]
        secrets += [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    if spec.kind == "supabase" and spec.key_var in values:
        secrets.append(values[spec.key_var])
    return list(dict.fromkeys(s for s in secrets if s))


def open_target(spec: TargetSpec | str, *, read_only: bool = True, transport=None) -> Target:
    """Open a target for reading. ``transport`` is an httpx transport for Supabase (tests)."""
    spec = parse_target(spec) if isinstance(spec, str) else spec
    if spec.kind == "duckdb":
        return DuckDBTarget(spec, read_only=read_only)
    if spec.kind == "postgres":
        return PostgresTarget(spec, _require(spec, spec.dsn_var, "a PostgreSQL DSN"), read_only=read_only)
    if not read_only:
        raise ParameterError(
            "Supabase REST targets are read-only: bulk work goes over PostgreSQL (docs/ARCHITECTURE.md, “Targets”). "
            "Name a postgres:ENV_VAR target for writes."
        )
    url = _require(spec, spec.url_var, "the Supabase project URL")
    key = _require(spec, spec.key_var, "a Supabase API key")
    return RestTarget(spec, url, key, transport=transport)


# -- the three kinds ------------------------------------------------------------------------------


def _ident(name: str) -> str:
    """A double-quoted SQL identifier (DuckDB and PostgreSQL); values are always parameters."""
    return '"' + str(name).replace('"', '""') + '"'


def _order_list(order_by) -> list[str]:
    if order_by is None:
        return []
    return [order_by] if isinstance(order_by, str) else list(order_by)


def _select_sql(table: str, columns, order_by) -> str:
    cols = ", ".join(_ident(c) for c in columns) if columns else "*"
    order = ", ".join(_ident(c) for c in _order_list(order_by))
    return f"SELECT {cols} FROM {_ident(table)}" + (f" ORDER BY {order}" if order else "")


def _where_sql(where: dict | None, placeholder: str) -> tuple[str, list]:
    clauses, params = [], []
    for column, value in (where or {}).items():
        if value is None:
            clauses.append(f"{_ident(column)} IS NULL")
        else:
            clauses.append(f"{_ident(column)} = {placeholder}")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class Target:
    """The uniform read interface. Subclasses: ``DuckDBTarget``, ``PostgresTarget``, ``RestTarget``."""

    kind = ""

    def __init__(self, spec: TargetSpec):
        self.spec = spec

    def describe(self) -> str:
        return self.spec.describe()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    __str__ = describe

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - every kind overrides
        raise NotImplementedError


class DuckDBTarget(Target):
    """A DuckDB file, opened ``read_only`` by default (DuckDB then refuses every write)."""

    kind = "duckdb"

    def __init__(self, spec: TargetSpec, *, read_only: bool = True):
        super().__init__(spec)
        if read_only and not Path(spec.path).is_file():
            raise TargetError(f"DuckDB file {spec.path} does not exist. Check the target path (run `make demo` to create the demo database).")
        try:
            self.con = duckdb.connect(spec.path, read_only=read_only)
        except duckdb.Error as exc:
            raise TargetError(f"Cannot open DuckDB file {spec.path}: {exc}. Close other writers or check the path.") from None

    def tables(self) -> list[str]:
        """Base tables of the main schema, sorted. Read-only."""
        q = ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
             "AND table_type = 'BASE TABLE' AND table_catalog = current_database() ORDER BY 1")
        return [r[0] for r in self.con.execute(q).fetchall()]

    def count(self, table: str, where: dict | None = None) -> int:
        """Exact ``count(*)``, optionally with equality filters (None = IS NULL). Read-only."""
        clause, params = _where_sql(where, "?")
        return self.con.execute(f"SELECT count(*) FROM {_ident(table)}{clause}", params).fetchall()[0][0]

    def read_table(self, table: str, columns=None, order_by=None) -> pa.Table:
        return self.con.sql(_select_sql(table, columns, order_by)).to_arrow_table()

    def sql(self, query: str, params=None):
        return self.con.execute(query, params or []).df()

    def close(self) -> None:
        self.con.close()


class PostgresTarget(Target):
    """PostgreSQL over psycopg, autocommit; ``read_only`` sets ``default_transaction_read_only``."""

    kind = "postgres"

    def __init__(self, spec: TargetSpec, dsn: str, *, read_only: bool = True):
        import psycopg
        from psycopg.types.string import TextLoader

        super().__init__(spec)
        try:
            self.con = psycopg.connect(dsn, autocommit=True, application_name="vespa-ops", connect_timeout=15)
        except psycopg.Error as exc:
            message = str(exc)
            for secret in secret_values(spec):
                message = message.replace(secret, "<secret>")
            raise TargetError(
                f"Cannot connect to {spec.describe()}: {message.strip()}. Check {spec.dsn_var} "
                "(use the session-mode connection string, port 5432)."
            ) from None
        self.con.adapters.register_loader("uuid", TextLoader)  # uuids as text, like REST and DuckDB copies
        if read_only:
            self.con.execute("SET default_transaction_read_only = on")

    def tables(self) -> list[str]:
        """Base tables of the public schema, sorted. Read-only."""
        q = ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
             "AND table_type = 'BASE TABLE' ORDER BY 1")
        return [r[0] for r in self.con.execute(q).fetchall()]

    def count(self, table: str, where: dict | None = None) -> int:
        clause, params = _where_sql(where, "%s")
        return self.con.execute(f"SELECT count(*) FROM public.{_ident(table)}{clause}", params).fetchone()[0]

    def read_table(self, table: str, columns=None, order_by=None) -> pa.Table:
        cur = self.con.execute(_select_sql(table, columns, order_by).replace(" FROM ", " FROM public.", 1))
        names = [d.name for d in cur.description]
        rows = cur.fetchall()
        return pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)})

    def sql(self, query: str, params=None):
        import pandas as pd

        cur = self.con.execute(query, params)
        names = [d.name for d in cur.description] if cur.description else []
        return pd.DataFrame(cur.fetchall() if names else [], columns=names)

    def close(self) -> None:
        self.con.close()


class RestTarget(Target):
    """Supabase over PostgREST (``vespa_lib.sources.rest``): read-only, paged, count-checked (F3)."""

    kind = "supabase"

    def __init__(self, spec: TargetSpec, url: str, key: str, *, transport=None):
        from vespa_lib.sources.rest import RestReader

        super().__init__(spec)
        self.reader = RestReader(url, key, transport=transport, env_names=(spec.url_var, spec.key_var))

    def tables(self) -> list[str]:
        return self.reader.tables()

    def count(self, table: str, where: dict | None = None) -> int:
        return self.reader.count(table, where)

    def read_table(self, table: str, columns=None, order_by=None) -> pa.Table:
        """All rows, paged on ``order_by`` (default ``id``, the primary key of every table)."""
        order = ",".join(_order_list(order_by)) or "id"
        rows = self.reader.read_all(table, order, columns)
        if not rows and columns:
            return pa.table({c: pa.array([], pa.null()) for c in columns})
        return pa.Table.from_pylist(rows)

    @property
    def con(self):
        """There is no database connection over REST: runbooks that need one get a clear error."""
        raise TargetError(
            f"{self.describe()} is a Supabase REST target: it exposes tables, not a database connection, "
            "and this step needs one (SQL, catalogs or staged tables). Name a postgres:ENV_VAR target "
            "holding the session-mode connection string; the audit and csv_profile runbooks also read "
            "over REST."
        )

    def sql(self, query: str, params=None):
        raise TargetError(
            "SQL is not available over REST (PostgREST exposes tables, not statements). Copy the "
            "tables into DuckDB with to_duckdb(target, tables) and run the query there, or use a "
            "postgres:ENV_VAR target."
        )

    def close(self) -> None:
        self.reader.close()


def to_duckdb(target: Target, tables) -> duckdb.DuckDBPyConnection:
    """Copy ``tables`` into a new in-memory DuckDB, each cross-checked against the target's exact
    count, so the same SQL runs on any target. Read-only on the target."""
    con = duckwork.connect()
    for table in tables:
        data = target.read_table(table)
        expected = target.count(table)
        con.register("_incoming", data)
        con.sql(f"CREATE TABLE {_ident(table)} AS SELECT * FROM _incoming")
        con.unregister("_incoming")
        copied = con.sql(f"SELECT count(*) FROM {_ident(table)}").fetchall()[0][0]
        if not data.num_rows == copied == expected:
            raise TargetError(
                f"Copy of {table} from {target.describe()} has {copied:,} rows but the target counts "
                f"{expected:,}. The table changed during the copy; re-run when no sync is writing."
            )
    return con
