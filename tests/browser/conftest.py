"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for the portal's journeys.

One browser per test module, started with a new empty profile and everything that could reach the network
switched off. Screenshots at 360x780 go to a temporary directory, or to docs/portal/ with EHC_SCREENSHOTS=docs
(each run draws new QR codes, so a plain test run would otherwise leave changed images behind). The
accessibility check injects axe-core (unpacked from the npm registry by scripts/install-browser into
~/.cache/ehc/test-tools, or EHC_TEST_TOOLS) into the page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "portal" if os.environ.get("EHC_SCREENSHOTS") == "docs" \
    else Path(tempfile.gettempdir()) / "ehc-portal-screenshots"
TOOLS = Path(os.environ.get("EHC_TEST_TOOLS", Path.home() / ".cache" / "ehc" / "test-tools"))
WIDTH, HEIGHT = 360, 780


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _need_tools() -> tuple[str, str, Path]:
    chromium = _find("chromium", "chromium-browser")
    driver = _find("chromedriver")
    axe = TOOLS / "axe-core" / "axe.min.js"
    if not (chromium and driver and axe.exists()):
        script = ROOT / "scripts" / "install-browser"
        subprocess.run([str(script)], check=False, timeout=600)
        chromium, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not (chromium and driver and axe.exists()):
        message = "headless chromium, chromium-driver and axe-core are needed (scripts/install-browser)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver, axe


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver, axe = _need_tools()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never look for a download
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--lang=zh-CN", f"--window-size={WIDTH},{HEIGHT}",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations included
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    # a phone's viewport (headless windows are at least 500 px wide; the device metrics make it 360)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": True})
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    drv.axe_source = axe.read_text(encoding="utf-8")
    try:
        yield drv
    finally:
        drv.quit()
