"""Decoding Knack values (docs/DOMAIN.md, “Knack fields”; decoding contract in docs/ARCHITECTURE.md; F6, F7, F15)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespa_lib.errors import DecodeError
from vespa_lib.rules import knack
from vespa_lib.rules.knack import Connection, Decoded, Name

BST = timezone(timedelta(hours=1))


# ---------------------------------------------------------------- contract
def test_decoded_contract():
    assert Decoded(7).ok and Decoded(7).reason is None
    assert not Decoded(None, "blank").ok
    assert "blank" in knack.REASONS and all(isinstance(v, str) and v for v in knack.REASONS.values())


@pytest.mark.parametrize("decoder", [
    knack.decode_date, knack.decode_email, knack.decode_name, knack.decode_connection,
    knack.decode_bool, knack.decode_score, knack.decode_answer,
])
@pytest.mark.parametrize("blank", [None, "", "   ", float("nan")])
def test_blank_is_blank(decoder, blank):
    assert decoder(blank) == Decoded(None, "blank")


junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@given(junk)
def test_decoders_never_raise_and_use_known_reasons(value):
    for decoder in (knack.decode_date, knack.decode_email, knack.decode_name, knack.decode_connection,
                    knack.decode_bool, knack.decode_score, knack.decode_answer):
        result = decoder(value)
        assert isinstance(result, Decoded)
        assert result.ok or result.reason in knack.REASONS
        assert result.ok is (result.value is not None)
    assert knack.decode_answer(value, percentage=True).reason in (None, *knack.REASONS)


# ---------------------------------------------------------------- dates
@pytest.mark.parametrize(("value", "expected"), [
    ("29/09/2025 04:50", datetime(2025, 9, 29, 4, 50)),  # F6, docs/DOMAIN.md, “Known data points” 3
    ("29/09/2025 04:50:07", datetime(2025, 9, 29, 4, 50, 7)),
    ("01/02/2025", date(2025, 2, 1)),  # F6: 1 February, never 2 January
    ("15/09/2024", date(2024, 9, 15)),
    (" 1/2/2025 ", date(2025, 2, 1)),
    ("2025-09-29", date(2025, 9, 29)),
    ("2025-07-31T23:30:00Z", datetime(2025, 7, 31, 23, 30, tzinfo=UTC)),
    ("2025-07-31T23:30:00+01:00", datetime(2025, 7, 31, 23, 30, tzinfo=BST)),
    ("2025-07-31 23:30", datetime(2025, 7, 31, 23, 30)),
    ("2025-07-31T23:30:00.250", datetime(2025, 7, 31, 23, 30, 0, 250000)),
    (date(2025, 1, 2), date(2025, 1, 2)),
])
def test_decode_date_ok(value, expected):
    result = knack.decode_date(value)
    assert result == Decoded(expected)
    assert type(result.value) is type(expected)


@pytest.mark.parametrize(("value", "reason"), [
    ("12/31/2024", "impossible_date"),  # month-first is never accepted (F6)
    ("31/02/2025", "impossible_date"),
    ("00/01/2025", "impossible_date"),
    ("29/02/2025", "impossible_date"),
    ("29/09/2025 24:00", "impossible_date"),
    ("29/09/2025 04:60", "impossible_date"),
    ("2025-13-01", "impossible_date"),
    ("2025-07-31T23:30+24:00", "impossible_date"),
    ("45678", "excel_serial_date"),
    ("45678.5", "excel_serial_date"),
    (45678, "excel_serial_date"),
    (45678.5, "excel_serial_date"),
    ("01/01/1999", "implausible_year"),
    ("01/01/2101", "implausible_year"),
    ("1899-12-31", "implausible_year"),
    (date(1970, 1, 1), "implausible_year"),
    ("29-09-2025", "bad_date_format"),
    ("29/09/25", "bad_date_format"),
    ("Sept 29 2025", "bad_date_format"),
    ("2025", "bad_date_format"),
    (True, "bad_date_format"),
    ("today", "bad_date_format"),
])
def test_decode_date_failures(value, reason):
    assert knack.decode_date(value) == Decoded(None, reason)


@pytest.mark.parametrize(("value", "expected"), [
    ("29/09/2025 04:50", date(2025, 9, 29)),
    ("2025-07-31T23:30:00Z", date(2025, 8, 1)),  # BST: already 1 August in London
    ("2025-12-31T23:30:00Z", date(2025, 12, 31)),  # GMT in winter
    ("2025-07-31T23:30:00", date(2025, 7, 31)),  # naive: UK local already
    ("2025-08-01T00:30:00+10:00", date(2025, 7, 31)),
    ("01/08/2025", date(2025, 8, 1)),
])
def test_completion_date(value, expected):
    assert knack.completion_date(knack.decode_date(value)) == expected


@pytest.mark.parametrize("value", ["", "31/02/2025", "45678"])
def test_completion_date_refuses_failed_decodes(value):
    """F1: a failed or blank date is never replaced by a default."""
    with pytest.raises(DecodeError) as err:
        knack.completion_date(knack.decode_date(value))
    assert err.value.reason == knack.decode_date(value).reason


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_uk_date_round_trip(day):
    assert knack.decode_date(day.strftime("%d/%m/%Y")) == Decoded(day)
    assert knack.decode_date(day.isoformat()) == Decoded(day)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31, 23, 59)))
def test_uk_datetime_round_trip(moment):
    moment = moment.replace(second=0, microsecond=0)
    text = moment.strftime("%d/%m/%Y %H:%M")
    assert knack.decode_date(text) == Decoded(moment)
    assert knack.completion_date(knack.decode_date(text)) == moment.date()


@given(st.integers(1, 12), st.integers(13, 31), st.integers(2000, 2100))
def test_never_month_first(month, day, year):
    """A US-style date whose second part cannot be a month is impossible, never silently swapped."""
    assert knack.decode_date(f"{month:02d}/{day:02d}/{year}").reason == "impossible_date"


# ---------------------------------------------------------------- emails
@pytest.mark.parametrize(("value", "expected"), [
    ("Student@School.ac.uk", Decoded("student@school.ac.uk")),
    ("  a.b@c.org  ", Decoded("a.b@c.org")),
    ('<a href="mailto:x@y.com">x@y.com</a>', Decoded("x@y.com")),
    ('<a href="mailto:Real@Y.com">Other@y.com</a>', Decoded("real@y.com")),  # the mailto wins
    ("<a href='mailto:x@y.com?subject=hi'>x</a>", Decoded("x@y.com")),
    ('<a href="mailto:x&#64;y.com">x</a>', Decoded("x@y.com")),
    ("mailto:x@y.com", Decoded("x@y.com")),
    ({"email": " X@Y.com "}, Decoded("x@y.com")),
    ({"email": ""}, Decoded(None, "blank")),
    ({}, Decoded(None, "blank")),
    ("student.school.ac.uk", Decoded(None, "invalid_email")),
    ("stu dent@school.ac.uk", Decoded(None, "invalid_email")),
    ("student@localhost", Decoded(None, "invalid_email")),
    ("student@school..uk", Decoded(None, "invalid_email")),
    ("@school.ac.uk", Decoded(None, "invalid_email")),
    ("student@", Decoded(None, "invalid_email")),
    (42, Decoded(None, "invalid_email")),
    ("a@b.com, c@d.com", Decoded(None, "multiple_emails")),
    ("a@b.com c@d.com", Decoded(None, "multiple_emails")),
    ('<a href="mailto:a@b.com">a</a><a href="mailto:c@d.com">c</a>', Decoded(None, "multiple_emails")),
])
def test_decode_email(value, expected):
    assert knack.decode_email(value) == expected


@pytest.mark.parametrize(("email", "domain", "is_test"), [
    ("a@School.ac.uk", "school.ac.uk", False),
    ("Tony@VESPA.academy", "vespa.academy", True),  # F15
    ('<a href="mailto:t@vespa.academy">t</a>', "vespa.academy", True),
    ("t@notvespa.academy", "notvespa.academy", False),
    ("t@vespa.academy.evil.com", "vespa.academy.evil.com", False),
])
def test_email_domain_and_test_accounts(email, domain, is_test):
    assert knack.email_domain(email) == domain
    assert knack.is_test_account(email) is is_test


def test_email_domain_of_invalid_email_raises():
    with pytest.raises(DecodeError):
        knack.email_domain("not an email")
    assert knack.is_test_account(None) is False


# ---------------------------------------------------------------- names
@pytest.mark.parametrize(("args", "kwargs", "expected", "inits"), [
    ((), {"first": "Ada", "last": "Lovelace"}, Name("Ada", "Lovelace", "Ada Lovelace"), "AL"),
    ((), {"first": " Ada ", "last": "Lovelace", "full": "Ada  B. Lovelace"}, Name("Ada", "Lovelace", "Ada B. Lovelace"), "AL"),
    (({"first": "Ada", "last": "Lovelace", "full": "Ada Lovelace"},), {}, Name("Ada", "Lovelace", "Ada Lovelace"), "AL"),
    (("Ada Lovelace",), {}, Name(None, None, "Ada Lovelace"), "AL"),  # a full name is never split
    ((), {"full": "<b>ada</b> king"}, Name(None, None, "ada king"), "AK"),
    ((), {"last": "Lovelace"}, Name(None, "Lovelace", "Lovelace"), "L"),
])
def test_decode_name(args, kwargs, expected, inits):
    result = knack.decode_name(*args, **kwargs)
    assert result == Decoded(expected)
    assert knack.initials(result.value) == inits


@pytest.mark.parametrize(("args", "kwargs", "reason"), [
    ((), {}, "blank"),
    ((), {"first": " ", "last": None}, "blank"),
    (({"first": "", "last": ""},), {}, "blank"),
    ((42,), {}, "bad_name"),
    ((), {"first": 7}, "bad_name"),
])
def test_decode_name_failures(args, kwargs, reason):
    assert knack.decode_name(*args, **kwargs) == Decoded(None, reason)


# ---------------------------------------------------------------- connections and ids
OID = "61f2c2a3339b33001efda404"


@pytest.mark.parametrize(("value", "expected"), [
    ([{"id": OID, "identifier": "Alpha School"}], [Connection(OID, "Alpha School")]),
    ([{"id": OID, "identifier": "A"}, {"id": None, "identifier": "B"}], [Connection(OID, "A"), Connection(None, "B")]),
    ([{"id": OID.upper()}], [Connection(OID, OID)]),  # ids are stored lower-case
    ("Alpha School", [Connection(None, "Alpha School")]),
    ("Alpha School, Beta College", [Connection(None, "Alpha School"), Connection(None, "Beta College")]),
    (OID, [Connection(OID, OID)]),
    ("student@school.ac.uk", [Connection(None, "student@school.ac.uk")]),
    (f'<span class="{OID}">Alpha &amp; Co</span>', [Connection(OID, "Alpha & Co")]),
    (f'<span class="{OID}">A</span><br /><span class="x">B</span>', [Connection(OID, "A"), Connection(None, "B")]),
    ("<span>Alpha School</span>", [Connection(None, "Alpha School")]),
    ([], None),
    (" , ", None),
])
def test_decode_connection(value, expected):
    assert knack.decode_connection(value) == (Decoded(expected) if expected else Decoded(None, "blank"))


@pytest.mark.parametrize("value", [[1, 2], [{"identifier": ""}], 42, {"id": OID}])
def test_decode_connection_bad(value):
    assert knack.decode_connection(value) == Decoded(None, "bad_connection")


@pytest.mark.parametrize(("oid", "created"), [
    (OID, datetime(2022, 1, 27, 16, 4, 51, tzinfo=UTC)),  # docs/DOMAIN.md, “Known data points” 11
    ("68c989701983bb02c6678ec0", date(2025, 9, 16)),  # docs/DOMAIN.md, “Knack fields” gives the day only
])
def test_object_id_created(oid, created):
    assert knack.is_object_id(oid)
    result = knack.object_id_created(oid)
    assert result.tzinfo is not None and result.utcoffset() == timedelta(0)
    assert (result if isinstance(created, datetime) else result.date()) == created


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2106, 2, 7), timezones=st.just(UTC)),
       st.from_regex(r"[0-9a-f]{16}", fullmatch=True))
def test_object_id_time_round_trip(moment, tail):
    moment = moment.replace(microsecond=0)
    assert knack.object_id_created(f"{int(moment.timestamp()):08x}{tail}") == moment


@pytest.mark.parametrize("oid", ["61f2c2a3339b33001efda40", "61f2c2a3339b33001efda404a", "zzf2c2a3339b33001efda404", "", None])
def test_bad_object_id(oid):
    assert not knack.is_object_id(oid)
    with pytest.raises(DecodeError) as err:
        knack.object_id_created(oid)
    assert err.value.reason == "bad_object_id"


# ---------------------------------------------------------------- booleans
@pytest.mark.parametrize(("value", "expected"), [
    ("Yes", Decoded(True)), ("no", Decoded(False)), ("TRUE", Decoded(True)), ("false", Decoded(False)),
    ("1", Decoded(True)), ("0", Decoded(False)), (" Yes ", Decoded(True)), (True, Decoded(True)),
    (False, Decoded(False)), (1, Decoded(True)), (0, Decoded(False)),
    ("y", Decoded(None, "bad_boolean")), ("2", Decoded(None, "bad_boolean")), (2, Decoded(None, "bad_boolean")),
    ("maybe", Decoded(None, "bad_boolean")), (1.5, Decoded(None, "bad_boolean")),
])
def test_decode_bool(value, expected):
    assert knack.decode_bool(value) == expected


# ---------------------------------------------------------------- scores and answers
@pytest.mark.parametrize(("value", "expected"), [
    ("7", Decoded(7)), ("7.0", Decoded(7)), (7.0, Decoded(7)), (7, Decoded(7)),  # F7, docs/DOMAIN.md, “Known data points” 4
    (" 10.00 ", Decoded(10)), ("0", Decoded(0)), ("-0", Decoded(0)), ("007", Decoded(7)), (Decimal("3"), Decoded(3)),
    ("7.5", Decoded(None, "score_not_integer")), (7.5, Decoded(None, "score_not_integer")),
    ("7.0000000000000000001", Decoded(None, "score_not_integer")),  # no float rounding
    ("11", Decoded(None, "score_out_of_range")), ("-1", Decoded(None, "score_out_of_range")),
    ("10.5", Decoded(None, "score_out_of_range")), (float("inf"), Decoded(None, "score_not_numeric")),
    ("abc", Decoded(None, "score_not_numeric")), ("7,0", Decoded(None, "score_not_numeric")),
    ("1e1", Decoded(None, "score_not_numeric")), (True, Decoded(None, "score_not_numeric")),
    ("٧", Decoded(None, "score_not_numeric")),  # non-ASCII digits are not numbers here
])
def test_decode_score(value, expected):
    assert knack.decode_score(value) == expected


@pytest.mark.parametrize(("value", "percentage", "expected"), [
    ("1", False, Decoded(1)), ("5", False, Decoded(5)), ("3.0", False, Decoded(3)), (4, False, Decoded(4)),
    ("0", False, Decoded(None, "unanswered")), (0, False, Decoded(None, "unanswered")),
    ("6", False, Decoded(None, "answer_out_of_range")), ("-1", False, Decoded(None, "answer_out_of_range")),
    ("3.5", False, Decoded(None, "answer_not_integer")), ("x", False, Decoded(None, "answer_not_numeric")),
    ("0", True, Decoded(1)), ("20", True, Decoded(1)), ("20.5", True, Decoded(2)), ("21", True, Decoded(2)),
    ("40", True, Decoded(2)), ("41", True, Decoded(3)), ("60", True, Decoded(3)), ("61", True, Decoded(4)),
    ("80", True, Decoded(4)), ("80.01", True, Decoded(5)), ("100", True, Decoded(5)),
    ("100.1", True, Decoded(None, "answer_out_of_range")), ("-5", True, Decoded(None, "answer_out_of_range")),
    ("lots", True, Decoded(None, "answer_not_numeric")),
])
def test_decode_answer(value, percentage, expected):
    assert knack.decode_answer(value, percentage=percentage) == expected


@pytest.mark.parametrize(("pct", "expected"), [
    (0, 1), (20, 1), (20.5, 2), (21, 2), (40, 2), (40.0001, 3), (41, 3), (60, 3), (61, 4), (80, 4), (81, 5), (100, 5),
])
def test_q29_from_percentage(pct, expected):
    assert knack.q29_from_percentage(pct) == expected


@pytest.mark.parametrize("pct", [-1, 100.5, "abc"])
def test_q29_from_percentage_rejects(pct):
    with pytest.raises(DecodeError):
        knack.q29_from_percentage(pct)


# ---------------------------------------------------------------- SQL equivalence (DuckDB)
@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


def _sql(con, expression: str, values: list[str]) -> list:
    """Evaluate ``expression`` over a VARCHAR column ``s`` holding ``values``, in order."""
    rows = con.execute(
        f"SELECT {expression} FROM (SELECT unnest(?::VARCHAR[]) AS s, generate_subscripts(?::VARCHAR[], 1) AS i) "
        "ORDER BY i", [values, values]
    ).fetchall()
    return [r[0] for r in rows]


safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=25)
numbers = st.one_of(
    st.from_regex(r"[ \t]?[+-]?[0-9]{1,5}(\.[0-9]{1,6})?[ \t]?", fullmatch=True),
    st.decimals(-200, 200, allow_nan=False, allow_infinity=False, places=3).map(str),
    st.integers(-3, 120).map(str),
    st.text("0123456789.-+ e", max_size=8),
    safe_text,
)
date_texts = st.one_of(
    st.from_regex(r"[0-9]{1,2}/[0-9]{1,2}/(19|20|21)[0-9]{2}( [0-9]{1,2}:[0-9]{2}(:[0-9]{2})?)?", fullmatch=True),
    st.from_regex(
        r"(19|20|21)[0-9]{2}-[01][0-9]-[0-3][0-9]([ T][0-2][0-9]:[0-5][0-9](:[0-6][0-9](\.[0-9]{1,6})?)?(Z|[+-][0-2][0-9]:?[0-9]{2})?)?",
        fullmatch=True,
    ),
    st.datetimes(min_value=datetime(1999, 12, 30), max_value=datetime(2101, 1, 2), timezones=st.sampled_from(
        [UTC, BST, timezone(timedelta(hours=-5, minutes=-30))])).map(lambda d: d.isoformat()),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)).map(lambda d: d.strftime("%d/%m/%Y %H:%M")),
    st.text("0123456789/-: TZ+", max_size=22),
    safe_text,
)


def _python_date(text: str):
    decoded = knack.decode_date(text)
    return knack.completion_date(decoded) if decoded.ok else None


@settings(max_examples=20, deadline=None)
@given(st.lists(numbers, min_size=30, max_size=200))
def test_score_and_answer_sql_match_python(con, values):
    assert _sql(con, knack.score_sql("s"), values) == [knack.decode_score(v).value for v in values]
    assert _sql(con, knack.answer_sql("s"), values) == [knack.decode_answer(v).value for v in values]
    assert _sql(con, knack.answer_sql("s", percentage=True), values) == [
        knack.decode_answer(v, percentage=True).value for v in values
    ]


@settings(max_examples=20, deadline=None)
@given(st.lists(date_texts, min_size=30, max_size=200))
def test_uk_date_sql_matches_python(con, values):
    assert _sql(con, knack.uk_date_sql("s"), values) == [_python_date(v) for v in values]


@pytest.mark.parametrize(("value", "expected"), [
    ("29/09/2025 04:50", date(2025, 9, 29)), ("01/02/2025", date(2025, 2, 1)), ("2025-07-31T23:30:00Z", date(2025, 8, 1)),
    ("2025-01-01T00:30+01:00", date(2024, 12, 31)), ("12/31/2024", None), ("45678", None), (None, None),
])
def test_uk_date_sql_rows(con, value, expected):
    assert _sql(con, knack.uk_date_sql("s"), [value]) == [expected]
