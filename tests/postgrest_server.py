"""A loopback HTTP server that answers like PostgREST (Supabase's REST API) over a real PostgreSQL.

Every read-only runbook that accepts ``supabase:URL_VAR,KEY_VAR`` can be run end to end against it:
set URL_VAR to ``server.url`` and KEY_VAR to ``server.key``. What it reproduces of PostgREST:

- ``GET``/``HEAD /rest/v1/<table>?select=a,b&order=a.asc,b.desc&limit=&offset=&<col>=<op>.<value>``
  (ops ``eq neq gt gte lt lte is``), translated into parameterised SQL on the ``public`` schema. A
  top-level filter value is taken literally: double quotes are NOT stripped (PostgREST strips them
  only inside ``in.(...)`` lists and logical trees).
- the ``max-rows`` cap (1,000 on Supabase) whatever ``limit`` or ``Range`` asked for;
- ``Range: a-b`` headers, ``Prefer: count=exact``, ``Content-Range: a-b/total`` (``*`` when the total
  was not asked for, ``*/total`` for an empty page) and PostgREST's status rule: 200, 206 when the
  page is a strict part of a known total, 416 (PGRST103) when the offset is past the total;
- 401 with PostgREST's JSON error body for an expired (``PGRST303`` "JWT expired") or wrong key;
  404 (``PGRST205``) for an unknown table, 400 (``42703``) for an unknown column;
- ``GET /rest/v1/``: an OpenAPI description listing tables (``definitions``) and their columns;
- rows serialised by PostgreSQL's own ``json_agg``, as PostgREST does;
- ``fail_next``: statuses to answer before serving normally (503/429... for retry tests);
  ``before_get``: called before each table GET (a sync writing while a reader pages).

The database session is read-only (``default_transaction_read_only``). Use as a context manager::

    with PostgRESTServer(pg_dsn) as server:
        monkeypatch.setenv("SB_URL", server.url); monkeypatch.setenv("SB_KEY", server.key)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg

KEY = "sb-loopback-service-KEY-7d41c0"
EXPIRED_KEY = "sb-loopback-expired-KEY-0a93e2"
_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_RANGE = re.compile(r"^\s*(\d+)-(\d*)\s*$")
_RESERVED = {"select", "order", "limit", "offset"}


class PostgRESTError(Exception):
    """An HTTP error answered with PostgREST's JSON body (code, message, details, hint)."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}


class PostgRESTServer:
    """PostgREST's read behaviour on ``127.0.0.1:<free port>`` over the database ``dsn``."""

    def __init__(self, dsn: str, *, key: str = KEY, expired_keys: tuple[str, ...] = (EXPIRED_KEY,),
                 max_rows: int = 1000):
        self.dsn, self.key, self.expired_keys, self.max_rows = dsn, key, expired_keys, max_rows
        self.fail_next: list[int] = []
        self.before_get = None  # callback(number of table GETs so far): e.g. a sync writing mid-read
        self.requests: list[dict] = []  # method, path, query (never the key)
        self._lock = threading.Lock()
        self._con: psycopg.Connection | None = None
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> PostgRESTServer:
        self._con = psycopg.connect(self.dsn, autocommit=True)
        self._con.execute("SET default_transaction_read_only = on")
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)
        self._con.close()

    # -- answering ------------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: str, headers) -> tuple[int, dict, bytes]:
        """(status, headers, body) for one request."""
        self.requests.append({"method": method, "path": path, "query": query})
        if self.fail_next:
            status = self.fail_next.pop(0)
            return self._error(PostgRESTError(status, str(status), "Service Unavailable (injected)"))
        try:
            self._authenticate(headers)
            table = unquote(path.removeprefix("/rest/v1").strip("/"))
            if table and method == "GET" and self.before_get:
                self.before_get(sum(1 for q in self.requests if q["method"] == "GET" and q["path"] == path))
            with self._lock:
                if not table:
                    return 200, {"Content-Type": "application/openapi+json"}, json.dumps(self._openapi()).encode()
                return self._select(table, parse_qsl(query, keep_blank_values=True), headers)
        except PostgRESTError as exc:
            return self._error(exc)

    @staticmethod
    def _error(exc: PostgRESTError) -> tuple[int, dict, bytes]:
        return exc.status, {"Content-Type": "application/json"}, json.dumps(exc.body).encode()

    def _authenticate(self, headers) -> None:
        apikey, bearer = headers.get("apikey"), (headers.get("Authorization") or "").removeprefix("Bearer ")
        if apikey in self.expired_keys or bearer in self.expired_keys:
            raise PostgRESTError(401, "PGRST303", "JWT expired")
        if apikey != self.key or bearer != self.key:
            raise PostgRESTError(401, "PGRST301", "No suitable key or wrong key type",
                                 hint="Double check your Supabase `anon` or `service_role` API key.")

    def _columns(self) -> dict[str, list[str]]:
        rows = self._con.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE c.table_schema = 'public' ORDER BY c.table_name, c.ordinal_position"
        ).fetchall()
        out: dict[str, list[str]] = {}
        for table, column in rows:
            out.setdefault(table, []).append(column)
        return out

    def _openapi(self) -> dict:
        columns = self._columns()
        return {"swagger": "2.0", "paths": {"/": {}, **{f"/{t}": {} for t in columns}},
                "definitions": {t: {"properties": {c: {} for c in cols}} for t, cols in columns.items()}}

    def _select(self, table: str, params: list[tuple[str, str]], headers) -> tuple[int, dict, bytes]:
        columns = self._columns().get(table)
        if columns is None:
            raise PostgRESTError(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
        known = lambda c: c if c in columns else _unknown_column(table, c)  # noqa: E731
        query = dict((k, v) for k, v in params if k in _RESERVED)
        select = query.get("select", "*")
        cols = "*" if select == "*" else ", ".join(_ident(known(c.strip())) for c in select.split(","))
        where, values = self._where(table, [(k, v) for k, v in params if k not in _RESERVED], known)
        order = ", ".join(_order_term(term, known) for term in query["order"].split(",")) if query.get("order") else ""
        start, stop = _window(query, headers.get("Range"))
        limit = self.max_rows if stop is None else min(stop - start, self.max_rows)
        base = f"FROM public.{_ident(table)}" + (f" WHERE {where}" if where else "")
        exact = "count=exact" in (headers.get("Prefer") or "")
        total = self._con.execute(f"SELECT count(*) {base}", values).fetchone()[0] if exact else None
        if total is not None and start > total:
            raise PostgRESTError(416, "PGRST103", "Requested range not satisfiable",
                                 details=f"An offset of {start} was requested, but there are only {total} rows.")
        sql = (f"SELECT coalesce(json_agg(t), '[]'::json)::text FROM (SELECT {cols} {base}"
               + (f" ORDER BY {order}" if order else "") + " LIMIT %s OFFSET %s) t")
        body = self._con.execute(sql, [*values, max(limit, 0), start]).fetchone()[0]
        n = len(json.loads(body))
        span = f"{start}-{start + n - 1}" if n else "*"
        status = 206 if total is not None and n < total and not (n == 0 and total == 0) else 200
        out_headers = {"Content-Type": "application/json; charset=utf-8",
                       "Content-Range": f"{span}/{'*' if total is None else total}"}
        return status, out_headers, body.encode()

    @staticmethod
    def _where(table: str, filters: list[tuple[str, str]], known) -> tuple[str, list]:
        clauses, values = [], []
        for column, expr in filters:
            op, _, operand = expr.partition(".")
            if op == "is":
                literal = {"null": "NULL", "true": "TRUE", "false": "FALSE"}.get(operand.lower())
                if literal is None:
                    raise PostgRESTError(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 4)')
                clauses.append(f"{_ident(known(column))} IS {literal}")
            elif op in _OPS:
                clauses.append(f"{_ident(known(column))} {_OPS[op]} %s")
                values.append(operand)  # literally, quotes and all, as PostgREST does
            else:
                raise PostgRESTError(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 1)')
        return " AND ".join(clauses), values


def _unknown_column(table: str, column: str):
    raise PostgRESTError(400, "42703", f"column {table}.{column} does not exist")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _order_term(term: str, known) -> str:
    column, *modifiers = term.strip().split(".")
    direction = "DESC" if "desc" in modifiers else "ASC"
    nulls = " NULLS FIRST" if "nullsfirst" in modifiers else " NULLS LAST" if "nullslast" in modifiers else ""
    return f"{_ident(known(column))} {direction}{nulls}"


def _window(query: dict, range_header: str | None) -> tuple[int, int | None]:
    """[start, stop) from offset/limit and the Range header (their intersection)."""
    start = int(query.get("offset") or 0)
    stop = start + int(query["limit"]) if query.get("limit") else None
    match = _RANGE.match(range_header or "")
    if match:
        first, last = int(match.group(1)), match.group(2)
        start = max(start, first)
        if last:
            stop = int(last) + 1 if stop is None else min(stop, int(last) + 1)
    return start, stop


class _Handler(BaseHTTPRequestHandler):
    server_state: PostgRESTServer
    protocol_version = "HTTP/1.1"

    def _serve(self, with_body: bool) -> None:
        parts = urlsplit(self.path)
        status, headers, body = self.server_state.answer(self.command, parts.path, parts.query, self.headers)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if with_body else 0))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(False)

    def log_message(self, *args) -> None:  # quiet: requests are kept in server_state.requests
        pass
