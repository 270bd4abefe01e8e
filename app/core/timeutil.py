"""UTC instants as FHIR writes them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

FIRST, LAST = datetime.min, datetime.max  # naive UTC ends of what Python dates hold
# China keeps one time zone, UTC+8 without daylight saving: the zone in which residents and hospitals mean a date
# that carries none (a consent's period "2026-12-01", a birth date), whatever zone the server's clock is set to.
CHINA_TIME = timezone(timedelta(hours=8), "CST")


def today_in_china() -> date:
    """Today's date in China (a server whose clock runs in UTC is a day behind from 00:00 to 08:00)."""
    return datetime.now(CHINA_TIME).date()


def utcnow() -> datetime:
    """Now in UTC as a naive datetime truncated to milliseconds: exactly what MongoDB stores and returns
    (the client runs with tz_aware=False), so stored and fresh values compare."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def to_instant(dt: datetime) -> str:
    """2024-01-02T03:04:05.678Z"""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def http_date(dt: datetime) -> str:
    """RFC 7231 date for Last-Modified."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def naive_utc(dt: datetime) -> datetime:
    """An aware datetime as the naive UTC the database stores. One that falls outside Python's calendar once in
    UTC (9999-12-31T23:59:59-12:00, 0001-01-01T00:00:00+14:00, both valid FHIR) is held to its end."""
    if dt.tzinfo is None:
        return dt
    try:
        return dt.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # past the last day with a negative offset, before the first with a positive one
        offset = dt.utcoffset()
        return LAST if offset is not None and offset < timedelta(0) else FIRST
