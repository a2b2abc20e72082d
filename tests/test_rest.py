"""RestReader against an in-process PostgREST double (docs/DOMAIN.md F3: the 1,000-row cap).

``FakePostgREST`` is an ``httpx.MockTransport`` handler that behaves like PostgREST with Supabase's
``max-rows = 1000``: it honours select/order/offset/limit/Range and eq/gt/is filters (a top-level
filter value is taken literally, quotes and all), caps every response at 1,000 rows whatever was
asked, returns ``Content-Range`` (with the total only when ``Prefer: count=exact`` is sent) and
200/206/416 as PostgREST does, and checks the API key. The same behaviour over a real PostgreSQL is
tests/postgrest_server.py (tests/test_rest_pg.py).
"""

from __future__ import annotations

import json

import httpx
import pytest

from vespa_lib.errors import TargetError
from vespa_lib.sources.rest import RestReader

URL = "https://abcdefgh.supabase.co"
KEY = "sb-secret-KEY-3f9c2a7b1e"
N = 35_830  # the real student count the F3 audit reported as 999


def student_rows(n: int) -> list[dict]:
    return [
        {"id": i, "email": f"s{i}@school.ac.uk", "academic_year": "2024/2025" if i % 3 else "2025/2026",
         "establishment_id": None if i % 7 == 0 else f"e{i % 5}"}
        for i in range(1, n + 1)
    ]


class FakePostgREST:
    """Enough of PostgREST to be wrong in the same way the real one is."""

    def __init__(self, tables: dict[str, list[dict]], *, max_rows: int = 1000, key: str = KEY):
        self.tables, self.max_rows, self.key = tables, max_rows, key
        self.requests: list[httpx.Request] = []
        self.fail_with: list[int] = []  # statuses to answer before serving normally
        self.on_get = None  # callback(fake, n_data_gets) to change the table mid-read

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with:
            status = self.fail_with.pop(0)
            return httpx.Response(status, json={"code": str(status), "message": "rate limited", "details": None, "hint": None})
        if request.headers.get("apikey") != self.key or request.headers.get("authorization") != f"Bearer {self.key}":
            return httpx.Response(401, json={"code": "PGRST301", "message": "Invalid API key", "hint": "Double check your key"})
        table = request.url.path.removeprefix("/rest/v1").strip("/")
        if not table:
            return httpx.Response(200, json={"definitions": {t: {} for t in self.tables}, "paths": {"/": {}}})
        if table not in self.tables:
            return httpx.Response(404, json={"code": "PGRST205", "message": f"Could not find the table 'public.{table}' in the schema cache"})
        if request.method == "GET" and self.on_get:
            self.on_get(self, sum(r.method == "GET" for r in self.requests))
        return self.serve(request, self.tables[table])

    def serve(self, request: httpx.Request, rows: list[dict]) -> httpx.Response:
        params = request.url.params
        for column, expr in params.multi_items():
            if column not in ("select", "order", "offset", "limit"):
                rows = self.filtered(rows, column, expr)
        for part in reversed(params.get("order", "").split(",") if params.get("order") else []):
            column, _, direction = part.partition(".")
            rows = sorted(rows, key=lambda r, c=column: r[c], reverse=direction.startswith("desc"))
        start, stop = self.window(request, len(rows))
        exact = "count=exact" in request.headers.get("prefer", "")
        if exact and start > len(rows):  # PostgREST: an offset past a known total is 416
            return httpx.Response(416, json={"code": "PGRST103", "message": "Requested range not satisfiable",
                                             "details": f"An offset of {start} was requested, but there are only {len(rows)} rows."})
        page = rows[start:min(stop, start + self.max_rows)]  # the max-rows cap: F3
        if params.get("select", "*") != "*":
            page = [{c: r[c] for c in params["select"].split(",")} for r in page]
        total = str(len(rows)) if exact else "*"
        span = f"{start}-{start + len(page) - 1}" if page else "*"
        partial = exact and len(page) < len(rows)  # PostgREST's 206 rule
        body = b"" if request.method == "HEAD" else json.dumps(page).encode()
        return httpx.Response(206 if partial else 200, content=body,
                              headers={"Content-Range": f"{span}/{total}", "Content-Type": "application/json"})

    @staticmethod
    def window(request: httpx.Request, n: int) -> tuple[int, int]:
        start = int(request.url.params.get("offset", 0))
        stop = start + int(request.url.params["limit"]) if "limit" in request.url.params else n
        if "range" in request.headers:
            first, _, last = request.headers["range"].partition("-")
            start, stop = max(start, int(first)), min(stop, int(last) + 1 if last else n)
        return start, stop

    @staticmethod
    def filtered(rows: list[dict], column: str, expr: str) -> list[dict]:
        op, _, operand = expr.partition(".")
        if op == "is":
            return [r for r in rows if r[column] is None]
        present = [r for r in rows if r[column] is not None]
        if not present:
            return []
        value = type(present[0][column])(operand)
        if op == "eq":
            return [r for r in present if r[column] == value]
        if op == "gt":
            return [r for r in present if r[column] > value]
        raise AssertionError(f"fake PostgREST does not implement {op}")


@pytest.fixture
def fake() -> FakePostgREST:
    return FakePostgREST({"students": student_rows(N), "empty": []})


def reader(fake: FakePostgREST, **kw) -> RestReader:
    kw.setdefault("sleep", lambda s: None)
    return RestReader(URL, kw.pop("key", KEY), transport=fake.transport(), env_names=("SB_URL", "SB_KEY"), **kw)


# --- F3: the cap ---------------------------------------------------------------------------------


def test_naive_read_sees_the_cap_and_read_all_gets_every_row(fake):
    client = httpx.Client(base_url=URL, transport=fake.transport(), headers={"apikey": KEY, "Authorization": f"Bearer {KEY}"})
    naive = client.get("/rest/v1/students", params={"select": "*"}).json()
    assert len(naive) == 1000  # the "999 students" audit: a prefix, silently

    with reader(fake) as r:
        rows = r.read_all("students", order_by="id")
        assert len(rows) == N == r.count("students")
    assert [row["id"] for row in rows] == list(range(1, N + 1))


def test_page_size_above_the_server_cap_still_reads_everything(fake):
    with reader(fake, page_size=5000) as r:
        rows = r.read_all("students", order_by="id", columns=["email"])
    assert len(rows) == N and set(rows[0]) == {"email"}  # the key was fetched for paging, then dropped
    assert len({row["email"] for row in rows}) == N


def test_multi_column_order_uses_ordered_offset_paging():
    fake = FakePostgREST({"students": student_rows(4_321)})
    with reader(fake, page_size=700) as r:
        rows = r.read_all("students", order_by="academic_year,id")
    assert len(rows) == 4_321 and len({row["id"] for row in rows}) == 4_321
    assert rows == sorted(rows, key=lambda x: (x["academic_year"], x["id"]))


def test_empty_table_reads_zero_rows(fake):
    with reader(fake) as r:
        assert r.read_all("empty", order_by="id") == [] and r.count("empty") == 0


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (None, N),
        ({"academic_year": "2025/2026"}, N // 3),
        ({"establishment_id": None}, N // 7),
        ({"establishment_id": "e1", "academic_year": "2024/2025"},
         sum(1 for i in range(1, N + 1) if i % 7 and i % 5 == 1 and i % 3)),
    ],
)
def test_count_is_exact_with_filters(fake, filters, expected):
    with reader(fake) as r:
        assert r.count("students", filters) == expected
    last = fake.requests[-1]  # a GET for no rows: unlike a HEAD, a refusal keeps the server's message
    assert last.method == "GET" and "count=exact" in last.headers["prefer"] and last.url.params["limit"] == "0"


# --- changes while reading, retries, errors ------------------------------------------------------


@pytest.mark.parametrize("change", ["insert", "delete"])
def test_table_changing_mid_read_raises(fake, change):
    def mutate(fake, gets):
        if gets == 10:  # a sync writes while the audit pages
            rows = fake.tables["students"]
            rows.append({**rows[-1], "id": N + 1}) if change == "insert" else rows.pop(0)

    fake.on_get = mutate
    with reader(fake) as r, pytest.raises(TargetError, match="changed while reading"):
        r.read_all("students", order_by="id")


def test_non_unique_key_is_caught_by_the_count_check(fake):
    with reader(fake) as r, pytest.raises(TargetError, match="not a unique key"):
        r.read_all("students", order_by="academic_year")


def test_429_and_503_are_retried_with_backoff(fake):
    slept: list[float] = []
    fake.fail_with = [429, 503]
    with reader(fake, sleep=slept.append, backoff=0.5) as r:
        assert r.count("students") == N
    assert slept == [0.5, 1.0]


def test_retries_are_bounded(fake):
    fake.fail_with = [503] * 10
    with reader(fake, max_attempts=3) as r, pytest.raises(TargetError, match="after 3 attempts") as err:
        r.count("students")
    assert len(fake.requests) == 3 and "HTTP 503" in str(err.value)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_names_the_env_vars_never_the_key(fake, status):
    wrong = "sb-wrong-KEY-0000"
    if status == 403:
        fake.fail_with = [403]
    with reader(fake, key=wrong) as r, pytest.raises(TargetError) as err:
        r.read_all("students", order_by="id")
    text = f"{err.value} {err.value!r} {r!r}"
    assert "SB_KEY" in text and "SB_URL" in text and f"HTTP {status}" in text
    assert wrong not in text and KEY not in text


def test_unknown_table_is_a_target_error(fake):
    with reader(fake) as r, pytest.raises(TargetError, match="not exposed"):
        r.count("nope")


def test_tables_come_from_the_openapi_description(fake):
    with reader(fake) as r:
        assert r.tables() == ["empty", "students"]


def test_every_request_carries_the_key_headers(fake):
    with reader(fake) as r:
        r.read_all("students", order_by="id")
    assert all(q.headers["apikey"] == KEY and q.headers["authorization"] == f"Bearer {KEY}" for q in fake.requests)
    assert KEY not in repr(r) and "abcdefgh.supabase.co" in repr(r)


# --- the wire: what supabase-py sends and what it parses -----------------------------------------


def test_reads_are_ordered_ranges_of_the_server_cap_with_exact_counts(fake):
    with reader(fake) as r:
        r.read_all("students", order_by="id")
    gets = [q for q in fake.requests if q.url.params.get("limit") != "0"]
    assert len(gets) == -(-N // 1000)  # 36 pages: ceil(35,830 / 1,000), no extra request
    assert [int(q.url.params["offset"]) for q in gets] == list(range(0, N, 1000))
    assert all(q.url.params["order"] == "id.asc" and q.url.params["limit"] == "1000"
               and "count=exact" in q.headers["prefer"] for q in gets)


def test_filter_values_with_reserved_characters_are_sent_literally(fake):
    fake.tables["students"][0]["email"] = "first.last@x:y,z.ac.uk"
    with reader(fake) as r:
        assert r.count("students", {"email": "first.last@x:y,z.ac.uk", "establishment_id": None}) == 0
        assert r.count("students", {"email": "first.last@x:y,z.ac.uk"}) == 1
    assert fake.requests[-1].url.params["email"] == "eq.first.last@x:y,z.ac.uk"  # no double quotes


@pytest.mark.parametrize("content_range", [None, "0-0/*"])
def test_a_missing_exact_count_is_a_target_error(fake, content_range):
    def no_total(request):
        headers = {"Content-Range": content_range} if content_range else {}
        return httpx.Response(200, json=[], headers=headers)

    r = RestReader(URL, KEY, transport=httpx.MockTransport(no_total), sleep=lambda s: None)
    with r, pytest.raises(TargetError, match="no exact count"):
        r.count("students")


def test_offset_past_the_total_416_is_reported_as_a_changed_table(fake):
    def shrink(fake, gets):
        if gets == 3:  # after two pages, a sync deletes most of the table
            del fake.tables["students"][500:]

    fake.on_get = shrink
    with reader(fake) as r, pytest.raises(TargetError, match="HTTP 416.*changed while reading"):
        r.read_all("students", order_by="id")


def test_refused_key_names_table_status_and_message(fake):
    fake.key = "a-newer-key"
    with reader(fake) as r, pytest.raises(TargetError) as err:
        r.count("students")
    assert "table students (HTTP 401: Invalid API key; Double check your key)" in str(err.value)
