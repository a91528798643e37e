"""/v1/realtime against a live server: the OpenAI Realtime transcription protocol end to end."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from websockets.sync.client import ClientConnection, connect

from sensevoice_serve.audio import decode_audio

from ..conftest import shared_audio
from ..test_realtime_codecs import wav_data_chunk
from .conftest import LiveServer, wait_until

COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


class Realtime:
    """A transcription session, as a plain WebSocket client speaks it; keeps every event it receives."""

    def __init__(
        self, server: LiveServer, headers: dict | None = None, subprotocols: list[str] | None = None
    ):
        url = server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        extra = server.headers if headers is None else headers
        self.ws: ClientConnection = connect(
            url, additional_headers=extra, subprotocols=subprotocols, open_timeout=30
        )
        self.events: list[dict] = []
        self._taken: set[str] = set()  # event ids ``until`` has returned
        self.created = self.recv()

    def send(self, kind: str, **fields: object) -> None:
        self.ws.send(json.dumps({"type": kind, **fields}))

    def recv(self, timeout: float = 60) -> dict:
        event = json.loads(self.ws.recv(timeout))
        self.events.append(event)
        return event

    def until(self, kind: str, item_id: str | None = None, with_key: str | None = None) -> dict:
        """The first event of ``kind`` (for ``item_id``, having ``with_key``) not returned before, received
        already or waited for."""

        def wanted(event: dict) -> bool:
            return (
                event["type"] == kind
                and item_id in (None, event.get("item_id"))
                and with_key in (None, *event)
                and event["event_id"] not in self._taken
            )

        event = next(filter(wanted, self.events), None)
        while event is None:
            received = self.recv()
            event = received if wanted(received) else None
        self._taken.add(event["event_id"])
        return event

    def configure(self, audio_format: dict, turn_detection: dict | None) -> dict:
        audio = {"input": {"format": audio_format, "turn_detection": turn_detection}}
        self.send("session.update", session={"type": "transcription", "audio": audio})
        return self.until("session.updated")

    def append(self, data: bytes, chunk_bytes: int) -> None:
        for start in range(0, len(data), chunk_bytes):
            self.send(
                "input_audio_buffer.append",
                audio=base64.b64encode(data[start : start + chunk_bytes]).decode(),
            )

    def commit(self) -> dict:
        """Commit, and return the item's completed event (after its committed one)."""
        self.send("input_audio_buffer.commit")
        item_id = self.until("input_audio_buffer.committed")["item_id"]
        return self.until(COMPLETED, item_id)

    def close(self) -> None:
        self.ws.close()


def pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)


def resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    """Any signal at ``rate`` will do: what is compared is two paths through the same server."""
    positions = np.arange(int(len(samples) * rate / 16000)) * 16000 / rate
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


def wav_file(pcm: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return decode_audio(shared_audio("jfk.flac")).samples


@pytest.mark.parametrize(
    ("audio_format", "rate", "subtype"),
    [({"type": "audio/pcm", "rate": 16000}, 16000, "PCM_16"),
     ({"type": "audio/pcm", "rate": 24000}, 24000, "PCM_16"),
     ({"type": "audio/pcmu"}, 8000, "ULAW"),
     ({"type": "audio/pcma"}, 8000, "ALAW")],
    ids=["pcm16k", "pcm24k", "pcmu8k", "pcma8k"],
)  # fmt: skip
def test_a_manual_commit_transcribes_as_the_file_api_does(
    server: LiveServer, speech: np.ndarray, audio_format: dict, rate: int, subtype: str
) -> None:
    # 47 s at 16 kHz: over the 30 s segment cap, so both paths go through the VAD segmentation.
    samples = speech if rate == 16000 else resampled(speech[: 16000 * 12], rate)
    wav = wav_file(pcm16(samples), rate, subtype)
    expected = server.transcribe(wav, "clip.wav").json()["text"]
    session = Realtime(server)
    session.configure(audio_format, turn_detection=None)
    session.append(wav_data_chunk(wav), chunk_bytes=rate // 10 * (1 if subtype != "PCM_16" else 2))
    completed = session.commit()
    session.close()
    assert completed["transcript"] == expected and expected
    assert completed["usage"] == {"type": "duration", "seconds": round(len(samples) / rate, 3)}
    assert completed["content_index"] == 0 and "language" in completed and completed["segments"]


def test_server_vad_turns_speech_silence_speech_into_two_items(server: LiveServer) -> None:
    # Four seconds of reading without a pause as long as the silence duration: one turn.
    clip = pcm16(decode_audio(shared_audio("multilingual.mp3")).samples[: 16000 * 4]).tobytes()
    pause = bytes(2 * 16000 * 2)  # 2 s of silence
    session = Realtime(server)
    session.configure(
        {"type": "audio/pcm", "rate": 16000}, {"type": "server_vad", "silence_duration_ms": 1000}
    )
    session.append(pause, 3200)
    items = []
    for _ in range(2):
        session.append(clip[: 2 * 16000 * 2], 3200)  # 2 s of speech, then wait for a partial of it
        item_id = session.until("input_audio_buffer.speech_started")["item_id"]
        session.until(DELTA, item_id, with_key="text")
        session.append(clip[2 * 16000 * 2 :] + pause, 3200)
        items.append(item_id)
    completed = [session.until(COMPLETED, item) for item in items]
    session.close()
    for item_id, done in zip(items, completed, strict=True):
        kinds = [e["type"].rsplit(".", 1)[-1] for e in session.events if e.get("item_id") == item_id]
        assert kinds[0] == "speech_started" and kinds[-1] == "completed"
        assert kinds.index("speech_stopped") + 1 == kinds.index("committed")
        assert kinds.index("delta") < kinds.index("speech_stopped")  # a partial while speech went on
        assert done["transcript"]
    started = [e["audio_start_ms"] for e in session.events if e["type"].endswith("speech_started")]
    stopped = [e["audio_end_ms"] for e in session.events if e["type"].endswith("speech_stopped")]
    assert len(started) == len(stopped) == 2 and 0 < started[0] < stopped[0] < started[1] < stopped[1]
    assert server.metric("sensevoice_realtime_partials_total", outcome="sent") > 0


def test_the_openai_clients_realtime_connection_works_as_the_readme_shows(
    server: LiveServer, jfk: np.ndarray
) -> None:
    from openai import OpenAI

    pcm = pcm16(jfk).tobytes()
    expected = server.transcribe(wav_file(pcm16(jfk), 16000), "jfk.wav").json()["text"]
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        audio_input = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        connection.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
        for start in range(0, len(pcm), 3200):
            connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + 3200]).decode())
        connection.input_audio_buffer.commit()
        for event in connection:
            if event.type == COMPLETED:
                break
    assert event.transcript == expected


def test_concurrent_sessions_share_batches_and_each_gets_its_own_transcript(
    server: LiveServer, speech: np.ndarray, tiny_engine
) -> None:
    sessions = 24
    seconds = np.random.default_rng(5).uniform(1.0, 12.0, size=sessions)
    clips = [pcm16(speech[int(16000 * i) : int(16000 * (i + s))]) for i, s in enumerate(seconds)]
    alone = [tiny_engine.transcribe(clip.astype(np.float32) / 32768)[0].text for clip in clips]
    batches_before = server.metric("sensevoice_batch_size_count")
    singles_before = server.metric("sensevoice_batch_size_bucket", le="1.0")
    everyone_appended = threading.Barrier(sessions)

    def stream(clip: np.ndarray) -> str:
        session = Realtime(server)
        session.configure({"type": "audio/pcm", "rate": 16000}, turn_detection=None)
        session.append(clip.tobytes(), 3200)
        everyone_appended.wait(timeout=120)
        transcript = session.commit()["transcript"]
        session.close()
        return transcript

    with ThreadPoolExecutor(sessions) as pool:
        transcripts = list(pool.map(stream, clips))
    assert transcripts == alone
    batches = server.metric("sensevoice_batch_size_count") - batches_before
    singles = server.metric("sensevoice_batch_size_bucket", le="1.0") - singles_before
    assert batches > singles, "no forward ran more than one session's audio"


def test_bad_events_are_answered_and_the_session_goes_on(server: LiveServer, jfk: np.ndarray) -> None:
    session = Realtime(server)
    session.ws.send("not json")
    session.send("response.create", event_id="evt_7")
    session.send("input_audio_buffer.append", audio="***")
    session.ws.send(b"\x00\x01")  # a binary frame
    session.configure({"type": "audio/pcm", "rate": 16000}, turn_detection=None)
    session.append(pcm16(jfk[:16000]).tobytes(), 3200)
    assert session.commit()["transcript"]
    session.close()
    errors = [e["error"] for e in session.events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["invalid_json", "unknown_event", "invalid_audio", "invalid_json"]
    assert errors[1]["event_id"] == "evt_7" and all(e["type"] == "invalid_request_error" for e in errors)


def test_a_client_that_goes_away_mid_turn_frees_its_session(server: LiveServer, jfk: np.ndarray) -> None:
    session = Realtime(server)
    session.configure({"type": "audio/pcm", "rate": 16000}, {"type": "server_vad"})
    session.append(pcm16(jfk[: 16000 * 3]).tobytes(), 3200)
    session.until("input_audio_buffer.speech_started")
    wait_until(lambda: server.metric("sensevoice_realtime_sessions") == 1, "the session is counted")
    session.ws.socket.close()  # no close frame: the connection just drops
    wait_until(lambda: server.metric("sensevoice_realtime_sessions") == 0, "the session is freed")
    assert Realtime(server).created["type"] == "session.created"  # and the server goes on
