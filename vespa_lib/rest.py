"""Reading Supabase tables over PostgREST, completely and provably (SPEC.md §4, DOMAIN.md F3).

PostgREST caps every response at the server's ``max-rows`` (1,000 on Supabase) whatever range was
asked for, so a single GET silently returns a prefix of the table: the audit that reported "999
students" when 35,830 existed (F3). ``RestReader`` therefore

- counts with ``Prefer: count=exact`` and parses the total from ``Content-Range``;
- reads with an ORDERED key: keyset pagination (``key=gt.<last>``) on a single key column, ordered
  offset paging when several columns are given, until a page comes back empty (a short page proves
  nothing: the server may cap below ``page_size``);
- cross-checks the rows read against the exact count taken before and after the read, and raises
  ``TargetError`` on any difference (the table changed while reading, or the key is not unique).

Every operation here is read-only. The API key is sent in headers only; it never appears in an
exception, a repr or a log line (messages name the environment variables to check instead).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from .errors import TargetError
from .retry import retry_delay

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^\s*(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$")
# PostgREST reserves these characters in filter values; such values must be double-quoted.
_RESERVED = re.compile(r'[,.:()"\\\s]')


def parse_content_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    """Parse ``Content-Range`` (``0-999/35830``, ``*/35830``, ``0-999/*``) into (start, end, total).

    ``None`` stands for ``*``. A missing or malformed header raises ``TargetError``.
    """
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        raise TargetError(
            f"PostgREST returned an unreadable Content-Range header ({header!r}); the exact count "
            "cannot be trusted. Check that the URL points at a Supabase/PostgREST endpoint."
        )
    start, end, total = match.groups()
    as_int = lambda text: None if text in (None, "*") else int(text)  # noqa: E731
    return as_int(start), as_int(end), as_int(total)


def filter_value(value: object) -> str:
    """Render one Python value as a PostgREST ``eq``/``gt`` operand (quoted when reserved chars occur)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _RESERVED.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def filter_params(filters: dict | None) -> list[tuple[str, str]]:
    """Equality filters as PostgREST query parameters; ``None`` means ``IS NULL``."""
    params = []
    for column, value in (filters or {}).items():
        if value is None:
            params.append((column, "is.null"))
        else:
            params.append((column, "eq." + filter_value(value)))
    return params


class RestReader:
    """Read-only PostgREST client for one Supabase project.

    ``transport`` is an ``httpx`` transport (tests pass ``httpx.MockTransport``); ``env_names`` are
    the names of the environment variables the URL and key came from, used in error messages;
    ``sleep`` is injectable so retry tests do not wait.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        page_size: int = 1000,
        env_names: tuple[str, str] | None = None,
        max_attempts: int = 5,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 60.0,
    ):
        if page_size < 1:
            raise TargetError(f"page_size must be at least 1, got {page_size}.")
        self.host = urlsplit(url).hostname or "(no host)"
        self.page_size = page_size
        self.env_names = env_names
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._sleep = sleep
        self._key = key
        self._client = httpx.Client(
            base_url=url.rstrip("/") + "/rest/v1",
            headers={"apikey": key, "Authorization": f"Bearer {key}", "Accept": "application/json"},
            transport=transport,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"RestReader(host={self.host!r}, key=<hidden>)"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RestReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "<key>") if self._key else text

    def _request(self, method: str, table: str, params: list, headers: dict | None = None) -> httpx.Response:
        """One request with bounded exponential backoff on 429/5xx and transport errors."""
        last = ""
        for attempt in range(self.max_attempts):
            response = None
            try:
                response = self._client.request(method, "/" + table, params=params, headers=headers)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code not in RETRY_STATUSES:
                    return self._checked(response, table)
                last = f"HTTP {response.status_code}"
            if attempt + 1 < self.max_attempts:
                self._sleep(self._delay(attempt, response))
        raise TargetError(
            f"Supabase REST at {self.host} did not answer {method} {table} after {self.max_attempts} "
            f"attempts (last: {last}). The server is overloaded or unreachable; retry later."
        )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        return retry_delay(attempt, response, self.backoff)

    def _checked(self, response: httpx.Response, table: str) -> httpx.Response:
        status = response.status_code
        if status < 400:
            return response
        if status in (401, 403):
            url_var, key_var = self.env_names or ("the URL variable", "the key variable")
            raise TargetError(
                f"Supabase REST at {self.host} refused the key (HTTP {status}) reading {table}. Check "
                f"that {key_var} holds a valid key for the project named by {url_var} and that the "
                "key's role may read the table (Row Level Security)."
            )
        try:
            detail = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        if status == 404:
            raise TargetError(
                f"Table {table} is not exposed by Supabase REST at {self.host} (HTTP 404: "
                f"{self._scrub(detail)}). Check the table name and that the schema is exposed."
            )
        raise TargetError(f"Supabase REST at {self.host} answered HTTP {status} for {table}: {self._scrub(detail)}")

    # -- reads -------------------------------------------------------------------------------

    def count(self, table: str, filters: dict | None = None) -> int:
        """Exact row count (``Prefer: count=exact``, ``HEAD``). Read-only."""
        headers = {"Prefer": "count=exact", "Range-Unit": "items", "Range": "0-0"}
        response = self._request("HEAD", table, filter_params(filters), headers)
        total = parse_content_range(response.headers.get("Content-Range"))[2]
        if total is None:
            raise TargetError(
                f"Supabase REST at {self.host} gave no exact count for {table} (Content-Range total "
                "is '*'). The server ignored Prefer: count=exact; counts over REST cannot be trusted."
            )
        return total

    def openapi(self) -> dict:
        """The PostgREST OpenAPI description (tables, views and their columns). Read-only."""
        return self._request("GET", "", []).json()

    def tables(self) -> list[str]:
        """Names of the tables and views PostgREST exposes, sorted. Read-only."""
        spec = self.openapi()
        names = set(spec.get("definitions", {}))
        names |= {p.strip("/") for p in spec.get("paths", {}) if p.strip("/") and "/" not in p.strip("/")}
        return sorted(n for n in names if not n.startswith("rpc"))

    def read_all(self, table: str, order_by: str, columns: list[str] | None = None) -> list[dict]:
        """Every row of ``table``, paged on an ordered key, cross-checked against exact counts.

        ``order_by`` is one unique key column (keyset pagination) or several comma-separated
        columns (ordered offset paging). Raises ``TargetError`` if the rows read differ from the
        exact count before or after the read. Read-only.
        """
        keys = [k.strip() for k in order_by.split(",") if k.strip()]
        if not keys:
            raise TargetError(f"Reading {table} over REST needs an ordered key (order_by), got none.")
        before = self.count(table)
        if len(keys) == 1:
            rows = self._read_keyset(table, keys[0], columns)
        else:
            rows = self._read_offset(table, keys, columns)
        after = self.count(table)
        if not len(rows) == before == after:
            raise TargetError(
                f"Read {len(rows):,} rows of {table} over REST but the exact count was {before:,} "
                f"before and {after:,} after. The table changed while reading, or '{order_by}' is "
                "not a unique key. Re-run when no sync is writing, with a unique order key."
            )
        return rows

    def _select(self, columns: list[str] | None, keys: list[str]) -> tuple[str, list[str]]:
        if columns is None:
            return "*", []
        extra = [k for k in keys if k not in columns]
        return ",".join(list(columns) + extra), extra

    def _read_keyset(self, table: str, key: str, columns: list[str] | None) -> list[dict]:
        select, extra = self._select(columns, [key])
        rows: list[dict] = []
        last = None
        while True:
            params = [("select", select), ("order", f"{key}.asc"), ("limit", str(self.page_size))]
            if last is not None:
                params.append((key, "gt." + filter_value(last)))
            page = self._request("GET", table, params).json()
            if not page:
                break
            last = page[-1].get(key)
            if last is None:
                raise TargetError(f"Key column {key} of {table} is missing or NULL; choose a non-null unique key.")
            rows.extend(page)
        return [_drop(row, extra) for row in rows] if extra else rows

    def _read_offset(self, table: str, keys: list[str], columns: list[str] | None) -> list[dict]:
        select, _ = self._select(columns, [])
        order = ",".join(f"{k}.asc" for k in keys)
        rows: list[dict] = []
        while True:
            params = [("select", select), ("order", order), ("offset", str(len(rows))),
                      ("limit", str(self.page_size))]
            page = self._request("GET", table, params).json()
            if not page:
                return rows
            rows.extend(page)


def _drop(row: dict, names: list[str]) -> dict:
    return {k: v for k, v in row.items() if k not in names}
