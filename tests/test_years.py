"""Academic-year rules (docs/DOMAIN.md, “Academic years”; F1, F11, F12, F13, F14)."""

from __future__ import annotations

import inspect
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespa_lib.errors import YearError
from vespa_lib.rules import years

LONDON = ZoneInfo("Europe/London")
dates = st.dates(min_value=date(1901, 1, 1), max_value=date(2998, 12, 31))
uk_labels = st.integers(1901, 2997).map(lambda y: f"{y}/{y + 1}")
cal_labels = st.integers(1901, 2997).map(lambda y: f"{y}/{y}")
rules = st.sampled_from([
    {"is_australian": False, "use_standard_year": None},
    {"is_australian": True, "use_standard_year": None},
    {"is_australian": True, "use_standard_year": True},
    {"is_australian": True, "use_standard_year": False},
    {"is_australian": None, "use_standard_year": False},
])


@pytest.mark.parametrize(("label", "expected"), [
    ("2024/2025", "2024/2025"),
    ("2024-25", "2024/2025"),
    ("2024-2025", "2024/2025"),
    ("2024/25", "2024/2025"),
    (" 2024 / 25 ", "2024/2025"),
    ("2025-26", "2025/2026"),  # docs/DOMAIN.md, “Known data points” 7
    ("2025-2026", "2025/2026"),  # docs/DOMAIN.md, “Known data points” 7
    ("2025/26", "2025/2026"),  # docs/DOMAIN.md, “Known data points” 7
    ("2099/00", "2099/2100"),  # century roll-over of the short form
    ("2025/2025", "2025/2025"),
    ("2025-2025", "2025/2025"),
])
def test_canonical_spellings(label, expected):
    assert years.canonical(label) == expected
    assert years.is_canonical(expected)


@pytest.mark.parametrize("label", [
    "2024/2026", "abcd", "2024/2023", "", "  ", "2025-25", "2024/26", "24/25", "2024", "2024/2025/2026",
    "2024_2025", None, 2024,
])
def test_canonical_rejects_nonsense(label):
    with pytest.raises(YearError):
        years.canonical(label)
    assert not years.is_canonical(label)


@pytest.mark.parametrize("label", ["2024-25", "2024/25", " 2024/2025", "2024/2026"])
def test_is_canonical_false_for_other_spellings(label):
    assert not years.is_canonical(label)


@pytest.mark.parametrize(("is_australian", "use_standard_year", "expected"), [
    (True, False, True),
    (True, None, False),  # F14: NULL means the UK rule
    (True, True, False),
    (False, False, False),
    (None, False, False),
    (False, None, False),
    (None, None, False),
])
def test_uses_calendar_year(is_australian, use_standard_year, expected):
    assert years.uses_calendar_year(is_australian, use_standard_year) is expected


# docs/DOMAIN.md, “Known data points” 1, 2, 3, 5, 6 and the “Academic years” boundary cases as one table.
@pytest.mark.parametrize(("when", "rule", "expected"), [
    (date(2024, 9, 15), {}, "2024/2025"),  # docs/DOMAIN.md, “Known data points” 1
    (date(2025, 7, 31), {}, "2024/2025"),  # docs/DOMAIN.md, “Known data points” 2
    (date(2025, 8, 1), {}, "2025/2026"),  # docs/DOMAIN.md, “Known data points” 2
    (datetime(2025, 9, 29, 4, 50), {}, "2025/2026"),  # docs/DOMAIN.md, “Known data points” 3
    (date(2025, 3, 15), {"is_australian": True, "use_standard_year": False}, "2025/2025"),  # docs/DOMAIN.md, “Known data points” 5
    (date(2025, 10, 15), {"is_australian": True, "use_standard_year": True}, "2025/2026"),  # docs/DOMAIN.md, “Known data points” 6
    (date(2025, 10, 15), {"is_australian": True, "use_standard_year": None}, "2025/2026"),  # docs/DOMAIN.md, “Known data points” 6, F14
    (date(2025, 9, 1), {}, "2025/2026"),  # F11: 1 Sep is not the boundary...
    (date(2025, 8, 31), {}, "2025/2026"),  # ...so late August is already the new year
    (datetime(2025, 7, 31, 23, 30, tzinfo=UTC), {}, "2025/2026"),  # BST: already 1 August in London
    (datetime(2025, 7, 31, 22, 59, tzinfo=UTC), {}, "2024/2025"),
    (datetime(2025, 7, 31, 23, 30), {}, "2024/2025"),  # naive = UK local already
    (datetime(2025, 8, 1, 0, 30, tzinfo=timezone(timedelta(hours=10))), {}, "2024/2025"),  # Sydney
    (datetime(2024, 12, 31, 23, 30, tzinfo=UTC), {"is_australian": True, "use_standard_year": False}, "2024/2024"),
    (date(2025, 1, 1), {"is_australian": True, "use_standard_year": False}, "2025/2025"),
    (date(2025, 12, 31), {"is_australian": True, "use_standard_year": False}, "2025/2025"),
])
def test_academic_year_for_data_points(when, rule, expected):
    assert years.academic_year_for(when, **rule) == expected
    assert years.current_year(when, **rule) == expected


@pytest.mark.parametrize("when", [None, "", "29/09/2025", 45678])
def test_f1_no_date_no_year(when):
    """F1: a date-less record is never given today's year; there is no default."""
    with pytest.raises(YearError):
        years.academic_year_for(when)


def test_no_function_defaults_to_today():
    """F1/F13: as_of/when are mandatory parameters, never defaulted from the clock."""
    for fn in (years.academic_year_for, years.current_year):
        first = next(iter(inspect.signature(fn).parameters.values()))
        assert first.default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        years.current_year()  # type: ignore[call-arg]


@pytest.mark.parametrize(("label", "benchmark", "bounds", "prev", "nxt", "is_cal"), [
    ("2025/2025", "2025/2026", (date(2025, 1, 1), date(2025, 12, 31)), "2024/2024", "2026/2026", True),  # docs/DOMAIN.md, “Known data points” 5
    ("2024/2025", "2024/2025", (date(2024, 8, 1), date(2025, 7, 31)), "2023/2024", "2025/2026", False),
    ("2024-25", "2024/2025", (date(2024, 8, 1), date(2025, 7, 31)), "2023/2024", "2025/2026", False),
    ("2024/2024", "2024/2025", (date(2024, 1, 1), date(2024, 12, 31)), "2023/2023", "2025/2025", True),
])
def test_label_functions(label, benchmark, bounds, prev, nxt, is_cal):
    assert years.benchmark_year(label) == benchmark
    assert years.year_bounds(label) == bounds
    assert (years.year_start(label), years.year_end(label)) == bounds
    assert years.previous_year(label) == prev
    assert years.next_year(label) == nxt
    assert years.is_calendar_label(label) is is_cal


@given(when=dates, rule=rules)
def test_every_date_lies_in_its_years_bounds(when, rule):
    label = years.academic_year_for(when, **rule)
    assert years.is_canonical(label)
    start, end = years.year_bounds(label)
    assert start <= when <= end  # F12: both ends inclusive
    assert years.is_calendar_label(label) is years.uses_calendar_year(rule["is_australian"], rule["use_standard_year"])


@given(label=st.one_of(uk_labels, cal_labels), offset=st.integers(0, 365))
def test_every_day_of_a_year_maps_back_to_it(label, offset):
    start, end = years.year_bounds(label)
    day = min(start + timedelta(days=offset), end)
    rule = {"is_australian": True, "use_standard_year": False} if years.is_calendar_label(label) else {}
    assert years.academic_year_for(day, **rule) == label
    assert years.academic_year_for(start - timedelta(days=1), **rule) == years.previous_year(label)
    assert years.academic_year_for(end + timedelta(days=1), **rule) == years.next_year(label)


@given(label=st.one_of(uk_labels, cal_labels))
def test_next_previous_round_trip(label):
    assert years.next_year(years.previous_year(label)) == label
    assert years.previous_year(years.next_year(label)) == label
    assert years.year_start(years.next_year(label)) == years.year_end(label) + timedelta(days=1)


@given(y=st.integers(1901, 2997), sep=st.sampled_from(["/", "-", " / ", " - "]), short=st.booleans())
def test_f11_all_spellings_are_one_label(y, sep, short):
    tail = f"{(y + 1) % 100:02d}" if short else str(y + 1)
    assert years.canonical(f"{y}{sep}{tail}") == f"{y}/{y + 1}"


@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_aware_datetimes_use_the_london_date(moment):
    assert years.academic_year_for(moment) == years.academic_year_for(moment.astimezone(LONDON).date())


def _sql_labels(con, days):
    con.execute("CREATE OR REPLACE TEMP TABLE d(day DATE)")
    con.executemany("INSERT INTO d VALUES (?)", [(x,) for x in days])
    return [r[0] for r in con.execute(f"SELECT {years.uk_year_sql('day')} FROM d ORDER BY rowid").fetchall()]


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    yield connection
    connection.close()


@settings(max_examples=50)
@given(days=st.lists(st.dates(min_value=date(1000, 1, 1), max_value=date(9998, 12, 31)), min_size=1, max_size=30))
def test_uk_year_sql_matches_python_in_duckdb(con, days):
    assert _sql_labels(con, days) == [years.academic_year_for(x) for x in days]


@pytest.mark.parametrize(("day", "expected"), [
    (date(2025, 7, 31), "2024/2025"), (date(2025, 8, 1), "2025/2026"), (date(2024, 9, 15), "2024/2025"),
    (None, None),
])
def test_uk_year_sql_boundaries(con, day, expected):
    assert _sql_labels(con, [day]) == [expected]


@pytest.mark.postgres
def test_uk_year_sql_matches_python_in_postgresql(pg_server):
    """The same expression runs in PostgreSQL (later code computes years set-based there too)."""
    import psycopg

    days = [date(2000, 1, 1) + timedelta(days=i) for i in range(0, 365 * 40, 7)]
    days += [date(2025, 7, 31), date(2025, 8, 1), date(2024, 9, 15)]
    with psycopg.connect(pg_server) as pg:
        rows = pg.execute(
            f"SELECT {years.uk_year_sql('t.day')} FROM unnest(%s::date[]) WITH ORDINALITY AS t(day, n) ORDER BY n",
            (days,),
        ).fetchall()
    assert [r[0] for r in rows] == [years.academic_year_for(x) for x in days]


# --- each school's own running year, and the year a rollover closes ---------------------------------

CAL = {"is_australian": True, "use_standard_year": False}


@pytest.mark.parametrize(("as_of", "uk", "calendar"), [
    (date(2026, 3, 15), "2025/2026", "2026/2026"),  # the calendar school's year started in late January
    (date(2026, 1, 1), "2025/2026", "2026/2026"),  # 1 January: the new calendar year is running
    (date(2026, 1, 5), "2025/2026", "2026/2026"),  # before the school's late-January start: still its date's year
    (date(2025, 12, 31), "2025/2026", "2025/2025"),
    (date(2026, 7, 31), "2025/2026", "2026/2026"),
    (date(2026, 8, 1), "2026/2027", "2026/2026"),
    (date(2025, 9, 15), "2025/2026", "2025/2025"),
])
def test_running_years_per_rule(as_of, uk, calendar):
    assert years.running_years(as_of) == (uk, calendar)
    assert years.current_year(as_of, **CAL) == calendar
    for rule in ({"is_australian": True, "use_standard_year": None}, {"is_australian": True, "use_standard_year": True},
                 {"is_australian": False, "use_standard_year": False}):
        assert years.current_year(as_of, **rule) == uk


@pytest.mark.parametrize(("as_of", "closes"), [
    (date(2027, 1, 1), "2026/2026"),  # 1 January: the calendar-year schools' year just ended
    (date(2027, 3, 15), "2026/2026"),
    (date(2027, 7, 31), "2026/2026"),
    (date(2026, 8, 1), "2025/2026"),  # 1 August: the UK year just ended
    (date(2026, 12, 31), "2025/2026"),
])
def test_year_to_close_is_the_year_that_ended_last(as_of, closes):
    assert years.year_to_close(as_of) == closes


@given(dates)
def test_the_year_to_close_ended_before_as_of_and_the_running_years_contain_it(when):
    closing = years.year_to_close(when)
    assert years.year_end(closing) < when
    uk, calendar = years.running_years(when)
    for label in (uk, calendar):
        start, end = years.year_bounds(label)
        assert start <= when <= end
    # nothing between the closed year's end and as_of is another boundary: it is the latest one
    assert not any(d.month in (1, 8) and d.day == 1 for d in
                   (years.year_end(closing) + timedelta(days=k) for k in range(2, (when - years.year_end(closing)).days + 1)))
