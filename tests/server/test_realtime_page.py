"""The web page's live mode in headless Chromium, its microphone a fake device playing a real recording."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sensevoice_serve.audio import decode_audio

from ..conftest import shared_audio
from .conftest import LiveServer
from .test_page import CHROMEDRIVER, CHROMIUM, pytestmark, webdriver  # noqa: F401 - the same skip

# Every partial the page shows: an item's text while it is still marked partial.
WATCH_PARTIALS = """
window.partials = [];
new MutationObserver(() => {
  for (const item of document.querySelectorAll("#items .partial .text")) {
    if (item.textContent !== "…") window.partials.push(item.textContent);
  }
}).observe(document.getElementById("items"), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def microphone_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four seconds of reading, then two of silence, twice: two turns for the server VAD."""
    speech = decode_audio(shared_audio("multilingual.mp3")).samples[: 16000 * 4]
    turn = np.concatenate([speech, np.zeros(16000 * 2, dtype=np.float32)])
    path = tmp_path_factory.mktemp("microphone") / "speech.wav"
    sf.write(path, np.concatenate([turn, turn]), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(microphone_recording: Path) -> Iterator:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone_recording}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_live_mode_shows_partials_then_finals_with_their_tags(
    server: LiveServer, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    browser.execute_script(WATCH_PARTIALS)
    live = browser.find_element(By.ID, "live")
    live.click()
    final = WebDriverWait(browser, 90).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#items .final")
    )[0]
    assert final.find_element(By.CLASS_NAME, "text").text not in ("", "…")
    assert "time:" in final.find_element(By.CLASS_NAME, "tags").text
    assert browser.execute_script("return window.partials.length") > 0, "no partial result was shown"
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("class") != "error", status.text
    live.click()
    WebDriverWait(browser, 30).until(lambda _: live.text == "◉ Live" and status.text != "listening…")
    assert status.get_attribute("class") != "error", status.text
    browser.save_screenshot(str(tmp_path / "live.png"))
