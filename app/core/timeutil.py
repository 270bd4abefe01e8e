"""UTC instants as FHIR writes them."""

from __future__ import annotations

from datetime import UTC, datetime


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
