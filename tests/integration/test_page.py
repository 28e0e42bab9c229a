"""The page at `/` in a real headless Chromium (Debian chromium + chromedriver through Selenium) against gunicorn.

Uploads the cat photo and waits for every layer's maps and the top-5 classes, as a user would, and for its
nearest indexed neighbours at a low, a mid and a high layer (an index built with the real `python -m extract
--index`). Without a browser the tests skip locally and fail in CI (CI=true). The screenshots land in the pytest
tmp dir; set INSIGHT_UPDATE_DOCS=1 (or delete docs/insight/page.png, page_search.png) to refresh the committed copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO, photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
DOCS_SCREENSHOT = REPO / "docs" / "insight" / "page.png"
DOCS_SEARCH_SCREENSHOT = REPO / "docs" / "insight" / "page_search.png"
API_KEY = "page-test-key"
# What the browser logs when GET /v1/index answers 404 (a service without an index): the page expects it.
NO_INDEX_LOG = "/v1/index - Failed to load resource: the server responded with a status of 404"
ODD_NAME = '<b>&"camera.jpg'  # markup characters a page must show as text


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


def _severe_console_messages(driver, expected: str | None = None) -> list[str]:
    """The browser's errors, less those holding `expected` (a 404 the page answers for)."""
    messages = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return [message for message in messages if expected is None or expected not in message]


def _save_docs_screenshot(screenshot: Path, docs: Path) -> None:
    if os.environ.get("INSIGHT_UPDATE_DOCS") == "1" or not docs.exists():
        docs.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(screenshot) as image:  # 256 colours: a third of the bytes, text stays sharp
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(docs, optimize=True)


def _status(driver) -> str:
    return driver.find_element("id", "status").text


def _search_note(driver) -> tuple[str, str]:
    note = driver.find_element("id", "search-note")
    return note.text, note.get_attribute("class")


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
    note, note_class = _search_note(browser)  # this server has no index: one quiet line says how to add one
    assert "no search index" in note and "python -m extract IMAGES --model efficientnet_lite0" in note, note
    assert "--index" in note and "FEATURES_INDEX" in note, note
    assert note_class == "hint"
    assert browser.find_elements("css selector", ".search-column") == []
    assert _severe_console_messages(browser, expected=NO_INDEX_LOG) == []

    screenshot = tmp_path / "page.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1800, height + 200)  # the whole page in one picture
    browser.find_element("tag name", "body").screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    _save_docs_screenshot(screenshot, DOCS_SCREENSHOT)


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
        assert _severe_console_messages(browser, expected=NO_INDEX_LOG) == []
    finally:
        keyed.stop()


@pytest.fixture(scope="module")
def indexed_photos(models_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Six photos (k=6: every one is a neighbour in every column) indexed by the real CLI: (photos, index)."""
    root = tmp_path_factory.mktemp("indexed")
    photos = root / "photos"
    photos.mkdir()
    for name in ("chelsea", "astronaut", "coffee", "rocket", "coins"):
        (photos / f"{name}.jpg").write_bytes(photo_jpeg(name))
    (photos / ODD_NAME).write_bytes(photo_jpeg("camera"))
    index = root / "index"
    result = cli("extract", photos, "--model", "efficientnet_lite0", "--models-dir", models_dir,
                 "--out", root / "out", "--index", index, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return photos, index


# Per column: level, layer, heading, and per neighbour file name, tooltip, score and thumbnail width (0: none yet).
COLUMNS_JS = """
return [...document.querySelectorAll('.search-column')].map(c => ({
  level: c.dataset.level, layer: c.dataset.layer, heading: c.querySelector('h3').textContent,
  neighbours: [...c.querySelectorAll('.neighbour')].map(n => ({
    file: n.querySelector('.file').textContent, path: n.querySelector('.file').title,
    score: n.querySelector('.score').textContent,
    width: n.querySelector('img.thumb')?.naturalWidth ?? 0,
    missing: n.querySelector('.thumb.missing')?.title ?? null,
  })),
}));
"""


def _open_with_key(browser, url: str) -> None:
    browser.get(f"{url}/")
    assert _wait_for_state(browser, {"idle", "error"}, timeout=60) == "error"  # no key typed yet: 401
    browser.get_log("browser")  # the expected 401 is logged by the browser; start clean after it
    field = browser.find_element("id", "api-key")
    field.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    _wait_for_state(browser, {"idle"}, timeout=60)
    browser.find_element("id", "all-layers").click()  # three maps, not six: the search is what this test is about


def _wait_for_columns(browser, top_of_high: str, timeout: float = 120) -> list[dict]:
    """The columns once the upload is done and the high column's nearest neighbour is `top_of_high`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        if driver.find_element("tag name", "body").get_attribute("data-state") not in {"done", "error"}:
            return False
        columns = driver.execute_script(COLUMNS_JS)
        high = [c for c in columns if c["level"] == "high"]
        return columns if high and high[0]["neighbours"] and high[0]["neighbours"][0]["file"] == top_of_high else False

    try:
        return WebDriverWait(browser, timeout).until(ready)
    except TimeoutException:
        found = f"{_status(browser)!r} {_search_note(browser)!r}"
        raise AssertionError(f"no neighbours headed by {top_of_high} in {timeout} s: {found}") from None


def test_page_shows_nearest_indexed_images_per_level(models_dir, browser, indexed_photos, tmp_path):
    photos, index = indexed_photos
    indexed = Server(models_dir, FEATURES_API_KEY=API_KEY, FEATURES_INDEX=str(index)).wait_ready()
    try:
        _open_with_key(browser, indexed.url)
        browser.find_element("id", "file").send_keys(str(photos / "chelsea.jpg"))
        columns = _wait_for_columns(browser, "chelsea.jpg")
        state, status = browser.find_element("tag name", "body").get_attribute("data-state"), _status(browser)
        assert state == "done", status

        # The deepest indexed layer of each level (for high, the deepest before the logits): low | mid | high.
        assert [(c["level"], c["layer"]) for c in columns] == [("low", "stride4"), ("mid", "stride16"),
                                                               ("high", "embedding")]  # fmt: skip
        assert [c["heading"] for c in columns] == ["lowstride4", "midstride16", "highembedding"]
        captions = [e.text for e in browser.find_elements("css selector", ".search-column > p.hint")]
        assert captions[:2] == ["stride 4 px · receptive field 19 px", "stride 16 px · receptive field 339 px"]
        names = {"chelsea.jpg", "astronaut.jpg", "coffee.jpg", "rocket.jpg", "coins.jpg", ODD_NAME}
        for column in columns:
            found = column["neighbours"]
            assert {n["file"] for n in found} == names, column
            assert all(n["path"] == str(photos / n["file"]) for n in found), column
            assert all(n["width"] > 0 and n["missing"] is None for n in found), column  # every thumbnail loaded
            scores = [float(n["score"]) for n in found]
            assert all(len(n["score"].split(".")[1]) == 3 for n in found) and scores == sorted(scores, reverse=True)
        top = columns[2]["neighbours"][0]
        assert top["file"] == "chelsea.jpg" and float(top["score"]) >= 0.999, top
        # The odd name is text: no element made of it, shown literally, in full in the tooltip.
        assert browser.execute_script("return document.querySelectorAll('#neighbours b').length") == 0
        odd = [e for e in browser.find_elements("css selector", ".neighbour .file") if e.text == ODD_NAME]
        assert len(odd) == 3 and odd[0].get_attribute("title") == str(photos / ODD_NAME)  # as typed, once a column
        note, note_class = _search_note(browser)
        assert "6 indexed images" in note and note_class == "hint", note
        assert _severe_console_messages(browser) == []

        section = browser.find_element("id", "search")
        browser.set_window_size(1800, browser.execute_script("return document.documentElement.scrollHeight") + 200)
        browser.execute_script("arguments[0].scrollIntoView()", section)
        screenshot = tmp_path / "page_search.png"
        section.screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
        _save_docs_screenshot(screenshot, DOCS_SEARCH_SCREENSHOT)

        # A file gone since indexing: a placeholder whose tooltip is the service's explanation. Two uploads in a
        # row: the page shows the second one's neighbours only.
        (photos / "coins.jpg").unlink()
        browser.execute_cdp_cmd("Network.clearBrowserCache", {})  # thumbnails may be cached for 5 minutes
        browser.find_element("id", "file").send_keys(str(photos / "coffee.jpg"))
        browser.find_element("id", "file").send_keys(str(photos / "astronaut.jpg"))
        columns = _wait_for_columns(browser, "astronaut.jpg")
        assert len(columns) == 3
        for column in columns:
            gone = [n for n in column["neighbours"] if n["file"] == "coins.jpg"]
            assert len(gone) == 1 and gone[0]["width"] == 0, column
            assert "gone or unreadable" in gone[0]["missing"], gone
            assert all(n["width"] > 0 for n in column["neighbours"] if n["file"] != "coins.jpg"), column
        assert _severe_console_messages(browser, expected="/image?size=256 - Failed to load resource") == []
    finally:
        indexed.stop()
