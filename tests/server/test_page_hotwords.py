"""The web page sends its hotwords field with uploads (the server then beam-searches)."""

from __future__ import annotations

from ..conftest import shared_audio
from .conftest import LiveServer
from .test_page import browser, pytestmark  # noqa: F401  (skipped without selenium or chromium)

AUDIO = shared_audio("zh_sample.wav")


def _submit(server: LiveServer, page, hotwords: str) -> None:
    from selenium.webdriver.common.by import By

    page.get(server.url + "/")
    page.find_element(By.ID, "file").send_keys(str(AUDIO))
    page.find_element(By.ID, "hotwords").send_keys(hotwords)
    page.find_element(By.ID, "submit").click()


def test_page_sends_hotwords(server: LiveServer, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = server.transcribe_native((AUDIO.name, AUDIO.read_bytes()), hotwords="x, ab:2").json()
    _submit(server, browser, "x, ab:2")
    WebDriverWait(browser, 30).until(lambda driver: driver.find_element(By.ID, "text").text)
    assert browser.find_element(By.ID, "text").text == expected["results"][0]["text"]

    _submit(server, browser, "x:loud")
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda _: "boost" in status.text)
    assert status.get_attribute("class") == "error"
