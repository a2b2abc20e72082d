"""Which nights the rehearsal runs, and what is special about them.

From the archive import (``START``) to mid-September of the next school year (``END``). ``full``:
every night. ``compressed`` (default): every night of the weeks around the key dates (the import,
31 December / 1 January, late January, 31 July / 1 August), weekly elsewhere. ``short`` (the test):
a few nights around each key date. The validation's ``sync_window_days`` is the number of
consecutive nights simulated up to tonight (at most 7): a night the compressed calendar does not
simulate is not a missed sync.
"""

from __future__ import annotations

from datetime import date, timedelta

__all__ = ["CALENDAR_CLOSE", "END", "REFUSE", "ROLLOVER", "SKIP", "START", "nights", "window"]

START = date(2025, 8, 20)  # the archive import
END = date(2026, 9, 15)
CALENDAR_CLOSE = date(2026, 1, 1)  # calendar-year schools close 2025/2025
ROLLOVER = date(2026, 8, 1)  # the UK rollover: 2025/2026 closes
SKIP = date(2025, 12, 29)  # the sync does not run (the next validation must name exactly this night)
REFUSE = date(2026, 1, 25)  # Knack's export misses a third of a school: the policy must refuse
KEY_WEEKS = ((START, START + timedelta(days=6)), (date(2025, 12, 27), date(2026, 1, 3)),
             (date(2026, 1, 23), date(2026, 1, 29)), (date(2026, 7, 28), date(2026, 8, 4)))
SHORT = (START, START + timedelta(days=1), SKIP, SKIP + timedelta(days=1), date(2025, 12, 31), CALENDAR_CLOSE,
         REFUSE, REFUSE + timedelta(days=1), date(2026, 7, 31), ROLLOVER, ROLLOVER + timedelta(days=1))


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def nights(kind: str = "compressed") -> list[date]:
    """The simulated nights, in order."""
    if kind == "full":
        return _days(START, END)
    if kind == "short":
        return list(SHORT)
    if kind != "compressed":
        raise ValueError(f"calendar {kind!r}: use compressed, full or short")
    chosen = {d for first, last in KEY_WEEKS for d in _days(first, last)}
    chosen |= set(_days(START, END)[::7]) | {END}
    return sorted(chosen)


def window(night: date, simulated: list[date]) -> int:
    """Consecutive simulated nights ending with ``night`` (at most 7)."""
    days, n = set(simulated), 0
    while n < 7 and night - timedelta(days=n) in days:
        n += 1
    return max(1, n)
