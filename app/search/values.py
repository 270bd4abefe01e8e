"""Search value helpers shared by extraction and compilation (FHIR R4 search, http.html#search §3.1.1).

- strings: one normal form for indexing and matching (NFKD, combining marks removed, casefolded, spaces
  collapsed), so 'Zhāng  WEI' and 'zhang wei' and full-width 'ＺＨＡＮＧ' meet;
- dates: any FHIR date/dateTime/instant becomes the half-open UTC range [lo, hi) its precision covers; a value
  without a zone (a date, a search value like `2026-11-30T08:00`) is read in China's time, the server's local
  zone in R4's words (search.html#date): `date=2026-11-30` is that day in China, not eight hours later;
- numbers: the implicit range of a decimal's significant digits (100 -> [99.5, 100.5));
- escaping: '\\,' '\\|' '\\$' '\\\\' in search values.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from app.core.timeutil import CHINA_TIME, naive_utc

DATE_MIN = datetime(1, 1, 1)
DATE_MAX = datetime(9999, 12, 31, 23, 59, 59, 999000)  # MongoDB keeps milliseconds

_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+\-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,  # FHIR's digits are 0-9: \d alone also takes '１９９０' (full-width) and reads it as a year
)
_SPACES = re.compile(r"\s+")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)


def normalize(text: str) -> str:
    """The form strings are indexed and compared in."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped.casefold()).strip()


def _add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    if dt.year + y > 9999:
        return DATE_MAX
    return dt.replace(year=dt.year + y, month=m + 1)


def date_range(text: str) -> tuple[datetime, datetime]:
    """'1990' -> [1989-12-31T16:00, 1990-12-31T16:00) in naive UTC (a year of China); raises ValueError for
    anything not a FHIR date."""
    m = _DATE_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a FHIR date: {text!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        parts = [int(f) for f in (year, month or 1, day or 1, hour or 0, minute or 0, second or 0)]
        leap = parts[5] == 60  # 23:59:60, a leap second: FHIR allows it, datetime does not; read as the next second
        lo = datetime(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5] - leap, micro)
    except ValueError as exc:
        raise ValueError(f"not a FHIR date: {text!r} ({exc})") from None
    if leap:
        lo = shifted(lo, timedelta(seconds=1))
    if month is None:
        hi = _add_months(lo, 12)
    elif day is None:
        hi = _add_months(lo, 1)
    elif hour is None:
        hi = shifted(lo, timedelta(days=1))
    elif second is None:
        hi = shifted(lo, timedelta(minutes=1))
    elif frac is None:
        hi = shifted(lo, timedelta(seconds=1))
    else:
        hi = shifted(lo, timedelta(microseconds=max(1, 10 ** (6 - min(len(frac), 6)))))
    if tz != "Z":
        offset = CHINA_TIME if tz is None else timezone(
            (1 if tz[0] == "+" else -1) * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        lo = naive_utc(lo.replace(tzinfo=offset))
        hi = naive_utc(hi.replace(tzinfo=offset)) if hi != DATE_MAX else hi
    return _ms_floor(lo), min(_ms_ceil(hi), DATE_MAX)


def shifted(dt: datetime, delta: timedelta) -> datetime:
    """dt + delta, held to the calendar's end: '9999-12-31' is a common "no end" date, and its day ends past
    datetime's last instant."""
    try:
        return dt + delta
    except OverflowError:
        return DATE_MAX if delta > timedelta(0) else DATE_MIN


def _ms_floor(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def _ms_ceil(dt: datetime) -> datetime:
    # MongoDB stores milliseconds: round the exclusive end up so the range never shrinks.
    floor = _ms_floor(dt)
    return floor if floor == dt or floor >= DATE_MAX else floor + timedelta(milliseconds=1)


def period_range(period: dict) -> tuple[datetime, datetime] | None:
    """A Period's [lo, hi): an open start is DATE_MIN, an open end DATE_MAX."""
    start, end = period.get("start"), period.get("end")
    if start is None and end is None:
        return None
    lo = date_range(start)[0] if isinstance(start, str) else DATE_MIN
    hi = date_range(end)[1] if isinstance(end, str) else DATE_MAX
    return lo, hi


def timing_range(timing: dict) -> tuple[datetime, datetime] | None:
    """A Timing's outer limits, from its first event or the start of its bounding Period to its last event or
    that Period's end: R4 search.html#date ignores the schedule's details and matches only these limits."""
    ranges = [date_range(e) for e in timing.get("event", []) if isinstance(e, str)]
    repeat = timing.get("repeat")
    bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
    if isinstance(bounds, dict) and (r := period_range(bounds)):
        ranges.append(r)
    if not ranges:
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def decimal_range(text: str) -> tuple[float, float, float]:
    """(value, lo, hi), [lo, hi) being the range of the value's significant digits; ValueError if none."""
    if not _DECIMAL.match(text.strip()):  # FHIR's decimal: Python's Decimal also reads "5_1" and Arabic digits
        raise ValueError(f"not a number: {text!r}")
    try:
        d = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {text!r}") from exc
    if not d.is_finite() or text.strip().lower().startswith(("+inf", "inf", "nan", "-inf")):
        raise ValueError(f"not a number: {text!r}")
    if not math.isfinite(float(d)):  # 1e400: as a double, infinity, which no stored value is
        raise ValueError(f"{text!r} is beyond the range of numbers this server stores (about ±1.8e308)")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return float(d), float(d - half), float(d + half)


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on `sep` not preceded by a backslash; escapes are kept for unescape()."""
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", text)


def escape(text: str) -> str:
    """A value as a search parameter writes it (search.html#escaping): the inverse of unescape()."""
    return re.sub(r"([,|$\\])", r"\\\1", text)


def digits(text: str) -> str:
    """A phone number's digits (a leading '+' kept): '138-0013 8000' -> '13800138000'."""
    body = re.sub(r"\D", "", text)
    return ("+" + body) if text.strip().startswith("+") and body else body
