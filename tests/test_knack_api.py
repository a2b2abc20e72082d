"""KnackClient and API record decoding against a real loopback fake of Knack (tests/knack_server.py).

Covers the client: paging, 429/5xx retries, expired keys, F12's exclusive date
filters, ``_raw`` decoding, and API rows landing in the same table shape as a CSV snapshot.
No test reaches the network: an autouse guard refuses every socket connection off 127.0.0.1.
"""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.knack_server import (
    API_KEY,
    APP_ID,
    FakeKnack,
    forbid_network,
    knack_date,
    oid,
    record_2,
    record_6,
    record_10,
    record_29,
)
from vespa_lib.errors import ParameterError, TargetError
from vespa_lib.ops.privacy import Scrubber
from vespa_lib.rules import fieldmap, knack
from vespa_lib.sources.knack_api import (
    KnackClient,
    api_date,
    decode_record_2,
    decode_record_6,
    decode_record_10,
    decode_record_29,
    to_arrow,
)
from vespa_lib.sources.snapshot import open_snapshot

SCHOOL = (oid(1, 0x61F2C2A3), "Ashford College")
OTHER = (oid(2, 0x61F2C2A3), "Brook Academy")
APP_VAR, KEY_VAR = "TEST_KNACK_APP_ID", "TEST_KNACK_API_KEY"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection that is not to 127.0.0.1: the client must never touch the network."""
    forbid_network(monkeypatch)


@pytest.fixture(autouse=True)
def credentials(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv(APP_VAR, APP_ID)
    monkeypatch.setenv(KEY_VAR, API_KEY)


def students(n: int, completed=None) -> list[dict]:
    return [record_10(i, f"s{i}@ashford.ac.uk", SCHOOL, completed=completed, scores={1: [7, "6", "7.0", 5, 4, 6]})
            for i in range(n)]


def client(fake: FakeKnack, sleeps: list | None = None, **kw) -> KnackClient:
    sink = sleeps if sleeps is not None else []
    return KnackClient(APP_VAR, KEY_VAR, base_url=fake.base_url, sleep=sink.append, **kw)


def data_pages(fake: FakeKnack) -> list[int]:
    return [int(r["query"]["page"]) for r in fake.requests]


# ------------------------------------------------------------------------------ paging

@pytest.mark.parametrize(("n", "per_page", "pages"), [
    (0, 1000, 1), (1000, 1000, 1), (1001, 1000, 2), (2500, 1000, 3), (2500, 700, 4),
])
def test_paging_returns_every_record_once(n, per_page, pages):
    with FakeKnack({"object_10": students(n)}) as fake, client(fake) as kc:
        got = list(kc.records("object_10", rows_per_page=per_page))
        assert [r["id"] for r in got] == [r["id"] for r in fake.objects["object_10"]]
        assert data_pages(fake) == list(range(1, pages + 1))
        assert {r["query"]["rows_per_page"] for r in fake.requests} == {str(per_page)}
        read = kc.last_read
        assert (read["total_records"], read["total_pages"], read["records"], read["retries"]) == (n, pages, n, 0)


@pytest.mark.parametrize("per_page", [0, 1001, 5000])
def test_rows_per_page_outside_knacks_cap_is_refused(per_page):
    with FakeKnack({"object_10": []}) as fake, client(fake) as kc, pytest.raises(ParameterError, match="1..1000"):
        kc.records("object_10", rows_per_page=per_page)  # refused when called, before any request
    assert fake.requests == []


@pytest.mark.parametrize("change", ["grow", "shift"])
def test_data_changing_mid_read_is_an_error_not_a_short_read(change):
    def on_request(fake, query):
        if query["page"] == "2" and not fake.changed:
            fake.changed = True
            new = record_10(99_999, "late@ashford.ac.uk", SCHOOL)
            if change == "grow":
                fake.objects["object_10"].append(new)
            else:  # same total, but every record moves one page position: one comes twice
                fake.objects["object_10"][:] = [new, *fake.objects["object_10"][:-1]]

    with FakeKnack({"object_10": students(2500)}) as fake, client(fake) as kc:
        fake.changed, fake.on_request = False, on_request
        with pytest.raises(TargetError, match="changed during the read.*at page 2" if change == "grow" else "twice"):
            list(kc.records("object_10"))


# ------------------------------------------------------------------------------ faults

def test_rate_limit_429_is_retried_with_backoff():
    sleeps: list[float] = []
    with FakeKnack({"object_10": students(1500)}) as fake, client(fake, sleeps) as kc:
        fake.fail_next = [429, 429]
        assert len(list(kc.records("object_10"))) == 1500
        assert sleeps == [0.5, 1.0]
        assert [r["status"] for r in fake.requests] == [429, 429, 200, 200]
        assert kc.last_read["retries"] == 2


def test_500_on_page_3_once_is_retried_and_the_read_completes():
    sleeps: list[float] = []
    with FakeKnack({"object_10": students(2500)}) as fake, client(fake, sleeps) as kc:
        fake.fail_pages = {3: [500]}
        got = list(kc.records("object_10"))
        assert len({r["id"] for r in got}) == 2500
        assert data_pages(fake) == [1, 2, 3, 3]
        assert sleeps == [0.5]


def test_persistent_500_fails_after_bounded_attempts():
    sleeps: list[float] = []
    with FakeKnack({"object_10": students(2500)}) as fake, client(fake, sleeps, max_attempts=4) as kc:
        fake.fail_pages = {2: [500] * 10}
        with pytest.raises(TargetError, match="after 4 attempts .last: HTTP 500"):
            list(kc.records("object_10"))
        assert data_pages(fake) == [1, 2, 2, 2, 2]
        assert sleeps == [0.5, 1.0, 2.0]  # exponential, none after the last attempt
        assert kc.last_read["retries"] == 3


@pytest.mark.parametrize("fault", ["expired_key", "forbidden"])
def test_refused_credentials_name_the_variables_never_the_values(fault):
    sleeps: list[float] = []
    with FakeKnack({"object_10": students(10)}) as fake, client(fake, sleeps) as kc:
        if fault == "expired_key":
            fake.expire_key()
        else:
            fake.fail_next = [403]
        with pytest.raises(TargetError) as info:
            list(kc.records("object_10"))
    message = str(info.value)
    assert APP_VAR in message and KEY_VAR in message
    assert API_KEY not in message and APP_ID not in message
    assert sleeps == []  # a refused key is not retried


def test_missing_variable_is_named(monkeypatch):
    monkeypatch.delenv(KEY_VAR)
    with pytest.raises(TargetError, match=f"{KEY_VAR} is not set"):
        KnackClient(APP_VAR, KEY_VAR, base_url="http://127.0.0.1:9/v1")


def test_credentials_from_dotenv_and_kept_out_of_repr(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_VAR)
    (tmp_path / ".env").write_text(f"{KEY_VAR}={API_KEY}\n")
    with FakeKnack({"object_2": [record_2(1, "Ashford College")]}) as fake, client(fake) as kc:
        assert [r["field_44"] for r in kc.records("object_2")] == ["Ashford College"]
        assert API_KEY not in repr(kc) and KEY_VAR in repr(kc)
        assert sorted(kc.secret_values()) == sorted([APP_ID, API_KEY])
        leaked = f"headers: {APP_ID} {API_KEY}"
        assert APP_ID not in Scrubber(kc.secret_values()).scrub(leaked)
        assert API_KEY not in Scrubber(kc.secret_values()).scrub(leaked)


def test_progress_bar_for_long_reads(capsys):
    with FakeKnack({"object_10": students(1200)}) as fake, client(fake, progress=True) as kc:
        list(kc.records("object_10"))
    assert "object_10" in capsys.readouterr().err


# ------------------------------------------------------------------------------ F12 date windows

BOUNDARY = [  # (completion, inside 2025/2026?)
    (date(2025, 7, 31), False), (datetime(2025, 7, 31, 23, 59), False), (date(2025, 8, 1), True),
    (datetime(2025, 8, 1, 0, 10), True), (date(2025, 9, 15), True), (date(2026, 7, 31), True),
    (datetime(2026, 7, 31, 23, 50), True), (date(2026, 8, 1), False), (None, False),
]


@pytest.mark.parametrize("slack", [0, 1])
def test_f12_boundary_days_kept_by_records_between_lost_by_a_naive_filter(slack):
    recs = [record_10(i, f"b{i}@ashford.ac.uk", SCHOOL, completed=when) for i, (when, _) in enumerate(BOUNDARY)]
    inside = {r["id"] for r, (_, keep) in zip(recs, BOUNDARY, strict=True) if keep}
    on_edges = {r["id"] for r, (when, _) in zip(recs, BOUNDARY, strict=True)
                if when is not None and when.timetuple()[:3] in ((2025, 8, 1), (2026, 7, 31))}
    with FakeKnack({"object_10": recs}) as fake, client(fake) as kc:
        fake.slack_days = 0
        naive_rules = [{"field": "field_855", "operator": "is after", "value": "01/08/2025"},
                       {"field": "field_855", "operator": "is before", "value": "31/07/2026"}]
        naive = {r["id"] for r in kc.records("object_10", filters={"match": "and", "rules": naive_rules})}
        fake.slack_days = slack  # 1: a server leaking a day past each bound; the exact filter still holds
        exact = {r["id"] for r in kc.records_between("object_10", "field_855", date(2025, 8, 1), date(2026, 7, 31))}
        sent = fake.requests[-1]["query"]["filters"]
        assert '"is after", "value": "31/07/2025"' in sent and '"is before", "value": "01/08/2026"' in sent
        assert kc.last_read["outside_window"] == 3 * slack  # 31/07/2025 (00:00, 23:59), 01/08/2026
        by_year = {r["id"] for r in kc.records_in_year("object_10", "field_855", "2025/2026")}
    assert exact == by_year == inside
    assert len(on_edges) == 4 and on_edges <= exact
    assert naive == inside - on_edges  # what the old sync did: first and last day dropped


@pytest.fixture(scope="module")
def window_client():
    """One server and one client for every hypothesis example (keeps the property test fast)."""
    with pytest.MonkeyPatch.context() as mp, FakeKnack({"object_10": []}) as fake:
        mp.setenv(APP_VAR, APP_ID)
        mp.setenv(KEY_VAR, API_KEY)
        with KnackClient(APP_VAR, KEY_VAR, base_url=fake.base_url) as kc:
            yield fake, kc


days = st.dates(min_value=date(2025, 7, 20), max_value=date(2026, 8, 10))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dated=st.lists(days, min_size=0, max_size=12), start=days, length=st.integers(0, 400))
@pytest.mark.parametrize("slack", [0, 2])
def test_records_between_is_exactly_the_inclusive_window(window_client, slack, dated, start, length):
    fake, kc = window_client
    end = start + timedelta(days=length)
    fake.slack_days = slack
    fake.objects["object_10"] = [record_10(i, f"p{i}@x.ac.uk", SCHOOL, completed=d) for i, d in enumerate(dated)]
    got = [r["id"] for r in kc.records_between("object_10", "field_855", start, end)]
    assert got == [oid(i) for i, d in enumerate(dated) if start <= d <= end]


def test_records_between_refuses_a_reversed_window(window_client):
    with pytest.raises(ParameterError, match="after end"):
        window_client[1].records_between("object_10", "field_855", date(2026, 1, 2), date(2026, 1, 1))


# ------------------------------------------------------------------------------ decoding

OCT_9 = knack_date(date(2025, 10, 9))[1]


@pytest.mark.parametrize(("raw", "value", "reason"), [
    (OCT_9, date(2025, 10, 9), None),  # month-first date "10/09/2025" ignored; date_formatted is UK
    ({"date": "10/09/2025", "date_formatted": "09/10/2025"}, date(2025, 10, 9), None),
    (knack_date(datetime(2025, 9, 29, 4, 50))[1], datetime(2025, 9, 29, 4, 50), None),
    (knack_date(datetime(2025, 9, 29, 16, 50))[1], datetime(2025, 9, 29, 16, 50), None),
    ({"date_formatted": "29/09/2025", "hours": "12", "minutes": "05", "am_pm": "AM"}, datetime(2025, 9, 29, 0, 5), None),
    ({"date_formatted": "29/09/2025", "hours": "12", "minutes": "05", "am_pm": "PM"}, datetime(2025, 9, 29, 12, 5), None),
    ({"date_formatted": "29/09/2025", "hours": 17, "minutes": 5}, datetime(2025, 9, 29, 17, 5), None),
    ({"date": "10/09/2025", "timestamp": "10/09/2025 04:50 am"}, None, "bad_date_format"),  # month-first only
    ({"date_formatted": "31/02/2025"}, None, "impossible_date"),
    ("29/09/2025 04:50", datetime(2025, 9, 29, 4, 50), None),
    ({}, None, "blank"), ("", None, "blank"), (None, None, "blank"),
])
def test_api_date(raw, value, reason):
    assert api_date(raw) == knack.Decoded(value, reason)


def test_api_date_refuses_an_app_with_a_month_first_format():
    us_app = dict(OCT_9, date_formatted="10/09/2025")  # the app formats dates mm/dd/yyyy
    with pytest.raises(TargetError, match="not DD/MM/YYYY"):
        api_date(us_app)


def test_decode_record_10_uses_the_raw_forms():
    rec = record_10(7, "Mixed.Case@Ashford.ac.uk", SCHOOL, completed=datetime(2025, 9, 29, 4, 50),
                    scores={1: [7, "6", "7.0", 5, 4, 6], 2: ["", "", "", "", "", ""]}, current_cycle=1)
    _, rec["field_133_raw"] = ("", [{"id": SCHOOL[0], "identifier": SCHOOL[1]},
                                    {"id": OTHER[0], "identifier": OTHER[1]}])
    row = decode_record_10(rec)
    assert "<a" in rec["field_197"] and row["email"] == "Mixed.Case@Ashford.ac.uk"
    assert knack.decode_email(row["email"]).value == "mixed.case@ashford.ac.uk"
    assert (row["first_name"], row["last_name"], row["full_name"]) == ("First7", "Last7", "First7 Last7")
    assert row["establishment"] == "Ashford College, Brook Academy"
    assert [c.id for c in knack.decode_connection(row["establishment_id"]).value] == [SCHOOL[0], OTHER[0]]
    assert [row[f"c1_{e}"] for e in fieldmap.ELEMENTS] == ["7", "6", "7.0", "5", "4", "6"]
    assert [knack.decode_score(row[f"c1_{e}"]).value for e in fieldmap.ELEMENTS] == [7, 6, 7, 5, 4, 6]
    assert row["c2_vision"] is None and row["c3_overall"] is None  # blank = not taken
    assert row["current_cycle"] == "1" and row["id"] == oid(7)
    assert row["completion_date"] == "29/09/2025 04:50"
    assert row["c1_reflection"] == "Line one\nline two"
    assert set(row) == set(fieldmap.load().columns("object_10"))


def test_decode_record_29_6_and_2():
    student = oid(5)
    rec = record_29(5, "s5@ashford.ac.uk", student, SCHOOL, completed=date(2025, 10, 9),
                    answers={"field_1953": "4", "field_1954": 5, "field_2927": "85.0", "field_794": "0"})
    row = decode_record_29(rec)
    assert (row["email"], row["student_record"], row["student_record_id"]) == ("s5@ashford.ac.uk", "s5@ashford.ac.uk", student)
    assert (row["q1_c1"], row["q2_c1"], row["q29_vision_grades_c1"], row["q1_current"]) == ("4", "5", "85.0", "0")
    assert row["completion_date"] == "09/10/2025" and row["establishment"] == SCHOOL[1]
    account = decode_record_6(record_6(3, "s3@ashford.ac.uk", SCHOOL))
    assert (account["email"], account["establishment"], account["establishment_id"]) == ("s3@ashford.ac.uk", *SCHOOL[::-1])
    school = decode_record_2(record_2(1, "Ashford College", australian=True))
    assert school == {"id": SCHOOL[0], "name": "Ashford College", "status": "Active", "portal_type": "COACHING PORTAL",
                      "is_australian": "Yes", "use_standard_year": "No"}
    assert knack.decode_bool(school["is_australian"]).value is True


def test_to_arrow_has_the_snapshot_shape_and_decodes_with_the_same_sql():
    recs = students(3, completed=datetime(2025, 10, 9, 9, 42))
    table = to_arrow(recs, "object_10")
    cols = fieldmap.load().columns("object_10")
    names = [("_filled_" if c.kind == "rich_text" else "") + n for n, c in cols.items()]
    assert table.column_names == ["_record", "_line", *names]
    assert all(str(table.schema.field(n).type) == ("bool" if n.startswith("_filled_") else "string") for n in names)
    assert "_filled_c1_reflection" in names  # as snapshot.open_snapshot keeps rich text: whether filled
    con = duckdb.connect()
    con.register("o10", table)
    got = con.sql(f"SELECT _record, {knack.score_sql('c1_effort')}, {knack.uk_date_sql('completion_date')}, email "
                  "FROM o10 ORDER BY _record").fetchall()
    assert got == [(i + 1, 6, date(2025, 10, 9), f"s{i}@ashford.ac.uk") for i in range(3)]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])


def test_api_rows_equal_the_csv_export_of_the_same_records(tmp_path):
    """The same student as Knack's CSV export writes it and as the API returns it: identical rows."""
    rec = record_10(1, "Pat.Doe@Ashford.ac.uk", SCHOOL, completed=datetime(2025, 9, 29, 4, 50),
                    scores={1: ["7.0", 6, "8", 5, 4, 6]})
    header = ["id", "field_197_email", "field_187_first", "field_187_last", "field_187_full", "field_133",
              "field_146", "field_155", "field_156", "field_157", "field_158", "field_159", "field_160",
              "field_855_date", "field_2302"]
    cells = [oid(1), "Pat.Doe@Ashford.ac.uk", "First1", "Last1", "First1 Last1", "Ashford College", "1",
             "7.0", "6", "8", "5", "4", "6", "29/09/2025 04:50", "Line one\nline two"]
    _write_csv(tmp_path / "FullObject_10_2025.csv", header, [cells])
    _write_csv(tmp_path / "FullObject_6_2025.csv", ["id", "field_91_email"], [[oid(9), "x@y.ac.uk"]])
    _write_csv(tmp_path / "FullObject_29_2025.csv", ["id"], [[oid(8)]])
    snap = open_snapshot(tmp_path)
    from_csv = snap.con.sql("SELECT * EXCLUDE (_line) FROM o10").to_arrow_table().to_pylist()[0]
    from_api = to_arrow([rec], "object_10").drop_columns(["_line"]).to_pylist()[0]
    rich = {n for n, c in fieldmap.load().columns("object_10").items() if c.kind == "rich_text"}
    present = {"_record"} | {("_filled_" if n in rich else "") + n for n in snap.resolutions["object_10"].found}
    assert {k: from_api[k] for k in present} == {k: from_csv[k] for k in present}
    assert len(present) == len(header) + 1
