"""SIGTERM with realtime sessions open: what their clients said is transcribed before the sockets close.

Each test stops a server of its own. There a final waits ``max_wait_ms`` in the scheduler for batch company
(and no partial starts a round of the scheduler sooner), so the final of a commit made just before the signal
is surely still in flight when it comes, whatever the machine's speed."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from sensevoice_serve.audio import decode_audio

from ..conftest import shared_audio
from .conftest import LiveServer, launch, wait_ready, wait_until
from .test_protection import accepts_connections
from .test_realtime import COMPLETED, Realtime, pcm16, wav_file

PCM16K = {"type": "audio/pcm", "rate": 16000}
SERVICE_RESTART = 1012
HELD_FINAL_MS = 3000
NO_PARTIALS_MS = 600_000


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """Three seconds of speech, mid-sentence: no pause in it as long as the sessions' silence duration."""
    return pcm16(decode_audio(shared_audio("jfk.flac")).samples[: 16000 * 3])


def drained_server(tiny_model_dir: Path, **settings: object) -> LiveServer:
    return wait_ready(launch(tiny_model_dir, realtime_partial_interval_ms=NO_PARTIALS_MS, **settings))


def until_closed(session: Realtime) -> int:
    """Every event up to the server's close; its close code."""
    with pytest.raises(ConnectionClosed):
        while True:
            session.recv()
    return session.ws.close_code


def synced(session: Realtime) -> None:
    """Return once the server has handled every event sent so far (it answers an empty update in turn)."""
    session.send("session.update", session={"type": "transcription"})
    session.until("session.updated")


def test_sigterm_finishes_every_sessions_turn_and_commits_then_closes_them(
    tiny_model_dir: Path, server: LiveServer, spoken: np.ndarray
) -> None:
    draining = drained_server(tiny_model_dir, max_wait_ms=HELD_FINAL_MS)
    try:
        talking = Realtime(draining)
        talking.configure(PCM16K, {"type": "server_vad", "silence_duration_ms": 2000})
        talking.append(spoken.tobytes(), 3200)
        synced(talking)
        started = talking.until("input_audio_buffer.speech_started")
        item_id = started["item_id"]

        manual = Realtime(draining)
        manual.configure(PCM16K, turn_detection=None)
        manual.append(spoken[:16000].tobytes(), 3200)
        manual.send("input_audio_buffer.commit")
        committed = manual.until("input_audio_buffer.committed")["item_id"]  # its final waits for company
        manual.append(spoken[16000:].tobytes(), 3200)  # never committed
        synced(manual)

        draining.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not accepts_connections(draining), "the server stops accepting connections")
        manual.append(spoken[:1600].tobytes(), 3200)  # after the drain began: refused
        talking_code, manual_code = until_closed(talking), until_closed(manual)
        assert draining.process.wait(timeout=30) == 0
    finally:
        draining.stop()

    assert talking_code == manual_code == SERVICE_RESTART
    kinds = [e["type"].rsplit(".", 1)[-1] for e in talking.events if e.get("item_id") == item_id]
    assert kinds[0] == "speech_started" and kinds[-1] == "completed"
    assert kinds.index("speech_stopped") + 1 == kinds.index("committed")
    stopped = talking.until("input_audio_buffer.speech_stopped", item_id)
    assert stopped["audio_end_ms"] == 3000  # the end of what was sent
    start = started["audio_start_ms"] * 16
    expected = server.transcribe(wav_file(spoken[start:], 16000)).json()["text"]
    assert talking.until(COMPLETED, item_id)["transcript"] == expected and expected

    [completed] = [e for e in manual.events if e["type"] == COMPLETED]
    assert completed["item_id"] == committed
    assert completed["transcript"] == server.transcribe(wav_file(spoken[:16000], 16000)).json()["text"]
    [refusal] = [e["error"] for e in manual.events if e["type"] == "error"]
    assert refusal["code"] == "shutting_down" and refusal["type"] == "server_error"


def test_a_final_that_outlasts_the_drain_deadline_does_not_hold_the_shutdown(
    tiny_model_dir: Path, spoken: np.ndarray
) -> None:
    # The final waits 5 s for company; the drain gives up after the request timeout.
    draining = drained_server(tiny_model_dir, max_wait_ms=5000, request_timeout_seconds=1)
    try:
        manual = Realtime(draining)
        manual.configure(PCM16K, turn_detection=None)
        manual.append(spoken[:16000].tobytes(), 3200)
        manual.send("input_audio_buffer.commit")
        manual.until("input_audio_buffer.committed")
        draining.process.send_signal(signal.SIGTERM)
        assert until_closed(manual) == SERVICE_RESTART
        assert draining.process.wait(timeout=30) == 0
    finally:
        draining.stop()
    assert not [e for e in manual.events if e["type"] == COMPLETED]
