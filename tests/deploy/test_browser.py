"""The demo page in a real headless browser (Debian's chromium + chromedriver, via selenium).

A real API process serving two bundles side by side: pick a user, add events from the item
search, see the history with titles and both models' recommendations switch from the
popularity fallback to the models. The screenshot is kept at $DEMO_SCREENSHOT when set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import API_KEY, ApiProc

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def server(deploy_bundles: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProc]:
    api = ApiProc(deploy_bundles, None, tmp_path_factory.mktemp("browser")).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_exe = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(chromium).exists() and Path(driver_exe).exists()):
        pytest.fail("chromium + chromium-driver are not installed: `make browser` installs them (Debian packages)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_exe), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_demo_page(server: ApiProc, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

    def texts(sel: str) -> list[str]:
        # One atomic read in the page: the page re-renders lists, so element handles go stale.
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", sel
        )

    browser.get(server.base + "/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "seqrec" in browser.title
    assert "sasrec-a" in browser.find_element(By.ID, "status").text

    # Both loaded models side by side; a new user gets the flagged popularity fallback.
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    user = browser.find_element(By.ID, "user")
    user.clear()
    user.send_keys("browser-user")
    browser.find_element(By.ID, "load").click()
    wait.until(lambda d: len(texts(".model[data-model='sasrec-b'] li")) == 10)
    models = browser.execute_script("return [...document.querySelectorAll('.model')].map(e => e.dataset.model)")
    assert models == ["sasrec-a", "sasrec-b"]
    assert all("popularity (no_history)" in b for b in texts(".model .badge"))
    assert texts(".model .score")  # scores shown

    # Add three events from the title search: history shows titles, recommendations come from the models.
    search = browser.find_element(By.ID, "search")
    search.send_keys("star")
    # Wait for the list of the full query: lists of earlier keystrokes re-render and go stale.
    wait.until(
        lambda d: (
            d.find_element(By.ID, "search-results").get_attribute("data-q") == "star"
            and len(texts("#search-results li")) >= 3
            and "star" in texts("#search-results li")[0].lower()
        )
    )
    for n in range(3):
        before = len(texts("#history li"))
        css("#search-results button")[n].click()
        wait.until(lambda d, before=before: len(texts("#history li")) == before + 1)
    wait.until(lambda d: all("model" in b and "history 3" in b for b in texts(".model .badge")))
    history = texts("#history li")
    assert len(history) == 3 and all("#" in h for h in history)  # title + id
    assert "star" in history[0].lower()  # the search matches the title case-insensitively
    assert "event stored" in browser.find_element(By.ID, "message").text
    assert texts(".model li.changed"), "changed recommendations are highlighted"
    assert any(t.startswith("because you interacted with ") for t in texts(".model li .because"))

    # Server-side truth: the page showed what the API serves.
    api_rec = httpx.get(f"{server.base}/recommend/browser-user", params={"k": 10, "model": "sasrec-a"}).json()
    shown = [t.strip(" #") for t in texts(".model[data-model='sasrec-a'] li .id")]
    assert shown == [x["item_id"] for x in api_rec["items"]]

    # The "add item" form appears only when the server has POST /items.
    has_items = "/items" in httpx.get(f"{server.base}/openapi.json").json()["paths"]
    form = browser.find_element(By.ID, "add-item")
    assert form.is_displayed() == has_items
    if has_items:
        browser.find_element(By.ID, "item-id").send_keys("browser-new-item")
        browser.find_element(By.ID, "item-title").send_keys("A brand new film about space travel")
        browser.find_element(By.CSS_SELECTOR, "#item-form button").click()
        wait.until(lambda d: "registered" in d.find_element(By.ID, "item-result").text)

    shot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png"))
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
