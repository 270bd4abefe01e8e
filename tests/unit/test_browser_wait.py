"""The browser tests' wait_for: which WebDriver errors mean "the page is being replaced, look again"."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

from tests.browser.pages import wait_for


def _after(errors: list[Exception], value: str) -> Callable[[], str]:
    """A predicate that raises each of `errors` in turn, then returns `value`."""
    pending = iter(errors)

    def predicate() -> str:
        error = next(pending, None)
        if error is not None:
            raise error
        return value

    return predicate


def test_an_element_replaced_by_a_navigation_is_looked_up_again() -> None:
    # what Chromium answered in CI when the banner was read just as the page was replaced
    replaced = WebDriverException('unknown error: unhandled inspector error: {"code":-32000,'
                                  '"message":"Node with given id does not belong to the document"}')
    stale = StaleElementReferenceException("stale element reference")
    assert wait_for(_after([replaced, stale], "本人"), 5) == "本人"


def test_any_other_webdriver_error_fails_at_once() -> None:
    with pytest.raises(WebDriverException, match="chrome not reachable"):
        wait_for(_after([WebDriverException("chrome not reachable")], "本人"), 5)
