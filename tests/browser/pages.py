"""What the browser tests do with a page: screenshots for the docs, the axe-core accessibility check, the
keyboard focus walk, and the 360 px layout check."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.browser.conftest import HEIGHT, SHOTS, WIDTH

AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


def shot(drv: Any, name: str) -> None:
    """A screenshot of the viewport (360x780) as <name>.png into SHOTS (docs/portal/ with EHC_SCREENSHOTS=docs)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    drv.execute_script("window.scrollTo(0, 0)")
    drv.save_screenshot(str(SHOTS / f"{name}.png"))


def axe(drv: Any) -> list[dict[str, Any]]:
    """axe-core violations of the page (WCAG 2.1 A/AA and best practices)."""
    drv.execute_script(drv.axe_source)
    result = drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}})"
        ".then(r => done({passes: r.passes.length, violations: r.violations.map(v => ({id: v.id, impact: v.impact,"
        " help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))}))"
        ".catch(e => done({passes: 0, violations: [{id: 'axe-error', help: String(e), nodes: []}]}));", AXE_TAGS)
    assert result["passes"] > 10, result  # axe really ran its rules (lang, labels, contrast ...)
    return list(result["violations"])


def focus_walk(drv: Any, steps: int = 40) -> list[dict[str, Any]]:
    """Press Tab through the page: each element reached, in order, with its position and focus outline."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    drv.execute_script("window.scrollTo(0, 0); document.activeElement && document.activeElement.blur();"
                       "document.body.focus();")
    seen: list[dict[str, Any]] = []
    for _ in range(steps):
        ActionChains(drv).send_keys(Keys.TAB).perform()
        info = drv.execute_script(
            "const e = document.activeElement; if (!e || e === document.body) return null;"
            "const r = e.getBoundingClientRect(); const s = getComputedStyle(e);"
            "return {tag: e.tagName, text: (e.innerText || e.value || e.name || '').slice(0, 40),"
            " top: r.top + window.scrollY, left: r.left, index: Array.prototype.indexOf.call("
            " document.querySelectorAll('*'), e), outline: s.outlineStyle + ' ' + s.outlineWidth,"
            " visible: r.width > 0 && r.height > 0};")
        if info is None or (seen and info["index"] == seen[0]["index"]):
            break
        seen.append(info)
    return seen


def check_page(drv: Any, name: str, problems: list[str]) -> None:
    """Screenshot, then the checks every page must pass; failures are collected (one report at the end)."""
    shot(drv, name)
    lang = drv.execute_script("return document.documentElement.lang")
    if lang not in ("zh-CN", "en"):
        problems.append(f"{name}: html lang is {lang!r}")
    width = drv.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    if width[0] > width[1] or width[1] > WIDTH:
        problems.append(f"{name}: the page is {width[0]} px wide in a {width[1]} px viewport (needs zoom)")
    for v in axe(drv):
        problems.append(f"{name}: axe {v['id']} ({v['impact']}): {v['help']} at {v['nodes']}")
    walk = focus_walk(drv)
    if not walk:
        problems.append(f"{name}: nothing takes keyboard focus")
    indexes = [w["index"] for w in walk]
    if indexes != sorted(indexes):
        problems.append(f"{name}: the focus order does not follow the page order: {[w['text'] for w in walk]}")
    for w in walk:
        if not w["visible"] and w["tag"] != "A":
            problems.append(f"{name}: focus reaches an invisible {w['tag']} {w['text']!r}")
        if w["outline"].startswith("none") and w["visible"]:
            problems.append(f"{name}: no visible focus indicator on {w['tag']} {w['text']!r}")
    for entry in drv.get_log("browser"):
        if entry.get("level") == "SEVERE" and "favicon.ico" not in entry.get("message", ""):
            problems.append(f"{name}: browser console: {entry['message'][:300]}")
    drv.execute_script("window.scrollTo(0, 0)")
    assert HEIGHT > 0


def wait_for(predicate: Callable[[], Any], seconds: float = 10.0, what: str = "condition") -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException

    end = time.monotonic() + seconds
    while True:
        try:
            value = predicate()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None  # the page is being replaced: look again
        except WebDriverException as error:
            # Chromium reports an element found just before a navigation replaced the document as an "unknown
            # error" rather than a stale element; it is the same race, so look again. Anything else is a failure.
            if "does not belong to the document" not in (error.msg or ""):
                raise
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
