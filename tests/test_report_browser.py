"""The report in a real browser: headless Chromium, network off, opened from a local file.

Checks that every figure decodes, that tables sort on click, that the console stays
clean, and leaves a screenshot at /tmp/fmcache_report.png to look at.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = "/tmp/fmcache_report.png"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
    reason="needs Chromium and chromedriver (Debian packages chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                # every request off the page goes to a closed port: the page must need none
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--window-size=1366,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system driver: Selenium must not look for (or download) one of its own
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, toy_report):
    browser.get(toy_report.path.resolve().as_uri())
    return browser


def test_every_figure_loads_offline(page):
    imgs = page.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    assert len(imgs) >= 7
    for complete, w, h, alt in imgs:
        assert complete and w > 0 and h > 0 and alt
    # nothing was fetched from outside the page
    external = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))")
    assert external == []


def test_tables_sort_on_click(page):
    from selenium.webdriver.common.by import By

    table = page.find_element(By.ID, "t-synthetic-lesion-sex-headline")
    buttons = table.find_elements(By.CSS_SELECTOR, "thead th button")
    column = [b.get_attribute("textContent") for b in buttons].index("AUC")

    def values():
        return [float(td.get_attribute("data-sort")) for td in
                table.find_elements(By.CSS_SELECTOR, f"tbody tr td:nth-child({column + 1})")]

    button = buttons[column]
    button.click()
    assert values() == sorted(values())
    assert table.find_elements(By.CSS_SELECTOR, "thead th")[column].get_attribute("aria-sort") == "ascending"
    button.click()
    assert values() == sorted(values(), reverse=True)
    # a text column sorts alphabetically
    buttons[1].click()
    names = [td.get_attribute("textContent") for td in table.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(2)")]
    assert names == sorted(names)


def test_no_console_errors_and_a_screenshot(page):
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    height = page.execute_script("return document.documentElement.scrollHeight")
    assert page.execute_script("return document.documentElement.scrollWidth") <= 1366  # no sideways scroll at laptop width
    shot = page.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1366, "height": min(height, 12000), "scale": 1}})
    with open(SCREENSHOT, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    assert os.path.getsize(SCREENSHOT) > 50_000
