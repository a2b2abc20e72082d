"""A loopback fake of Knack's REST API for tests: real HTTP on 127.0.0.1.

``FakeKnack`` serves ``GET /v1/objects/<key>/records`` from in-memory records, as Knack does:
pages of ``rows_per_page`` (capped at 1,000) with ``total_pages``/``current_page``/
``total_records``; ``filters`` JSON with Knack's EXCLUSIVE ``is after``/``is before`` on date fields
(F12) and ``is``; the ``X-Knack-Application-Id``/``X-Knack-REST-API-Key`` headers checked (401
otherwise). Scripted faults: ``fail_next`` (statuses answered before serving, e.g. ``[429]``),
``fail_pages`` ({page: [statuses]}: e.g. page 3 fails once with 500), ``expire_key()`` (every
request then gets 401) and ``on_request`` (a callback that may change the records mid-read).

``record_2/6/10/29`` build records with both forms of every field: formatted (HTML anchors for
emails, HTML spans for connections) and ``_raw`` (email dicts, name dicts, connection lists,
numeric strings, date dicts with the month-first ``date`` beside the UK ``date_formatted``).
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

APP_ID = "5f1a2b3c4d5e6f7a8b9c0d1e"
API_KEY = "knack-test-key-6b1f0c2e-9d3a-4e7b"
MAX_ROWS = 1000


# ------------------------------------------------------------------------------ values

def knack_date(when: date | datetime | None) -> tuple[str, dict | str]:
    """(formatted, raw) of a Knack date: raw ``date`` month-first, ``date_formatted`` day-first (UK app)."""
    if when is None:
        return "", ""
    dt = when if isinstance(when, datetime) else datetime(when.year, when.month, when.day)
    has_time = isinstance(when, datetime)
    raw = {"date": dt.strftime("%m/%d/%Y"), "date_formatted": dt.strftime("%d/%m/%Y"),
           # Knack's timestamp is the wall-clock time stored as if it were UTC (inferred).
           "unix_timestamp": int(dt.replace(tzinfo=UTC).timestamp() * 1000),
           "iso_timestamp": dt.strftime("%Y-%m-%dT%H:%M:00.000Z")}
    if has_time:
        raw.update(hours=dt.strftime("%I"), minutes=dt.strftime("%M"), am_pm=dt.strftime("%p"),
                   timestamp=dt.strftime("%m/%d/%Y %I:%M %p").lower())
    formatted = dt.strftime("%d/%m/%Y %H:%M" if has_time else "%d/%m/%Y")
    return formatted, raw


def email_field(address: str | None) -> tuple[str, dict | str]:
    if not address:
        return "", ""
    return f'<a href="mailto:{address}">{address}</a>', {"email": address}


def name_field(first: str, last: str) -> tuple[str, dict]:
    return f"{first} {last}", {"first": first, "last": last, "full": f"{first} {last}"}


def connection_field(*links: tuple[str, str]) -> tuple[str, list]:
    html = "<br />".join(f'<span class="{rid}">{ident}</span>' for rid, ident in links)
    return html, [{"id": rid, "identifier": ident} for rid, ident in links]


def _put(rec: dict, field: str, pair: tuple[object, object]) -> None:
    rec[field], rec[f"{field}_raw"] = pair


def oid(n: int, stamp: int = 0x68C98970) -> str:
    """A 24-hex ObjectId whose first 8 digits are a 2025 creation time (docs/DOMAIN.md, “Knack fields”)."""
    return f"{stamp:08x}{n:016x}"


# ------------------------------------------------------------------------------ records

def record_2(n: int, name: str, *, australian: bool = False) -> dict:
    rec = {"id": oid(n, 0x61F2C2A3)}
    for field, value in (("field_44", name), ("field_2209", "Active"), ("field_63", "COACHING PORTAL"),
                         ("field_3573", australian), ("field_3752", not australian)):
        _put(rec, field, ("Yes" if value is True else "No" if value is False else value, value))
    return rec


def record_6(n: int, email: str, school: tuple[str, str]) -> dict:
    rec = {"id": oid(n, 0x66000000)}
    _put(rec, "field_91", email_field(email))
    _put(rec, "field_90", name_field(f"First{n}", f"Last{n}"))
    _put(rec, "field_179", connection_field(school))
    return rec


def record_10(n: int, email: str, school: tuple[str, str], *, completed: date | datetime | None = None,
              scores: dict[int, list[object]] | None = None, current_cycle: int = 1) -> dict:
    """An object_10 record; ``scores`` maps cycle → six raw values (numbers or numeric strings)."""
    rec = {"id": oid(n)}
    _put(rec, "field_197", email_field(email))
    _put(rec, "field_187", name_field(f"First{n}", f"Last{n}"))
    _put(rec, "field_133", connection_field(school))
    _put(rec, "field_146", (str(current_cycle), current_cycle))
    _put(rec, "field_855", knack_date(completed))
    for cycle, first in ((1, 155), (2, 161), (3, 167)):
        values = (scores or {}).get(cycle, [""] * 6)
        for i, value in enumerate(values):
            _put(rec, f"field_{first + i}", (str(value), value))
    _put(rec, "field_2302", ("Line one<br />line two", "Line one\nline two"))
    return rec


def record_29(n: int, email: str | None, student_record: str, school: tuple[str, str], *,
              completed: date | datetime | None = None, answers: dict[str, object] | None = None) -> dict:
    """An object_29 record; ``answers`` maps Knack field keys (e.g. ``field_1953``) to raw values."""
    rec = {"id": oid(n, 0x67000000)}
    _put(rec, "field_2732", email_field(email))
    _put(rec, "field_792", connection_field((student_record, email or "")))
    _put(rec, "field_1821", connection_field(school))
    _put(rec, "field_863", ("1", "1"))
    _put(rec, "field_856", knack_date(completed))
    for field, value in (answers or {}).items():
        _put(rec, field, (str(value), value))
    return rec


# ------------------------------------------------------------------------------ server

def _uk_day(text: str) -> date:
    d, m, y = (int(p) for p in text.split()[0].split("/"))
    return date(y, m, d)


def _matches(rec: dict, rule: dict, slack: int) -> bool:
    raw = rec.get(f"{rule['field']}_raw")
    if rule["operator"] in ("is after", "is before"):
        if not isinstance(raw, dict) or not raw.get("date_formatted"):
            return False  # Knack: a blank date is neither after nor before anything
        day, bound = _uk_day(raw["date_formatted"]), _uk_day(rule["value"])
        if rule["operator"] == "is after":
            return day > bound - timedelta(days=slack)  # exclusive (F12)
        return day < bound + timedelta(days=slack)
    if rule["operator"] == "is blank":
        return not (isinstance(raw, dict) and raw.get("date_formatted")) and not rec.get(rule["field"])
    if rule["operator"] == "is":
        return str(rec.get(rule["field"])) == str(rule["value"])
    raise ValueError(f"operator {rule['operator']!r} not supported by the fake")


def _filtered(records: list[dict], filters: dict | None, slack: int = 0) -> list[dict]:
    if not filters:
        return records
    combine = all if filters.get("match", "and") == "and" else any
    return [r for r in records if combine(_matches(r, rule, slack) for rule in filters["rules"])]


class FakeKnack:
    """In-memory Knack objects behind a real loopback HTTP server (use as a context manager)."""

    def __init__(self, objects: dict[str, list[dict]], *, app_id: str = APP_ID, api_key: str = API_KEY):
        self.objects, self.app_id, self.api_key = objects, app_id, api_key
        self.fail_next: list[int] = []
        self.fail_pages: dict[int, list[int]] = {}
        self.slack_days = 0  # > 0: the date filter leaks that many days past each bound (a sloppy server)
        self.on_request = None  # callback(fake, query) before serving a data page
        self.requests: list[dict] = []  # {path, query, status}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def expire_key(self) -> None:
        self.api_key = "expired:" + self.api_key

    def __enter__(self) -> FakeKnack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = fake.respond(self.path, self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits up to one interval (0.5 s by default) per server.
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(self, raw_path: str, headers) -> tuple[int, dict]:
        with self._lock:
            url = urlsplit(raw_path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            status, body = self._respond(url.path, query, headers)
            self.requests.append({"path": url.path, "query": query, "status": status})
            return status, body

    def _respond(self, path: str, query: dict, headers) -> tuple[int, dict]:
        if self.fail_next:
            return self.fail_next.pop(0), {"errors": [{"message": "scripted fault"}]}
        if headers.get("X-Knack-Application-Id") != self.app_id or headers.get("X-Knack-REST-API-Key") != self.api_key:
            return 401, {"errors": [{"message": "Invalid API key"}]}
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "objects"] or parts[3] != "records" or parts[2] not in self.objects:
            return 404, {"errors": [{"message": f"Not found: {path}"}]}
        page = int(query.get("page", 1))
        if self.fail_pages.get(page):
            return self.fail_pages[page].pop(0), {"errors": [{"message": "scripted fault"}]}
        if self.on_request:
            self.on_request(self, query)
        return 200, self._page(parts[2], page, query)

    def _page(self, key: str, page: int, query: dict) -> dict:
        per = min(int(query.get("rows_per_page", 25)), MAX_ROWS)  # Knack's default is 25, cap 1,000
        rows = _filtered(self.objects[key], json.loads(query["filters"]) if "filters" in query else None,
                         self.slack_days)
        pages = max(1, -(-len(rows) // per))
        return {"total_pages": pages, "current_page": page, "total_records": len(rows),
                "records": rows[(page - 1) * per: page * per]}


def forbid_network(monkeypatch) -> None:
    """Fail any connection that is not to the loopback address: tests never touch the network."""
    real = socket.socket.connect

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access attempted: {address!r}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
