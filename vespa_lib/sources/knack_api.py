"""Reading Knack records over its REST API, completely, with values as a CSV export has them.

The sync_check runbook's live source. ``KnackClient`` pages
``GET {base_url}/objects/<object_key>/records`` (``rows_per_page`` at most 1,000, pages
``1..total_pages``) and proves the read complete: ``total_records`` must stay the same on every
page and equal the records received, with no id twice (F3: a capped read is never taken as the
whole). HTTP 429 and 5xx are retried with bounded exponential backoff; 401/403 name the
environment variables to check, never their values.

Knack's ``is after`` / ``is before`` date filters are exclusive (F12), so ``records_between``
widens the window by one day on each side and then filters exactly in the library.

``decode_record`` maps one API record onto the field map's logical columns, rendering each value
as the snapshot CSV holds it (plain email, name parts, connection identifiers plus an
``establishment_id``-style id column, scores as text, dates ``DD/MM/YYYY HH:MM``), from the
``_raw`` forms. ``to_arrow`` builds the same table that ``snapshot.open_snapshot`` builds from a
CSV file (VARCHAR, with ``_record``/``_line``, rich text as its ``_filled_`` flag), so the import's
SQL runs unchanged on it.

Everything here is read-only. Credentials come from named environment variables (or ``.env``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pyarrow as pa

from vespa_lib.errors import ParameterError, TargetError
from vespa_lib.ops import progress
from vespa_lib.rules import fieldmap, knack
from vespa_lib.rules.years import year_bounds
from vespa_lib.sources import snapshot
from vespa_lib.sources.retry import retry_delay
from vespa_lib.sources.targets import resolve_env

__all__ = [
    "API_OBJECTS", "MAX_ROWS_PER_PAGE", "KnackClient", "api_date", "decode_record", "decode_record_10",
    "decode_record_2", "decode_record_29", "decode_record_6", "logical_columns", "to_arrow",
]

MAX_ROWS_PER_PAGE = 1000  # Knack's documented cap per request
_OBJECT_KEY = re.compile(r"object_[0-9]+")
_HEADER = re.compile(r"(field_[0-9]+)(?:_(email|first|last|full|date|id))?")
# object_2 is not in the snapshot's field map (the snapshot has no establishments file); its
# logical names follow the establishments table (docs/DOMAIN.md, “Knack fields” object_2).
_OBJECT_2 = (("id", "id", "id", None), ("name", "text", "field_44", None),
             ("status", "text", "field_2209", None), ("portal_type", "text", "field_63", None),
             ("is_australian", "bool", "field_3573", None), ("use_standard_year", "bool", "field_3752", None))
API_OBJECTS = ("object_2", "object_6", "object_10", "object_29")


class KnackClient:
    """Read-only client for one Knack application's REST API.

    ``app_id_var``/``api_key_var`` NAME the environment variables (or ``.env`` entries) holding the
    application id and REST API key. ``transport`` is an optional ``httpx`` transport; ``sleep`` is
    injectable so retry tests do not wait. ``last_read`` describes the most recent read. ``progress``:
    a bar over each object's pages, by default where someone can see it (``vespa_lib.ops.progress``).
    """

    def __init__(self, app_id_var: str, api_key_var: str, *, base_url: str = "https://api.knack.com/v1",
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep,
                 max_attempts: int = 6, progress: bool | None = None, backoff: float = 0.5, timeout: float = 60.0,
                 dotenv_path: str | None = None):
        if max_attempts < 1:
            raise ParameterError(f"max_attempts must be at least 1, got {max_attempts}.")
        found = resolve_env([app_id_var, api_key_var], dotenv_path)
        missing = [n for n in (app_id_var, api_key_var) if n not in found]
        if missing:
            raise TargetError(
                f"Knack credentials not found: {', '.join(missing)} is not set (neither in the environment "
                "nor in .env). Set them to the application id and REST API key (Knack: Settings > API & Code).")
        self.env_names = (app_id_var, api_key_var)
        self._secrets = (found[app_id_var], found[api_key_var])
        self.base_url, self.progress = base_url.rstrip("/"), progress
        self.max_attempts, self.backoff, self._sleep = max_attempts, backoff, sleep
        self.last_read: dict = {}
        self._client = httpx.Client(
            base_url=self.base_url, transport=transport, timeout=timeout,
            headers={"X-Knack-Application-Id": self._secrets[0], "X-Knack-REST-API-Key": self._secrets[1]})

    def __repr__(self) -> str:
        return f"KnackClient(base_url={self.base_url!r}, credentials from {' and '.join(self.env_names)})"

    def __enter__(self) -> KnackClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def secret_values(self) -> list[str]:
        """The application id and API key, for the evidence scrubber (``privacy.Scrubber``)."""
        return list(self._secrets)

    # -- requests -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text

    def _get(self, path: str, params: dict) -> httpx.Response:
        """One GET with bounded exponential backoff on 429 (rate limit), 5xx and transport errors."""
        last = ""
        for attempt in range(self.max_attempts):
            response = None
            try:
                response = self._client.get(path, params=params)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return self._checked(response, path)
                last = f"HTTP {response.status_code}"
            if attempt + 1 < self.max_attempts:
                self.last_read["retries"] = self.last_read.get("retries", 0) + 1
                self._sleep(self._delay(attempt, response))
        raise TargetError(
            f"Knack API did not answer GET {path} after {self.max_attempts} attempts (last: {last}). "
            "Knack is rate-limiting or unavailable; nothing was read as complete. Retry later.")

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        return retry_delay(attempt, response, self.backoff)

    def _checked(self, response: httpx.Response, path: str) -> httpx.Response:
        status = response.status_code
        if status in (401, 403):
            app_var, key_var = self.env_names
            raise TargetError(
                f"Knack refused the credentials (HTTP {status}) reading {path}. Check that {key_var} holds "
                f"a current REST API key for the application whose id is in {app_var} (keys can be "
                "regenerated in Knack: Settings > API & Code).")
        if status >= 400:
            raise TargetError(f"Knack API answered HTTP {status} for {path}: {self._scrub(response.text[:200])}. "
                              "Check the object key and filters.")
        return response

    def _page(self, object_key: str, page: int, rows_per_page: int, filters: dict | None) -> dict:
        params = {"page": page, "rows_per_page": rows_per_page}
        if filters:
            params["filters"] = json.dumps(filters)
        path = f"/objects/{object_key}/records"
        self.last_read["requests"] = self.last_read.get("requests", 0) + 1
        try:
            body = self._get(path, params).json()
            ok = all(isinstance(body.get(k), int) for k in ("total_pages", "total_records"))
            ok = ok and isinstance(body.get("records"), list)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise TargetError(f"Knack API returned an unexpected body for {path} page {page} (no total_pages, "
                              "total_records and records). Check that base_url points at the Knack API v1.")
        return body

    # -- reads --------------------------------------------------------------------------------

    def records(self, object_key: str, *, filters: dict | None = None,
                rows_per_page: int = MAX_ROWS_PER_PAGE) -> Iterator[dict]:
        """Every record of ``object_key`` (matching ``filters``, Knack's filter JSON), page by page.

        Arguments are checked at once (ParameterError); the iterator raises TargetError after the
        last page when the read is not provably complete: the total changed between pages or differs
        from the records received, or an id came twice (the data changed mid-read). Read-only.
        """
        if not _OBJECT_KEY.fullmatch(object_key or ""):
            raise ParameterError(f"{object_key!r} is not a Knack object key; use e.g. 'object_10'.")
        if not 1 <= rows_per_page <= MAX_ROWS_PER_PAGE:
            raise ParameterError(f"rows_per_page must be 1..{MAX_ROWS_PER_PAGE} (Knack's cap), got {rows_per_page}.")
        return self._pages(object_key, filters, rows_per_page)

    def _pages(self, object_key: str, filters: dict | None, rows_per_page: int) -> Iterator[dict]:
        self.last_read = {"object": object_key, "filters": filters, "requests": 0, "retries": 0}
        body = self._page(object_key, 1, rows_per_page, filters)
        total, pages = body["total_records"], body["total_pages"]
        self.last_read.update(total_records=total, total_pages=pages)
        seen: set[str] = set()
        with progress.bar(total=total, desc=f"Knack {object_key}", unit="rec", show=self.progress) as bar:
            for page in range(1, pages + 1):
                if page > 1:
                    body = self._page(object_key, page, rows_per_page, filters)
                self._same_total(object_key, page, total, body["total_records"])
                for rec in body["records"]:
                    self._first_time(object_key, rec, seen)
                    yield rec
                bar.update(len(body["records"]))
        self.last_read["records"] = len(seen)
        self._same_total(object_key, pages, total, len(seen))

    @staticmethod
    def _same_total(object_key: str, page: int, expected: int, got: int) -> None:
        if got != expected:
            raise TargetError(
                f"Knack {object_key} changed during the read: total_records was {expected:,} on page 1 but "
                f"{got:,} at page {page}. The read is not complete; run it again (outside editing hours).")

    @staticmethod
    def _first_time(object_key: str, rec: dict, seen: set[str]) -> None:
        rid = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(rid, str) or rid in seen:
            raise TargetError(
                f"Knack {object_key} returned a record {'without an id' if not isinstance(rid, str) else 'twice'} "
                "while paging: records moved between pages (the data changed mid-read). Run the read again.")
        seen.add(rid)

    def records_between(self, object_key: str, date_field: str, start: date, end: date, *,
                        rows_per_page: int = MAX_ROWS_PER_PAGE) -> Iterator[dict]:
        """Records whose ``date_field`` falls on ``start``..``end``, both days INCLUDED.

        F12: Knack's ``is after``/``is before`` exclude the named day, so the server filter is
        widened by one day each side and the exact window applied here on the UK local date.
        A record the server matched whose date cannot be decoded is yielded, not dropped, so the
        caller sets it aside with a reason. ``last_read["outside_window"]`` counts the trimmed
        records. Read-only.
        """
        if start > end:
            raise ParameterError(f"records_between: start {start} is after end {end}.")
        rules = [{"field": date_field, "operator": "is after", "value": _uk(start - timedelta(days=1))},
                 {"field": date_field, "operator": "is before", "value": _uk(end + timedelta(days=1))}]
        read = self.records(object_key, filters={"match": "and", "rules": rules}, rows_per_page=rows_per_page)
        return self._window(read, date_field, start, end)

    def _window(self, read: Iterator[dict], date_field: str, start: date, end: date) -> Iterator[dict]:
        outside = 0
        for rec in read:
            day = _record_day(rec, date_field)
            if day is not None and not start <= day <= end:
                outside += 1
                continue
            yield rec
        self.last_read["outside_window"] = outside

    def records_in_year(self, object_key: str, date_field: str, label: str, **kw) -> Iterator[dict]:
        """Records dated in academic year ``label`` (inclusive bounds, ``years.year_bounds``). Read-only."""
        first, last = year_bounds(label)
        return self.records_between(object_key, date_field, first, last, **kw)


def _uk(day: date) -> str:
    return day.strftime("%d/%m/%Y")  # docs/DOMAIN.md, “Knack fields”: UK day-first, the app's date format


def _record_day(rec: dict, date_field: str) -> date | None:
    decoded = api_date(rec.get(f"{date_field}_raw", rec.get(date_field)))
    return knack.completion_date(decoded) if decoded.ok else None


# ------------------------------------------------------------------------------ dates

def api_date(raw: object) -> knack.Decoded:
    """A Knack date from its API ``_raw`` dict (or formatted text), as ``knack.decode_date`` returns it.

    The day comes from ``date_formatted`` (the app's UK day-first format), never from the month-first
    ``date``/``timestamp`` strings (F6); the time from ``hours``/``minutes``/``am_pm``. When a
    ``unix_timestamp`` is present and lies more than a day from ``date_formatted``, the app's date
    format is not day-first: that is a configuration error, raised as TargetError. Read-only.
    """
    if not isinstance(raw, dict):
        return knack.decode_date(raw)
    day = knack.decode_date(raw.get("date_formatted"))
    if not day.ok:
        return day if day.reason != "blank" or knack.is_blank(raw.get("date")) else knack.Decoded(None, "bad_date_format")
    _check_timestamp(raw, day.value)
    hours, minutes = raw.get("hours"), raw.get("minutes")
    if knack.is_blank(hours) or knack.is_blank(minutes):
        return day
    try:
        h, m = int(hours), int(minutes)
    except (TypeError, ValueError):
        return knack.Decoded(None, "bad_date_format")
    pm = str(raw.get("am_pm", "")).strip().upper()
    if pm in ("AM", "PM") and 1 <= h <= 12:
        h = h % 12 + (12 if pm == "PM" else 0)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        return knack.Decoded(None, "impossible_date")
    return knack.Decoded(datetime(day.value.year, day.value.month, day.value.day, h, m))


def _check_timestamp(raw: dict, day: date) -> None:
    stamp = raw.get("unix_timestamp")
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        return
    # Whether Knack's unix_timestamp is UTC or wall-clock time, it lies within a day of the local
    # date; a day/month swap (09/10 vs 10/09) is at least ~4 weeks off.
    stamped = datetime.fromtimestamp(stamp / 1000, tz=UTC).date()
    if abs((stamped - day).days) > 1:
        raise TargetError(
            f"Knack date_formatted {raw.get('date_formatted')!r} is {abs((stamped - day).days)} days from its "
            f"unix_timestamp ({stamped.isoformat()}): the app's date format is not DD/MM/YYYY. Set the date "
            "fields' format to dd/mm/yyyy in Knack; no date is guessed.")


def _render_date(raw: object) -> str | None:
    decoded = api_date(raw)
    if decoded.ok:
        v = decoded.value
        return v.strftime("%d/%m/%Y %H:%M") if isinstance(v, datetime) else v.strftime("%d/%m/%Y")
    if decoded.reason == "blank":
        return None
    # Kept visibly undecodable (never the month-first text): the import chain quarantines it as bad_date.
    return raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)


# ------------------------------------------------------------------------------ records

def logical_columns(object_name: str) -> list[tuple[str, str, str, str | None]]:
    """(logical name, kind, API field, sub-part) per column of ``object_name``, in field-map order.

    The API field and part come from the first field-key header spelling (``field_197_email`` →
    ``field_197``, ``email``); ``id``/``created``/``updated`` are record keys. Read-only.
    """
    if object_name == "object_2":
        return list(_OBJECT_2)
    if object_name not in fieldmap.OBJECTS:
        raise ParameterError(f"No API column map for {object_name!r}; known: {', '.join(API_OBJECTS)}.")
    out = []
    for name, col in fieldmap.load().columns(object_name).items():
        if name in ("id", "created", "updated"):
            out.append((name, col.kind, name, None))
            continue
        match = next((m for h in col.headers if (m := _HEADER.fullmatch(h))), None)
        if match is None:  # pragma: no cover - every mapped column has a field-key spelling
            raise ParameterError(f"fieldmap.yaml: {object_name}.{name} has no field_N header spelling.")
        out.append((name, col.kind, match.group(1), match.group(2)))
    return out


def _scalar(value: object) -> str | None:
    """A raw scalar as CSV text: numbers as written (``7``, ``7.0``), booleans Yes/No, lists joined."""
    if value is None or (isinstance(value, str | list | dict) and not value):
        return None
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def _connection(raw: object, part: str | None) -> str | None:
    """Identifiers (comma-separated, as a CSV cell) or, for an ``_id`` column, the record ids."""
    if not isinstance(raw, list):
        return _scalar(raw)
    key = "id" if part == "id" else "identifier"
    pieces = [str(c.get(key)).strip() for c in raw if isinstance(c, dict) and not knack.is_blank(c.get(key))]
    return ", ".join(pieces) or None


def _value(rec: dict, kind: str, field: str, part: str | None) -> str | None:
    raw = rec.get(f"{field}_raw", rec.get(field))
    if kind == "connection" or part == "id":
        return _connection(raw, part)
    if kind == "date":
        return _render_date(raw)
    if kind == "email" and isinstance(raw, dict):
        return _scalar(raw.get("email"))
    if kind == "name_part" and isinstance(raw, dict):
        return _scalar(raw.get(part or "full"))
    if kind == "name_part" and part in ("first", "last"):
        return None  # a plain-text name is the full name; it is never split (knack.decode_name)
    return _scalar(raw)


def decode_record(rec: dict, object_name: str) -> dict[str, str | None]:
    """One API record as the snapshot row of ``object_name``: logical name → CSV-style text. Read-only."""
    return {name: _value(rec, kind, field, part) for name, kind, field, part in logical_columns(object_name)}


def decode_record_2(rec: dict) -> dict[str, str | None]:
    """An object_2 (establishment) record: id, name, status, portal_type, is_australian, use_standard_year."""
    return decode_record(rec, "object_2")


def decode_record_6(rec: dict) -> dict[str, str | None]:
    """An object_6 (student account) record in the snapshot's o6 columns."""
    return decode_record(rec, "object_6")


def decode_record_10(rec: dict) -> dict[str, str | None]:
    """An object_10 (VESPA results) record in the snapshot's o10 columns."""
    return decode_record(rec, "object_10")


def decode_record_29(rec: dict) -> dict[str, str | None]:
    """An object_29 (questionnaire answers) record in the snapshot's o29 columns."""
    return decode_record(rec, "object_29")


def to_arrow(records: Iterable[dict], object_name: str) -> pa.Table:
    """API records as the table ``snapshot.open_snapshot`` builds from a CSV: ``_record`` (1-based,
    in read order), ``_line`` (NULL: an API record has no file line), then every logical column of
    the field map as VARCHAR, so the import's SQL runs unchanged. Read-only."""
    columns = logical_columns(object_name)
    rows = [decode_record(rec, object_name) for rec in records]
    arrays = [pa.array(range(1, len(rows) + 1), pa.int64()), pa.nulls(len(rows), pa.int64())]
    names = ["_record", "_line"]
    for name, kind, _, _ in columns:
        if kind == "rich_text":  # as the snapshot keeps it: whether filled, not the text (snapshot._load)
            arrays.append(pa.array([None if r[name] is None else bool(r[name].strip()) for r in rows], pa.bool_()))
            names.append(snapshot.FILLED + name)
        else:
            arrays.append(pa.array([r[name] for r in rows], pa.string()))
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)
