"""Reading Supabase tables over PostgREST with supabase-py, completely and provably (F3).

supabase-py builds the requests (headers, ``select``, ``order``, ``range``, filters) and parses the
answers (JSON rows, the exact total from ``Content-Range``). What this module adds:

- completeness: PostgREST caps every response at the server's ``max-rows`` (1,000 on Supabase)
  whatever range was asked for, so one GET silently returns a prefix (the audit that reported "999
  students" when 35,830 existed). ``read_all`` pages with ``select(..., count="exact")`` ordered by
  the table's unique key, advancing by the rows actually received, and checks the rows read against
  the exact total of every page, and the key values for uniqueness;
- errors as ``TargetError`` naming the table, the HTTP status and the server's message (supabase-py's
  ``APIError`` carries the message but not the status), the key replaced by ``<key>``;
- retries on 429/5xx and transport errors with bounded backoff (supabase-py's own retry covers only
  503/520 with fixed sleeps, so it is switched off).

Every operation here is read-only. The API key is sent in headers only; it never appears in an
exception, a repr or a log line (messages name the environment variables to check instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from postgrest.exceptions import APIError, generate_default_error_message
from supabase import ClientOptions, SupabaseException, create_client

from vespa_lib.errors import TargetError
from vespa_lib.sources.retry import retry_delay

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TABLE_LIST = "the table list (GET /rest/v1/)"


class RestReader:
    """Read-only PostgREST reader for one Supabase project, on a supabase-py client.

    ``transport`` is an ``httpx`` transport (tests pass ``httpx.MockTransport``); ``env_names`` are
    the names of the environment variables the URL and key came from, used in error messages;
    ``page_size`` is the rows asked per request (the server may send fewer); ``sleep`` is
    injectable so retry tests do not wait.
    """

    def __init__(self, url: str, key: str, *, transport: httpx.BaseTransport | None = None, page_size: int = 1000,
                 env_names: tuple[str, str] | None = None, max_attempts: int = 5, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 60.0):
        if page_size < 1:
            raise TargetError(f"page_size must be at least 1, got {page_size}.")
        self.host = urlsplit(url).hostname or "(no host)"
        self.page_size, self.env_names = page_size, env_names or ("the URL variable", "the key variable")
        self.max_attempts, self.backoff, self._sleep, self._key = max_attempts, backoff, sleep, key
        self._last: httpx.Response | None = None  # the latest HTTP answer: its status for errors and retries
        self._http = httpx.Client(transport=transport, timeout=timeout, event_hooks={"response": [self._seen]})
        try:
            self._client = create_client(url, key, ClientOptions(httpx_client=self._http, postgrest_client_retry=False))
        except SupabaseException as exc:
            self._http.close()
            raise TargetError(f"Cannot use the Supabase project URL in {self.env_names[0]}: {exc.message}. "
                              "Set it to the project's https://<ref>.supabase.co address.") from None

    def __repr__(self) -> str:
        return f"RestReader(host={self.host!r}, key=<hidden>)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def _seen(self, response: httpx.Response) -> None:
        self._last = response

    def _execute(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` with bounded exponential backoff on 429/5xx and transport errors."""
        last = ""
        for attempt in range(self.max_attempts):
            self._last = None
            try:
                return call()
            except APIError as exc:
                status = self._last.status_code if self._last is not None else 0
                if status not in RETRY_STATUSES:
                    raise self._error(what, status, exc) from None
                last = f"HTTP {status}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            if attempt + 1 < self.max_attempts:
                self._sleep(retry_delay(attempt, self._last, self.backoff))
        raise TargetError(
            f"Supabase REST at {self.host} did not answer reading {_name(what)} after {self.max_attempts} "
            f"attempts (last: {last}). The server is overloaded or unreachable; retry later."
        )

    def _error(self, what: str, status: int, exc: APIError) -> TargetError:
        said = "; ".join(str(x) for x in (exc.message, exc.details, exc.hint) if x) or "no message"
        said = said.replace(self._key, "<key>") if self._key else said
        url_var, key_var = self.env_names
        if status in (401, 403):
            return TargetError(
                f"Supabase REST at {self.host} refused the key reading {_name(what)} (HTTP {status}: {said}). "
                f"Check that {key_var} holds a valid, unexpired key for the project named by {url_var} and "
                "that the key's role may read the table (Row Level Security)."
            )
        if status == 404:
            return TargetError(f"Table {what} is not exposed by Supabase REST at {self.host} (HTTP 404: {said}). "
                               "Check the table name and that the schema is exposed.")
        if status == 416:
            return TargetError(f"Supabase REST at {self.host} found no rows where the next page of {what} should "
                               f"start (HTTP 416: {said}): the table changed while reading. Re-run when no sync "
                               "is writing.")
        return TargetError(f"Supabase REST at {self.host} answered HTTP {status} reading {_name(what)}: {said}")

    # -- reads -------------------------------------------------------------------------------

    def count(self, table: str, filters: dict | None = None) -> int:
        """Exact row count (``count="exact"``), with equality filters (None = IS NULL). Read-only.

        A GET for zero rows rather than a HEAD: a HEAD answer has no body, so a refusal would lose
        the server's message."""
        def call():
            query = self._client.table(table).select("*", count="exact")
            for column, value in (filters or {}).items():
                query = query.is_(column, None) if value is None else query.eq(column, value)
            return query.limit(0).execute()

        return self._total(table, self._execute(table, call).count)

    def _total(self, table: str, total: int | None) -> int:
        if total is None:
            raise TargetError(
                f"Supabase REST at {self.host} gave no exact count for {table} (Content-Range total missing "
                "or '*'). The server ignored Prefer: count=exact; counts over REST cannot be trusted."
            )
        return total

    def openapi(self) -> dict:
        """The PostgREST OpenAPI description (tables, views and their columns). Read-only."""
        def call():
            response = self._http.get(f"{self._client.rest_url}/", headers=self._client.options.headers)
            if response.is_error:
                raise APIError(_body(response))
            return response.json()

        return self._execute(TABLE_LIST, call)

    def tables(self) -> list[str]:
        """Names of the tables and views PostgREST exposes, sorted. Read-only."""
        spec = self.openapi()
        names = set(spec.get("definitions", {}))
        names |= {p.strip("/") for p in spec.get("paths", {}) if p.strip("/") and "/" not in p.strip("/")}
        return sorted(n for n in names if not n.startswith("rpc"))

    def read_all(self, table: str, order_by: str, columns: list[str] | None = None) -> list[dict]:
        """Every row of ``table``, ordered by the unique key ``order_by`` (one column or several,
        comma-separated), read in pages with ``range`` and checked: the rows read must equal the exact
        total of every page and their key values must be unique, else ``TargetError``. Read-only."""
        keys = [k.strip() for k in order_by.split(",") if k.strip()]
        if not keys:
            raise TargetError(f"Reading {table} over REST needs an ordered key (order_by), got none.")
        extra = [k for k in keys if columns is not None and k not in columns]
        select = "*" if columns is None else ",".join([*columns, *extra])
        rows: list[dict] = []
        totals: list[int] = []
        while True:
            start = len(rows)
            page = self._execute(table, lambda: self._page(table, select, keys, start))  # noqa: B023 - called at once
            totals.append(self._total(table, page.count))
            rows.extend(page.data)
            if not page.data or len(rows) >= totals[-1]:
                break
        _check_complete(table, order_by, rows, totals, keys)
        return [{k: v for k, v in row.items() if k not in extra} for row in rows] if extra else rows

    def _page(self, table: str, select: str, keys: list[str], start: int):
        query = self._client.table(table).select(select, count="exact")
        for key in keys:
            query = query.order(key)
        return query.range(start, start + self.page_size - 1).execute()


def _check_complete(table: str, order_by: str, rows: list[dict], totals: list[int], keys: list[str]) -> None:
    """Raise ``TargetError`` unless the rows read equal every page's exact total and the key is unique."""
    if len(set(totals)) > 1 or len(rows) != totals[-1]:
        raise TargetError(
            f"Read {len(rows):,} rows of {table} over REST but the exact count went "
            f"{' -> '.join(f'{t:,}' for t in dict.fromkeys(totals))} while reading. The table changed while "
            "reading; re-run when no sync is writing."
        )
    values = [tuple(row.get(k) for k in keys) for row in rows]
    if any(v is None for value in values for v in value):
        raise TargetError(f"Key column(s) {order_by} of {table} are missing or NULL; order by a non-null unique key.")
    if len(set(values)) != len(values):
        raise TargetError(f"'{order_by}' is not a unique key of {table} ({len(values) - len(set(values)):,} repeated "
                          "values): pages ordered by it can repeat or skip rows. Order by the primary key.")


def _body(response: httpx.Response) -> dict:
    """PostgREST's JSON error body, or a default one built from the status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else generate_default_error_message(response)


def _name(what: str) -> str:
    return what if what == TABLE_LIST else f"table {what}"
