"""The web page in a real headless Chromium (Debian's chromium and chromium-driver; nothing is downloaded)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import shared_audio
from .conftest import LiveServer

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromium-driver (apt-get install)"
)

# Every change of the submit button's disabled state, so the test sees it disabled during the request
# however fast the request is.
WATCH_SUBMIT = """
window.submitDisabled = [];
const submit = document.getElementById("submit");
new MutationObserver(() => window.submitDisabled.push(submit.disabled))
  .observe(submit, {attributes: true, attributeFilter: ["disabled"]});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--window-size=1000,1200",
    ):  # fmt: skip
        options.add_argument(flag)
    # Both binaries given explicitly: Selenium Manager has nothing to look up or download.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_transcribes_an_upload_like_the_api(server: LiveServer, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    audio = shared_audio("jfk.flac")
    expected = server.transcribe_native((audio.name, audio.read_bytes())).json()["results"][0]

    browser.get(server.url + "/")
    assert browser.title == "SenseVoice"
    browser.execute_script(WATCH_SUBMIT)
    browser.find_element(By.ID, "file").send_keys(str(audio))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(lambda driver: driver.find_element(By.ID, "text").text)

    assert browser.execute_script("return window.submitDisabled") == [True, False]
    assert browser.find_element(By.ID, "text").text == expected["text"]
    assert browser.find_element(By.ID, "emoji").text == expected["emoji_text"]
    assert browser.find_element(By.ID, "status").text == ""
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_page_shows_the_servers_error(server: LiveServer, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("not audio\n" * 20)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(not_audio))
    browser.find_element(By.ID, "submit").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda _: "not a recognised audio" in status.text)
    assert status.get_attribute("class") == "error"
    assert browser.find_element(By.ID, "submit").is_enabled()
