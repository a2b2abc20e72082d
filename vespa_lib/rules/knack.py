"""Decoding Knack values into a value or a reason code (docs/DOMAIN.md, “Knack fields”; docs/ARCHITECTURE.md).

Contract: every ``decode_*`` returns ``Decoded(value, reason)``. ``reason is None`` means success;
blank input gives ``Decoded(None, "blank")``; any other reason is a stable code from ``REASONS``.
Decoders never raise on bad data and never guess (no month-first dates, no float rounding).
All functions are pure and read-only. ``*_sql`` functions (bottom of the module) return DuckDB
expressions that decode whole columns set-based with the same rules.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from numbers import Real
from typing import Any, Generic, NamedTuple, TypeVar

from vespa_lib.errors import DecodeError
from vespa_lib.rules.years import UK_TZ

__all__ = [
    "REASONS", "Connection", "Decoded", "Name", "answer_sql", "completion_date", "decode_answer",
    "decode_bool", "decode_connection", "decode_date", "decode_email", "decode_name", "decode_score",
    "email_domain", "initials", "is_blank", "is_object_id", "is_test_account", "object_id_created",
    "q29_from_percentage", "score_sql", "uk_date_sql",
]

T = TypeVar("T")

REASONS: dict[str, str] = {
    "blank": "the value is empty (not an error; the caller decides what blank means)",
    "bad_date_format": "not a UK DD/MM/YYYY[ HH:MM[:SS]] or ISO YYYY-MM-DD[THH:MM[:SS]] date",
    "impossible_date": "date or time parts out of range (e.g. 31/02/2025, 00/01/2025, month-first 12/31/2024)",
    "excel_serial_date": "a bare number such as 45678: an Excel serial day count, not a date; never converted",
    "implausible_year": "the year is before 2000 or after 2100",
    "invalid_email": "not a single well-formed address (needs local@domain.tld, no spaces)",
    "multiple_emails": "more than one address in one value",
    "bad_name": "the name value has an unexpected type or shape",
    "bad_connection": "the connection value has an unexpected type or shape",
    "bad_object_id": "not a 24-hex-digit Knack/MongoDB record id",
    "bad_boolean": "not one of Yes/No, True/False, 1/0",
    "score_not_numeric": "the score is not a plain decimal number",
    "score_not_integer": "the score has a non-zero fractional part (e.g. 7.5)",
    "score_out_of_range": "the score is outside 0..10",
    "unanswered": "the answer is 0, which Knack uses for 'not answered'",
    "answer_not_numeric": "the answer is not a plain decimal number",
    "answer_not_integer": "the answer has a non-zero fractional part",
    "answer_out_of_range": "the answer is outside 1..5 (or the percentage outside 0..100)",
}


class Decoded(NamedTuple, Generic[T]):
    """A decoded value, or None with a reason code from ``REASONS``."""

    value: T | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Name:
    first: str | None
    last: str | None
    full: str | None


@dataclass(frozen=True)
class Connection:
    id: str | None
    identifier: str


def _fail(reason: str) -> Decoded[Any]:
    return Decoded(None, reason)


def is_blank(value: object) -> bool:
    """None, empty/whitespace text, NaN and pandas NA count as blank."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, float) and value != value:  # NaN from a pandas column
        return True
    return isinstance(value, str) and value.strip() == ""


_TAG = re.compile(r"<[^>]*>")


def _text(value: str) -> str:
    """Strip HTML tags and entities, collapse whitespace."""
    return " ".join(html.unescape(_TAG.sub(" ", value)).split())


# ---------------------------------------------------------------- dates
# docs/DOMAIN.md, “Knack fields”: UK day-first only; never month-first (F6).
_UK_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})(?:[ T]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?)?")
_ISO_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_SERIAL = re.compile(r"[0-9]{5}(?:\.[0-9]+)?")
DATE_TRIM = " \t\r\n"
YEAR_MIN, YEAR_MAX = 2000, 2100


def _offset(text: str | None) -> timezone | None:
    if text is None:
        return None
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _build(parts: tuple, tz_text: str | None = None, micro: str | None = None) -> Decoded[date | datetime]:
    y, mo, d, hh, mi, ss = parts
    try:
        if hh is None:
            value: date | datetime = date(int(y), int(mo), int(d))
        else:
            us = int((micro or "0").ljust(6, "0"))
            value = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), us, tzinfo=_offset(tz_text))
    except ValueError:
        return _fail("impossible_date")
    if not YEAR_MIN <= value.year <= YEAR_MAX:
        return _fail("implausible_year")
    return Decoded(value)


def decode_date(value: object) -> Decoded[date | datetime]:
    """A Knack date: ``DD/MM/YYYY`` → date, with ``HH:MM[:SS]`` → naive datetime (UK local);
    ISO ``YYYY-MM-DD`` → date, ISO datetime → datetime (aware when it carries Z or an offset)."""
    if is_blank(value):
        return _fail("blank")
    if isinstance(value, datetime | date):
        ok = YEAR_MIN <= value.year <= YEAR_MAX
        return Decoded(value) if ok else _fail("implausible_year")
    if isinstance(value, Real) and not isinstance(value, bool):
        return _fail("excel_serial_date" if 10000 <= float(value) < 100000 else "bad_date_format")
    if not isinstance(value, str):
        return _fail("bad_date_format")
    text = value.strip(DATE_TRIM)
    if m := _UK_DATE.fullmatch(text):
        d, mo, y, hh, mi, ss = m.groups()
        return _build((y, mo, d, hh, mi, ss))
    if m := _ISO_DATE.fullmatch(text):
        return _build(m.groups()[:6], tz_text=m.group(8), micro=m.group(7))
    return _fail("excel_serial_date" if _SERIAL.fullmatch(text) else "bad_date_format")


def completion_date(decoded: Decoded | date | datetime) -> date:
    """The UK local date of a decoded date value (aware datetimes converted to Europe/London).
    Raises DecodeError when the decoding failed: a failed date is never replaced by a guess (F1)."""
    value = decoded.value if isinstance(decoded, Decoded) else decoded
    if isinstance(decoded, Decoded) and not decoded.ok:
        raise DecodeError(decoded.reason or "blank", None,
                          f"No completion date: the value did not decode ({decoded.reason}). "
                          "Set the record aside with this reason; never substitute today's date.")
    if isinstance(value, datetime):
        return value.astimezone(UK_TZ).date() if value.tzinfo is not None else value.date()
    if isinstance(value, date):
        return value
    raise DecodeError("bad_date_format", value, f"{value!r} is not a date; decode it with decode_date first.")


# ---------------------------------------------------------------- emails
_EMAIL = re.compile(r"[^@\s<>\"',;]+@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}")
_MAILTO = re.compile(r"""href\s*=\s*["']mailto:([^"'?]*)""", re.IGNORECASE)


def decode_email(value: str | dict | None) -> Decoded[str]:
    """An email from a plain address, an HTML ``mailto`` anchor or an API ``{"email": ...}`` dict;
    trimmed and lower-cased. When an anchor's href and text differ, the mailto address wins."""
    if isinstance(value, dict):
        value = value.get("email")
    if is_blank(value):
        return _fail("blank")
    if not isinstance(value, str):
        return _fail("invalid_email")
    hrefs = _MAILTO.findall(value)
    if len(hrefs) > 1:
        return _fail("multiple_emails")
    text = html.unescape(hrefs[0]) if hrefs else _text(value)
    text = text.strip().lower()
    if text.startswith("mailto:"):
        text = text[len("mailto:"):]
    if text.count("@") > 1:
        return _fail("multiple_emails")
    return Decoded(text) if _EMAIL.fullmatch(text) else _fail("invalid_email")


def email_domain(email: str) -> str:
    """The lower-cased domain of an email (decoded first). Raises DecodeError for an invalid email."""
    d = decode_email(email)
    if not d.ok:
        raise DecodeError(d.reason or "blank", email, f"{email!r} has no domain: {d.reason}.")
    return d.value.rsplit("@", 1)[1]


def is_test_account(email: str | dict | None) -> bool:
    """True for VESPA's own test accounts (``@vespa.academy``), excluded from statistics (F15)."""
    d = decode_email(email)
    return d.ok and d.value.endswith("@vespa.academy")


# ---------------------------------------------------------------- names
def _part(v: object) -> str | None:
    return None if is_blank(v) or not isinstance(v, str) else (_text(v) or None)


def decode_name(value: object = None, *, first: object = None, last: object = None,
                full: object = None) -> Decoded[Name]:
    """A name from CSV sub-columns (``first``/``last``/``full``), an API dict or plain text (= full).
    A missing full name is composed from first and last; a full name is never split (no guessing)."""
    if isinstance(value, dict):
        first, last, full = value.get("first", first), value.get("last", last), value.get("full", full)
    elif isinstance(value, str):
        full = value if is_blank(full) else full
    elif not is_blank(value):
        return _fail("bad_name")
    if any(not is_blank(v) and not isinstance(v, str) for v in (first, last, full)):
        return _fail("bad_name")
    f, la, fu = _part(first), _part(last), _part(full)
    if fu is None and (f or la):
        fu = " ".join(p for p in (f, la) if p)
    if fu is None:
        return _fail("blank")
    return Decoded(Name(f, la, fu))


def initials(name: Name) -> str:
    """Upper-case initials: first and last name, else the first letter of each word of the full name."""
    words = [w for w in (name.first, name.last) if w] or (name.full or "").split()
    return "".join(w[0].upper() for w in words)


# ---------------------------------------------------------------- connections and ids
_OID = re.compile(r"[0-9a-fA-F]{24}")
_SPAN = re.compile(r"""<span[^>]*class\s*=\s*["']([^"']*)["'][^>]*>(.*?)</span>""", re.IGNORECASE | re.DOTALL)


def is_object_id(text: object) -> bool:
    """True for a 24-hex-digit record id."""
    return isinstance(text, str) and _OID.fullmatch(text.strip()) is not None


def object_id_created(oid: str) -> datetime:
    """Creation time (aware, UTC) of a record id: its first 8 hex digits are Unix seconds (docs/DOMAIN.md, “Knack fields”)."""
    if not is_object_id(oid):
        raise DecodeError("bad_object_id", oid, f"{oid!r} is not a 24-hex-digit record id; check the id column.")
    return datetime.fromtimestamp(int(oid.strip()[:8], 16), tz=UTC)


def _connection_piece(piece: str) -> Connection | None:
    text = _text(piece)
    if not text:
        return None
    return Connection(text.lower() if is_object_id(text) else None, text)


def decode_connection(value: str | list | None) -> Decoded[list[Connection]]:
    """Connections from an API ``_raw`` list of ``{"id", "identifier"}`` dicts, or CSV text of
    comma-separated identifiers (a 24-hex piece is an id). HTML wrappers are stripped; a
    ``<span class="<id>">Name</span>`` wrapper yields both the id and the name."""
    if isinstance(value, list):
        out = []
        for item in value:
            if not isinstance(item, dict):
                return _fail("bad_connection")
            rid, ident = item.get("id"), item.get("identifier")
            rid = rid.strip().lower() if is_object_id(rid) else None
            ident = _text(ident) if isinstance(ident, str) else ""
            if rid is None and not ident:
                return _fail("bad_connection")
            out.append(Connection(rid, ident or rid))
        return Decoded(out) if out else _fail("blank")
    if is_blank(value):
        return _fail("blank")
    if not isinstance(value, str):
        return _fail("bad_connection")
    spans = _SPAN.findall(value)
    if spans:
        out = [Connection(c.strip().lower() if is_object_id(c) else None, _text(t)) for c, t in spans]
    else:
        out = [c for c in map(_connection_piece, _text(value).split(",")) if c is not None]
    return Decoded(out) if out else _fail("blank")


# ---------------------------------------------------------------- booleans
_TRUE, _FALSE = {"yes", "true", "1"}, {"no", "false", "0"}


def decode_bool(value: object) -> Decoded[bool]:
    """Yes/No, True/False, 1/0 (case-insensitive); Python bools pass through."""
    if isinstance(value, bool):
        return Decoded(value)
    if is_blank(value):
        return _fail("blank")
    if isinstance(value, int) and value in (0, 1):
        return Decoded(bool(value))
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return Decoded(text in _TRUE)
    return _fail("bad_boolean")


# ---------------------------------------------------------------- scores and answers
# A plain decimal number: optional sign, ASCII digits, optional fraction. No exponents, no 'nan'.
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
NUMBER_TRIM = " \t\r\n"


def _number(value: object) -> Decimal | None:
    """The exact decimal value of a number or plain numeric text, or None (never a float guess)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, float):
        return Decimal(value) if value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip(NUMBER_TRIM)):
        try:
            return Decimal(value.strip(NUMBER_TRIM))
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
            return None
    return None


def decode_score(value: object) -> Decoded[int]:
    """An element/overall score 0..10: ``7``, ``"7"``, ``"7.0"``, ``7.0`` → 7 (F7).
    Checks in order: numeric, range 0..10, integral."""
    if is_blank(value):
        return _fail("blank")
    n = _number(value)
    if n is None:
        return _fail("score_not_numeric")
    if not 0 <= n <= 10:
        return _fail("score_out_of_range")
    if n != n.to_integral_value():
        return _fail("score_not_integer")
    return Decoded(int(n))


def q29_from_percentage(pct: object) -> int:
    """Convert a ``q29_vision_grades`` percentage to 1..5 (docs/DOMAIN.md, “Knack fields”): upper bounds inclusive,
    so ≤20→1, ≤40→2, ≤60→3, ≤80→4, ≤100→5; a fraction above a bound goes up (20.5 → 2).
    Raises DecodeError(``answer_out_of_range``) outside 0..100, (``answer_not_numeric``) for non-numbers."""
    n = _number(pct)
    if n is None:
        raise DecodeError("answer_not_numeric", pct, f"Percentage {pct!r} is not a number.")
    if not 0 <= n <= 100:
        raise DecodeError("answer_out_of_range", pct, f"Percentage {pct!r} is outside 0..100.")
    return next(i for i, bound in enumerate((20, 40, 60, 80, 100), start=1) if n <= bound)


def decode_answer(value: object, *, percentage: bool = False) -> Decoded[int]:
    """A Likert answer 1..5 (0 → ``unanswered``). With ``percentage=True`` the value is a 0..100
    percentage converted by :func:`q29_from_percentage`."""
    if is_blank(value):
        return _fail("blank")
    n = _number(value)
    if n is None:
        return _fail("answer_not_numeric")
    if percentage:
        try:
            return Decoded(q29_from_percentage(n))
        except DecodeError as exc:
            return _fail(exc.reason)
    if n == 0:
        return _fail("unanswered")
    if not 1 <= n <= 5:
        return _fail("answer_out_of_range")
    if n != n.to_integral_value():
        return _fail("answer_not_integer")
    return Decoded(int(n))


# ---------------------------------------------------------------- SQL equivalents (DuckDB)
# The import decodes millions of values set-based; these expressions apply the same rules as the
# Python decoders: they yield the value exactly when the decoder succeeds, else NULL (tested with
# hypothesis in tests/test_knack.py). ``col`` is a trusted SQL expression (a column), never a value.
_SQL_TRIM = "' ' || chr(9) || chr(13) || chr(10)"


def _trimmed(col: str) -> str:
    return f"trim(CAST(({col}) AS VARCHAR), {_SQL_TRIM})"


def _number_sql(col: str) -> tuple[str, str, str, str, str]:
    """(matches, negative, fraction_nonzero, significant integer digits, integer value) for plain
    decimal text, compared digit-wise so long inputs are never rounded."""
    s = _trimmed(col)
    digits = f"ltrim(regexp_extract({s}, '[0-9]+'), '0')"
    return (
        f"regexp_full_match({s}, '{_NUMBER.pattern}')",
        f"starts_with({s}, '-')",
        f"regexp_matches({s}, '\\.[0-9]*[1-9]')",
        f"length({digits})",
        f"COALESCE(TRY_CAST(NULLIF({digits}, '') AS INTEGER), 0)",
    )


def score_sql(col: str) -> str:
    """DuckDB expression: the score 0..10 as INTEGER when :func:`decode_score` succeeds, else NULL."""
    match, neg, frac, width, n = _number_sql(col)
    return (f"(CASE WHEN {match} AND NOT {frac} AND {width} <= 2 AND {n} <= 10 "
            f"AND (NOT {neg} OR {n} = 0) THEN {n} END)")


def answer_sql(col: str, *, percentage: bool = False) -> str:
    """DuckDB expression: the answer 1..5 as INTEGER when :func:`decode_answer` succeeds, else NULL."""
    match, neg, frac, width, n = _number_sql(col)
    if not percentage:
        return f"(CASE WHEN {match} AND NOT {frac} AND {width} <= 1 AND {n} BETWEEN 1 AND 5 AND NOT {neg} THEN {n} END)"
    # ceil(value) decides the bucket because the upper bounds are inclusive (20.5 → 2).
    ceil = f"({n} + CASE WHEN {frac} THEN 1 ELSE 0 END)"
    in_range = f"{match} AND {width} <= 3 AND {ceil} <= 100 AND (NOT {neg} OR {ceil} = 0)"
    return (f"(CASE WHEN NOT ({in_range}) THEN NULL WHEN {ceil} <= 20 THEN 1 WHEN {ceil} <= 40 THEN 2 "
            f"WHEN {ceil} <= 60 THEN 3 WHEN {ceil} <= 80 THEN 4 ELSE 5 END)")


def _group(s: str, pattern: str, i: int) -> str:
    return f"TRY_CAST(NULLIF(regexp_extract({s}, '{pattern}', {i}), '') AS INTEGER)"


def uk_date_sql(col: str) -> str:
    """DuckDB expression: the UK local DATE of a Knack date value (as decode_date + completion_date),
    or NULL when :func:`decode_date` fails. Needs DuckDB's ICU time zones for offset timestamps."""
    s = _trimmed(col)
    uk, iso = _UK_DATE.pattern, _ISO_DATE.pattern

    def ok_time(p: str) -> str:
        h, mi, sec = (_group(s, p, i) for i in (4, 5, 6))
        return (f"({h} IS NULL OR ({h} <= 23 AND {mi} <= 59 AND COALESCE({sec}, 0) <= 59))")

    def ymd(p: str, order: tuple[int, int, int]) -> tuple[str, str, str]:
        return tuple(_group(s, p, i) for i in order)  # type: ignore[return-value]

    uy, um, ud = ymd(uk, (3, 2, 1))
    iy, im, id_ = ymd(iso, (1, 2, 3))
    tz = f"regexp_extract({s}, '{iso}', 8)"
    digits = f"replace(substr({tz}, 2), ':', '')"
    minutes = (f"(CASE WHEN starts_with({tz}, '-') THEN -1 ELSE 1 END * "
               f"(TRY_CAST(substr({digits}, 1, 2) AS INTEGER) * 60 + TRY_CAST(substr({digits}, 3, 2) AS INTEGER)))")
    stamp = f"try(make_timestamp({iy}, {im}, {id_}, {_group(s, iso, 4)}, {_group(s, iso, 5)}, COALESCE({_group(s, iso, 6)}, 0)))"
    london = f"CAST(timezone('Europe/London', timezone('UTC', {stamp} - to_minutes(CAST({minutes} AS BIGINT)))) AS DATE)"
    return (
        f"(CASE WHEN regexp_full_match({s}, '{uk}') THEN CASE WHEN {ok_time(uk)} AND {uy} BETWEEN {YEAR_MIN} AND {YEAR_MAX} "
        f"THEN try(make_date({uy}, {um}, {ud})) END "
        f"WHEN regexp_full_match({s}, '{iso}') THEN CASE WHEN {ok_time(iso)} AND {iy} BETWEEN {YEAR_MIN} AND {YEAR_MAX} THEN "
        f"CASE WHEN {tz} = '' THEN try(make_date({iy}, {im}, {id_})) WHEN {tz} = 'Z' THEN "
        f"CAST(timezone('Europe/London', timezone('UTC', {stamp})) AS DATE) "
        f"WHEN abs({minutes}) < 1440 AND try(make_date({iy}, {im}, {id_})) IS NOT NULL THEN {london} END END END)"
    )
