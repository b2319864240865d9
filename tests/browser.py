"""A real headless Chromium (Debian's chromium and chromium-driver) driven by selenium, at a
phone's window size, keeping screenshots as test artifacts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require
from tests.helpers import REPO

# Screenshots land here (git-ignored); PGCE_TEST_ARTIFACTS moves them (a CI upload directory).
ARTIFACTS = Path(os.environ.get("PGCE_TEST_ARTIFACTS", REPO / "test-artifacts"))
PHONE = (390, 844)  # CSS pixels of a common phone


@contextmanager
def chromium(size: tuple[int, int] = PHONE) -> Iterator[object]:
    chromium_path = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    require(chromium_path is not None, "program 'chromium'")
    require(driver_path is not None, "program 'chromedriver' (Debian package chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "Python package selenium (pip install -e '.[test]')")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium_path)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(driver_path)))
    driver.set_page_load_timeout(60)
    # A phone's viewport (a desktop window has a minimum width wider than a phone).
    _viewport(driver, *size)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: object, name: str) -> Path:
    """Save the whole page (as tall as it is, at the window's width) as `name`.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
    _viewport(driver, PHONE[0], max(height, PHONE[1]))
    try:
        driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    finally:
        _viewport(driver, *PHONE)
    return path


def _viewport(driver: object, width: int, height: int) -> None:
    driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
    )
