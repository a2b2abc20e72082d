"""Academic years: labels, the UK 1 August rule, Australian calendar years, bounds (docs/DOMAIN.md, “Academic years”).

Every function here is pure and read-only. None of them reads the clock: a year always comes
from a date the caller passes in (F1, F13). Labels are written only in the canonical form
``YYYY/YYYY`` (``2024/2025``, or ``2025/2025`` for an Australian calendar year); any other spelling
is normalised on read by :func:`canonical` (F11).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

from vespa_lib.errors import YearError

__all__ = [
    "UK_TZ",
    "academic_year_for",
    "benchmark_year",
    "canonical",
    "current_year",
    "is_calendar_label",
    "is_canonical",
    "next_year",
    "previous_year",
    "running_years",
    "uk_year_sql",
    "uses_calendar_year",
    "year_bounds",
    "year_end",
    "year_start",
    "year_to_close",
]

# docs/DOMAIN.md, “Academic years”: dates are UK local dates; timestamps are converted to Europe/London first.
UK_TZ = ZoneInfo("Europe/London")
# docs/DOMAIN.md, “Academic years”: the UK year starts on 1 August (not 1 September: F11).
UK_START_MONTH = 8

_CANONICAL = re.compile(r"(\d{4})/(\d{4})")
# Accepted spellings: 2024/2025, 2024-2025, 2024/25, 2024-25 (whitespace around the parts tolerated).
_SPELLING = re.compile(r"\s*(\d{4})\s*[-/]\s*(\d{4}|\d{2})\s*")


def _parts(label: str) -> tuple[int, int]:
    """Split a label in any accepted spelling into (first, second) full years, or raise YearError."""
    if not isinstance(label, str):
        raise YearError(f"Academic year {label!r} is not a text label. Pass a label such as '2024/2025'.")
    m = _SPELLING.fullmatch(label)
    if m is None:
        raise YearError(
            f"Academic year {label!r} is not a recognised spelling. "
            "Use 'YYYY/YYYY' (e.g. '2024/2025'); '2024-25', '2024-2025' and '2024/25' are also accepted."
        )
    first, tail = int(m.group(1)), m.group(2)
    if len(tail) == 2:
        # A two-digit tail only ever abbreviates the UK form Y/Y+1 ('2025-25' is not a calendar year).
        second = first + 1
        if second % 100 != int(tail):
            raise YearError(
                f"Academic year {label!r}: '{tail}' is not the year after {first}. "
                f"Write '{first}/{first + 1}' or, for a calendar year, '{first}/{first}'."
            )
    else:
        second = int(tail)
    if second not in (first, first + 1):
        raise YearError(
            f"Academic year {label!r} spans {first} to {second}; a year is Y/Y+1 (UK) or Y/Y (calendar). "
            "Check the label's source."
        )
    return first, second


def canonical(label: str) -> str:
    """The canonical spelling ``YYYY/YYYY`` of a label in any accepted spelling. Raises YearError."""
    first, second = _parts(label)
    return f"{first}/{second}"


def is_canonical(label: object) -> bool:
    """True only for a valid label already written in the canonical form."""
    if not isinstance(label, str) or _CANONICAL.fullmatch(label) is None:
        return False
    try:
        return canonical(label) == label
    except YearError:
        return False


def is_calendar_label(label: str) -> bool:
    """True for an Australian calendar-year label ``Y/Y``. Raises YearError for nonsense."""
    first, second = _parts(label)
    return first == second


def uses_calendar_year(is_australian: bool | None, use_standard_year: bool | None) -> bool:
    """True only for an Australian school that explicitly does not use the standard year.

    docs/DOMAIN.md, “Academic years” / F14: ``use_standard_year`` true **or NULL** means the UK rule.
    """
    return is_australian is True and use_standard_year is False


def _uk_local_date(when: date | datetime) -> date:
    """The UK local date of ``when``: aware datetimes are converted to Europe/London; naive ones
    are already UK local (Knack dates are UK local, docs/DOMAIN.md, “Knack fields”)."""
    if isinstance(when, datetime):
        if when.tzinfo is not None and when.utcoffset() is not None:
            return when.astimezone(UK_TZ).date()
        return when.date()
    if isinstance(when, date):
        return when
    # F1: there is no default; a record without a date is never given today's year.
    raise YearError(
        f"Cannot compute an academic year from {when!r}: a date or datetime is required. "
        "Set the record aside with a reason instead of guessing its year."
    )


def academic_year_for(
    when: date | datetime, *, is_australian: bool | None = False, use_standard_year: bool | None = None
) -> str:
    """The canonical academic year containing ``when`` under the school's rule (docs/DOMAIN.md, “Academic years”)."""
    day = _uk_local_date(when)
    if uses_calendar_year(is_australian, use_standard_year):
        return f"{day.year}/{day.year}"
    start = day.year if day.month >= UK_START_MONTH else day.year - 1
    return f"{start}/{start + 1}"


def current_year(
    as_of: date | datetime, *, is_australian: bool | None = False, use_standard_year: bool | None = None
) -> str:
    """The academic year containing ``as_of``. ``as_of`` is mandatory: this never reads the clock (F13)."""
    return academic_year_for(as_of, is_australian=is_australian, use_standard_year=use_standard_year)


def running_years(as_of: date | datetime) -> tuple[str, str]:
    """(UK-rule running year, calendar-year schools' running year) on ``as_of``.

    Each school has its own current year (docs/DOMAIN.md, “Academic years”): on 15/03/2026 a UK-rule school is in
    ``2025/2026`` and a calendar-year school in ``2026/2026``. Its year starts in late January, but a
    completion between 1 January and that start still belongs to the calendar year of its own date
    (a record's year always comes from its own date), so the calendar running year is simply the
    calendar year of ``as_of``."""
    uk = current_year(as_of)
    return uk, current_year(as_of, is_australian=True, use_standard_year=False)


def year_to_close(as_of: date | datetime) -> str:
    """The year whose end was the latest year boundary on or before ``as_of``: from 1 August to
    31 December the UK year that ended on 31 July; from 1 January to 31 July the calendar year that
    ended on 31 December (closed on 1 January for calendar-year schools only)."""
    day = _uk_local_date(as_of)
    if day.month >= UK_START_MONTH:
        return f"{day.year - 1}/{day.year}"
    return f"{day.year - 1}/{day.year - 1}"


def benchmark_year(label: str) -> str:
    """The year a label is counted in for national benchmarks: ``Y/Y`` → ``Y/Y+1``; UK labels unchanged."""
    first, second = _parts(label)
    return f"{first}/{first + 1}"


def year_bounds(label: str) -> tuple[date, date]:
    """First and last day of the year, both inclusive (F12): UK 1 Aug Y .. 31 Jul Y+1,
    calendar 1 Jan Y .. 31 Dec Y."""
    first, second = _parts(label)
    if first == second:
        return date(first, 1, 1), date(first, 12, 31)
    return date(first, UK_START_MONTH, 1), date(second, UK_START_MONTH - 1, 31)


def year_start(label: str) -> date:
    """First day (inclusive) of the year."""
    return year_bounds(label)[0]


def year_end(label: str) -> date:
    """Last day (inclusive) of the year."""
    return year_bounds(label)[1]


def previous_year(label: str) -> str:
    """The year before, in the same rule (calendar years step by one calendar year)."""
    first, second = _parts(label)
    return f"{first - 1}/{second - 1}"


def next_year(label: str) -> str:
    """The year after, in the same rule (calendar years step by one calendar year)."""
    first, second = _parts(label)
    return f"{first + 1}/{second + 1}"


def uk_year_sql(expr_date: str) -> str:
    """A SQL expression (DuckDB and PostgreSQL) giving the canonical UK label of a DATE expression.

    ``expr_date`` is a trusted SQL expression (a column name or cast), not a value: values are
    always bound as parameters. NULL in gives NULL out. Same rule as :func:`academic_year_for`.
    """
    d = f"({expr_date})"
    start = (
        f"(CAST(EXTRACT(YEAR FROM {d}) AS INTEGER)"
        f" - CASE WHEN EXTRACT(MONTH FROM {d}) >= {UK_START_MONTH} THEN 0 ELSE 1 END)"
    )
    return f"(CAST({start} AS VARCHAR) || '/' || CAST({start} + 1 AS VARCHAR))"
