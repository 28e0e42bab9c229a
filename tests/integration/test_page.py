"""The page at `/` in a real headless Chromium (Debian chromium + chromedriver through Selenium) against gunicorn.

Uploads the cat photo and waits for every layer's maps and the top-5 classes, as a user would. Without a
browser the tests skip locally and fail in CI (CI=true). The screenshot lands in the pytest tmp dir; set
INSIGHT_UPDATE_DOCS=1 (or delete docs/insight/page.png) to refresh the committed copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO, photo_jpeg
from tests.integration.conftest import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
DOCS_SCREENSHOT = REPO / "docs" / "insight" / "page.png"
API_KEY = "page-test-key"


def _require_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = str(CHROMIUM)  # Debian's browser; no Selenium Manager download
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1800,1400", f"--user-data-dir={profile}", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def cat_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "chelsea.jpg"
    path.write_bytes(photo_jpeg("chelsea", quality=92))
    return path


def _wait_for_state(driver, states: set[str], timeout: float = 120) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") in states
    )
    return driver.find_element("tag name", "body").get_attribute("data-state")


def _severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_shows_maps_receptive_fields_and_cat_classes(server, browser, cat_jpeg, tmp_path):
    browser.get(f"{server.url}/")
    assert _wait_for_state(browser, {"idle", "error"}, timeout=30) == "idle", browser.find_element("id", "status").text
    browser.find_element("id", "file").send_keys(str(cat_jpeg))
    state = _wait_for_state(browser, {"done", "error"})
    assert state == "done", browser.find_element("id", "status").text

    spatial = ["stem", "stride4", "stride8", "stride16", "stride32", "head"]
    widths = browser.execute_script(
        "return [...document.querySelectorAll('img.map')].map(i => [i.dataset.layer, i.naturalWidth, i.complete])"
    )
    assert [layer for layer, _, _ in widths] == spatial  # one per spatial layer, in depth order, low -> high
    assert all(width > 0 and complete for _, width, complete in widths), widths
    by_level = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.level')].map("
        "c => [c.dataset.level, [...c.querySelectorAll('img.map')].map(i => i.dataset.layer)]))"
    )
    assert by_level == {"low": ["stem", "stride4"], "mid": ["stride8", "stride16"], "high": ["stride32", "head"]}

    classes = [item.get_attribute("data-class") for item in browser.find_elements("css selector", "#top5 li")]
    assert len(classes) == 5
    assert CAT_CLASSES & set(classes[:3]), classes
    squares = browser.execute_script(
        "return [...document.querySelectorAll('#rf-squares rect')]"
        ".map(r => [r.dataset.layer, +r.getAttribute('width')])"
    )  # receptive fields in input pixels, as GET /v1/models/{model} lists them
    assert dict(squares) == {"stem": 3, "stride4": 19, "stride8": 67, "stride16": 339, "stride32": 851, "head": 851}
    filters_width = browser.execute_script("return document.querySelector('.filters-img')?.naturalWidth")
    assert filters_width == 402
    assert _severe_console_messages(browser) == []

    screenshot = tmp_path / "page.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1800, height + 200)  # the whole page in one picture
    browser.find_element("tag name", "body").screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("INSIGHT_UPDATE_DOCS") == "1" or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(screenshot) as image:  # 256 colours: a third of the bytes, text stays sharp
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(DOCS_SCREENSHOT, optimize=True)


def test_page_opens_without_the_key_and_uses_the_one_typed_in(models_dir, browser, cat_jpeg):
    keyed = Server(models_dir, FEATURES_API_KEY=API_KEY).wait_ready()
    try:
        browser.get(f"{keyed.url}/")
        assert _wait_for_state(browser, {"idle", "error"}, timeout=30) == "error"
        assert "API key" in browser.find_element("id", "status").text
        browser.get_log("browser")  # the expected 401 is logged by the browser; start clean after it
        field = browser.find_element("id", "api-key")
        field.send_keys(API_KEY)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
        _wait_for_state(browser, {"idle"}, timeout=30)
        browser.find_element("id", "all-layers").click()  # deepest spatial layer per level only
        browser.find_element("id", "file").send_keys(str(cat_jpeg))
        assert _wait_for_state(browser, {"done", "error"}) == "done", browser.find_element("id", "status").text
        layers = browser.execute_script("return [...document.querySelectorAll('img.map')].map(i => i.dataset.layer)")
        assert layers == ["stride4", "stride16", "head"]
        assert _severe_console_messages(browser) == []
    finally:
        keyed.stop()
