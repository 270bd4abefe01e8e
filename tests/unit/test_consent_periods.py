"""Consent periods (app.auth.consent): bounds read as a date search reads them, and a bound that cannot be read
failing closed both ways: a permit then covers nothing, a nested deny everything it names."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from app.auth.consent import consent_permits

ORG = {"reference": {"reference": "Organization/o1"}}
PERMIT: dict[str, Any] = {"status": "active", "provision": {
    "type": "permit", "actor": [ORG], "action": [{"coding": [{"code": "access"}]}]}}
AT = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def permits(period: dict[str, str] | None = None, deny_period: dict[str, str] | None = None) -> bool:
    consent = copy.deepcopy(PERMIT)
    if period is not None:
        consent["provision"]["period"] = period
    if deny_period is not None:
        consent["provision"]["provision"] = [{"type": "deny", "actor": [ORG], "period": deny_period}]
    return consent_permits(consent, "Observation", "o1", "31", AT)


@pytest.mark.parametrize(("period", "expected"), [
    (None, True),
    ({"end": "2026-06"}, True),  # month precision: through June
    ({"end": "2026-05"}, False),
    ({"end": "2026-06-15T11:59:59Z"}, False),  # the period ends with that second
    ({"end": "2026-06-15T11:59:60Z"}, True),  # a leap second, read as 12:00:00: its second is still inside
    ({"start": "2026-06-15T20:00:00+08:00"}, True),  # 12:00 UTC
    ({"start": "2026-06-15T20:00:01+08:00"}, False),
    ({"end": "not a date"}, False),  # unreadable: covers nothing (it was read as no end)
])
def test_a_permit_period(period: dict[str, str] | None, expected: bool) -> None:
    assert permits(period) is expected


def test_a_date_without_a_time_is_a_day_in_china() -> None:
    """A consent "until 2026-06-15" ends at midnight in China (16:00 UTC), and one "from 2026-06-16" applies from
    that midnight. They were read as UTC days: the first lasted eight hours longer than the resident granted, and
    the second was refused to a hospital until 08:00 in China."""
    late = datetime(2026, 6, 15, 17, 0, tzinfo=UTC)  # 01:00 on 16 June in China
    consent = copy.deepcopy(PERMIT)
    consent["provision"]["period"] = {"end": "2026-06-15"}
    assert consent_permits(consent, "Observation", "o1", "31", AT) is True  # 20:00 on the 15th in China
    assert consent_permits(consent, "Observation", "o1", "31", late) is False
    consent["provision"]["period"] = {"start": "2026-06-16"}
    assert consent_permits(consent, "Observation", "o1", "31", late) is True
    assert consent_permits(consent, "Observation", "o1", "31", AT) is False


def test_a_nested_deny_with_an_unreadable_bound_still_denies() -> None:
    assert permits(deny_period={"end": "2000-01-01"}) is True  # a deny that has ended
    assert permits(deny_period={"end": "not a date"}) is False
