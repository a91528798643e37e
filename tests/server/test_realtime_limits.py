"""/v1/realtime's gate and bounds: the API key (header or browser subprotocol), the session limit, the idle
timeout and the uncommitted buffer's cap."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import LiveServer, wait_until
from .test_realtime import Realtime

KEY = "realtime-test-key"
MAX_SESSIONS = 2
IDLE_SECONDS = 3


@pytest.fixture(scope="module")
def guarded(start_server) -> LiveServer:
    return start_server(
        api_key=KEY,
        realtime_max_sessions=MAX_SESSIONS,
        realtime_idle_timeout_seconds=IDLE_SECONDS,
        realtime_max_buffer_seconds=1,
    )


def refused(server: LiveServer, **kwargs: object) -> tuple[dict, int]:
    """The error event and close code of a connection the server turns away."""
    session = Realtime(server, **kwargs)
    with pytest.raises(ConnectionClosed):
        session.recv()
    return session.created, session.ws.close_code


def test_without_the_key_a_session_is_refused_with_a_readable_error(guarded: LiveServer) -> None:
    event, code = refused(guarded, headers={})
    assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key" and code == 1008
    event, code = refused(guarded, headers={"Authorization": "Bearer wrong"})
    assert event["error"]["code"] == "invalid_api_key"


def test_the_key_works_as_a_header_and_as_the_browsers_subprotocol(guarded: LiveServer) -> None:
    with_header = Realtime(guarded)
    assert with_header.created["type"] == "session.created" and with_header.ws.subprotocol is None
    browser_like = Realtime(guarded, headers={}, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"])
    assert browser_like.created["type"] == "session.created" and browser_like.ws.subprotocol == "realtime"
    with_header.close()
    browser_like.close()


def test_sessions_over_the_limit_are_refused_until_one_closes(guarded: LiveServer) -> None:
    wait_until(lambda: guarded.metric("sensevoice_realtime_sessions") == 0, "earlier sessions are gone")
    sessions = [Realtime(guarded) for _ in range(MAX_SESSIONS)]
    event, code = refused(guarded)
    assert event["error"]["code"] == "session_limit_reached" and code == 1013
    assert f"limit {MAX_SESSIONS}" in event["error"]["message"]
    sessions.pop().close()
    wait_until(lambda: guarded.metric("sensevoice_realtime_sessions") == MAX_SESSIONS - 1, "one closed")
    sessions.append(Realtime(guarded))
    assert sessions[-1].created["type"] == "session.created"
    for session in sessions:
        session.close()


def test_an_idle_session_is_closed_and_a_full_buffer_refuses_audio(guarded: LiveServer) -> None:
    session = Realtime(guarded)
    session.configure({"type": "audio/pcm", "rate": 16000}, turn_detection=None)
    session.append(bytes(2 * 16000), chunk_bytes=2 * 16000)  # 1 s: the whole buffer
    session.append(bytes(3200), chunk_bytes=3200)
    assert session.until("error")["error"]["code"] == "input_audio_buffer_full"
    # Now nothing more is sent: the server closes the session once the idle timeout has passed.
    event = session.until("error")
    assert event["error"]["code"] == "idle_timeout" and f"{IDLE_SECONDS} s" in event["error"]["message"]
    with pytest.raises(ConnectionClosed):
        session.recv()
    assert session.ws.close_code == 1000


def test_a_session_outlives_the_header_read_timeout(start_server) -> None:
    server = start_server(header_timeout_seconds=1, realtime_idle_timeout_seconds=3)
    session = Realtime(server)
    # Nothing is sent: the idle timeout (3 s), not the header timeout (1 s), must end the session.
    assert session.until("error")["error"]["code"] == "idle_timeout"
