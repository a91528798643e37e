"""A realtime session's protocol logic against a fake model and a scripted VAD: deterministic, no server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.errors import Overloaded
from sensevoice_serve.realtime.session import Limits, RealtimeSession
from sensevoice_serve.realtime.transcript import ItemText
from sensevoice_serve.results import Segment, Token, Transcription
from sensevoice_serve.scheduler import Skipped

RATE = 16000
LOUD = 0.1  # scripted VAD: a window is speech when its mean magnitude is above half of this


def tokens_for(samples: np.ndarray) -> list[Token]:
    """A fake model's tokens: one word per started 0.2 s, so a longer utterance extends a shorter one's."""
    return [Token(i, f"\u2581w{i}", i * 0.2, i * 0.2 + 0.1) for i in range(-(-len(samples) // 3200))]


def segment(samples: np.ndarray, offset: float = 0.0) -> Segment:
    tokens = tokens_for(samples)
    text = " ".join(t.text[1:] for t in tokens)
    return Segment(
        offset, offset + len(samples) / RATE, text, text, "en", "NEUTRAL", 0.9, "Speech", True, tokens
    )


class FakeTranscriber:
    def __init__(self) -> None:
        self.finals: list[tuple[np.ndarray, float]] = []
        self.hold_finals: asyncio.Event | None = None  # set: finals wait until it is set
        self.skip_partials = False
        self.partials = 0

    async def prepare(self, options: DecodeOptions) -> list[str]:
        return []

    async def partial(self, samples: np.ndarray, options: DecodeOptions) -> Segment:
        self.partials += 1
        if self.skip_partials:
            raise Skipped("busy")
        return segment(samples)

    async def final(self, samples: np.ndarray, options: DecodeOptions, offset: float) -> Transcription:
        self.finals.append((samples, offset))
        if self.hold_finals is not None:
            await self.hold_finals.wait()
        return Transcription("realtime", len(samples) / RATE, [segment(samples, offset)])


class ScriptedSpeech:
    """The speech worker's interface with a VAD that calls loud windows speech."""

    def __init__(self) -> None:
        self.hold: asyncio.Event | None = None  # set: runs wait until it is set

    class Stream:
        def __init__(self) -> None:
            self.waiting = np.zeros(0, dtype=np.float32)

        def push(self, samples: np.ndarray) -> np.ndarray:
            joined = np.concatenate([self.waiting, samples])
            count = len(joined) // 512
            self.waiting = joined[count * 512 :]
            return (np.abs(joined[: count * 512]).reshape(count, 512).mean(axis=1) > LOUD / 2).astype(float)

    async def open(self) -> Stream:
        return self.Stream()

    async def run(self, function: Callable, *args: object) -> object:
        if self.hold is not None:
            await self.hold.wait()
        return function(*args)


class Observer:
    def __init__(self) -> None:
        self.sent, self.skipped, self.finals = 0, 0, 0

    def partial_sent(self, seconds: float) -> None:
        self.sent += 1

    def partial_skipped(self) -> None:
        self.skipped += 1

    def final_sent(self, seconds: float) -> None:
        self.finals += 1


class Client:
    """Drives a session as the WebSocket route does, keeping the events it sends."""

    def __init__(self, limits: Limits) -> None:
        self.events: list[dict] = []
        self.transcriber = FakeTranscriber()
        self.observer = Observer()
        self.speech = ScriptedSpeech()
        self.session = RealtimeSession(
            self._receive, self.transcriber, self.speech, DecodeOptions(), limits, self.observer
        )

    async def _receive(self, event: dict) -> None:
        self.events.append(event)

    async def send(self, kind: str, **fields: object) -> None:
        await self.session.handle(json.dumps({"type": kind, **fields}))

    async def configure(self, turn_detection: dict | None, rate: int = RATE) -> None:
        audio = {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": turn_detection}
        await self.send("session.update", session={"type": "transcription", "audio": {"input": audio}})

    async def append(self, samples: np.ndarray, chunk: int = 1600) -> None:
        pcm = (samples * 32768).astype("<i2").tobytes()
        for start in range(0, len(pcm), 2 * chunk):
            await self.send(
                "input_audio_buffer.append", audio=base64.b64encode(pcm[start : start + 2 * chunk]).decode()
            )

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["type"] == kind]

    def errors(self) -> list[str]:
        return [event["error"]["code"] for event in self.of_type("error")]

    async def settle(self, condition: Callable[[], bool]) -> None:
        """Let the session's background tasks run until ``condition`` holds (loop turns, no clock)."""
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0)
        raise AssertionError("the session never got there")


def run(test: Callable[[Client], Awaitable[None]], limits: Limits | None = None) -> Client:
    client = Client(limits or Limits())

    async def main() -> None:
        await client.session.start()
        await test(client)
        await client.session.close()

    asyncio.run(main())
    return client


def tone(seconds: float) -> np.ndarray:
    return np.full(int(seconds * RATE), LOUD, dtype=np.float32) * np.sign(
        np.sin(np.arange(int(seconds * RATE)))
    )


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def test_manual_commits_transcribe_exactly_the_appended_audio() -> None:
    first, second = tone(1.0), tone(0.5) * 0.5

    async def test(client: Client) -> None:
        await client.configure(turn_detection=None)
        await client.append(first)
        await client.send("input_audio_buffer.commit")
        await client.append(second, chunk=999)
        await client.send("input_audio_buffer.commit")
        await client.settle(
            lambda: len(client.of_type("conversation.item.input_audio_transcription.completed")) == 2
        )

    client = run(test)
    assert [e["type"] for e in client.events][:2] == ["session.created", "session.updated"]
    (got_first, offset_first), (got_second, offset_second) = client.transcriber.finals
    expected = [(x * 32768).astype(np.int16).astype(np.float32) / 32768 for x in (first, second)]
    assert np.array_equal(got_first, expected[0]) and np.array_equal(got_second, expected[1])
    assert (offset_first, offset_second) == (0.0, 1.0)
    committed = client.of_type("input_audio_buffer.committed")
    completed = client.of_type("conversation.item.input_audio_transcription.completed")
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    assert completed[0]["transcript"] == segment(first).text and completed[0]["language"] == "en"
    assert (completed[1]["start"], completed[1]["end"]) == (1.0, 1.5)
    assert client.errors() == []


def test_server_vad_sends_partial_deltas_then_the_final_for_each_turn() -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection={"type": "server_vad", "silence_duration_ms": 300})
        for _ in range(2):
            await client.append(silence(0.5))
            for _ in range(10):  # a second of speech, a partial after each 0.3 s of it
                await client.append(tone(0.1))
                await client.settle(lambda: client.session._partial is None)
            await client.append(silence(0.6))
        await client.settle(
            lambda: len(client.of_type("conversation.item.input_audio_transcription.completed")) == 2
        )

    client = run(test)
    items = [e["item_id"] for e in client.of_type("input_audio_buffer.speech_started")]
    assert len(items) == 2 and client.errors() == []
    for item in items:
        events = [e for e in client.events if e.get("item_id") == item]
        kinds = [e["type"].rsplit(".", 1)[-1] for e in events]
        assert kinds[0] == "speech_started" and kinds[-1] == "completed"
        assert kinds.index("speech_stopped") + 1 == kinds.index("committed")
        partials = [e for e in events if "text" in e]  # deltas of partial results carry the hypothesis
        assert len(partials) >= 2 and kinds.index("delta") < kinds.index("speech_stopped")
        deltas = "".join(e["delta"] for e in events if e["type"].endswith(".delta"))
        assert deltas == events[-1]["transcript"]  # the fake model only ever extends its text
    assert client.observer.sent >= 4 and client.observer.finals == 2


def test_skipped_partials_are_counted_and_the_final_still_comes() -> None:
    async def test(client: Client) -> None:
        client.transcriber.skip_partials = True
        await client.configure(turn_detection={"type": "server_vad", "silence_duration_ms": 300})
        for _ in range(10):
            await client.append(tone(0.1))
            await client.settle(lambda: client.session._partial is None)
        await client.append(silence(0.6))
        await client.settle(lambda: client.of_type("conversation.item.input_audio_transcription.completed"))

    client = run(test)
    assert client.observer.skipped == client.transcriber.partials >= 1 and client.observer.sent == 0
    [completed] = client.of_type("conversation.item.input_audio_transcription.completed")
    [delta] = client.of_type("conversation.item.input_audio_transcription.delta")
    assert delta["delta"] == completed["transcript"]  # the whole text, as one delta before it


def test_a_session_takes_no_more_audio_while_its_finals_are_all_running() -> None:
    async def test(client: Client) -> None:
        client.transcriber.hold_finals = asyncio.Event()
        await client.configure(turn_detection=None)
        for _ in range(2):
            await client.append(tone(0.2))
            await client.send("input_audio_buffer.commit")
        await client.append(tone(0.2))
        third = asyncio.create_task(client.send("input_audio_buffer.commit"))
        await client.settle(lambda: len(client.transcriber.finals) == 3)
        assert not third.done()  # the route reads no further message until this returns
        client.transcriber.hold_finals.set()
        await third
        await client.settle(
            lambda: len(client.of_type("conversation.item.input_audio_transcription.completed")) == 3
        )

    run(test, Limits(max_finals_in_flight=3))


def test_bad_events_get_error_events_and_the_session_goes_on() -> None:
    async def test(client: Client) -> None:
        await client.session.handle("{not json")
        await client.session.handle("[1, 2]")
        await client.send("response.create", event_id="evt_1")
        await client.send("input_audio_buffer.append", event_id="evt_2", audio="%%%")
        await client.send("input_audio_buffer.append")
        update = {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 11025}}},
        }
        await client.send("session.update", session=update)
        language = {"type": "transcription", "audio": {"input": {"transcription": {"language": "xx"}}}}
        await client.send("session.update", session=language)
        semantic = {"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}
        await client.send("session.update", session=semantic)
        await client.send("session.update", session={"type": "realtime"})
        await client.configure(turn_detection=None)
        await client.send("input_audio_buffer.commit", event_id="evt_3")  # nothing appended yet
        await client.append(tone(0.2))
        await client.configure(turn_detection={"type": "server_vad"})  # with audio waiting
        await client.send("input_audio_buffer.commit")
        await client.settle(lambda: client.of_type("conversation.item.input_audio_transcription.completed"))

    client = run(test)
    assert client.errors() == [
        "invalid_json", "invalid_event", "unknown_event", "invalid_audio", "invalid_value", "invalid_value",
        "invalid_value", "invalid_value", "invalid_value", "input_audio_buffer_commit_empty",
        "input_audio_buffer_not_empty",
    ]  # fmt: skip
    errors = client.of_type("error")
    assert [e["error"]["event_id"] for e in errors if e["error"]["event_id"]] == ["evt_1", "evt_2", "evt_3"]
    assert errors[4]["error"]["param"] == "audio" and "rate 11025" in errors[5]["error"]["message"]
    assert len(client.of_type("conversation.item.input_audio_transcription.completed")) == 1


def test_the_uncommitted_buffer_is_bounded_and_clear_empties_it() -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection=None)
        await client.append(tone(1.0))
        await client.append(tone(0.2))  # over the 1 s bound: refused, not kept
        await client.send("input_audio_buffer.clear")
        await client.send("input_audio_buffer.commit")
        await client.append(tone(0.5))
        await client.send("input_audio_buffer.commit")
        await client.settle(lambda: client.of_type("conversation.item.input_audio_transcription.completed"))

    client = run(test, Limits(max_buffer_seconds=1.0))
    assert client.errors() == [
        "input_audio_buffer_full",
        "input_audio_buffer_full",
        "input_audio_buffer_commit_empty",
    ]
    assert len(client.of_type("input_audio_buffer.cleared")) == 1
    [(samples, _)] = client.transcriber.finals
    assert len(samples) == RATE // 2


def test_a_failed_final_is_a_failed_event_for_its_item() -> None:
    async def test(client: Client) -> None:
        async def overloaded(*args: object) -> Transcription:
            raise Overloaded("server busy")

        client.transcriber.final = overloaded
        await client.configure(turn_detection=None)
        await client.append(tone(0.2))
        await client.send("input_audio_buffer.commit")
        await client.settle(lambda: client.of_type("conversation.item.input_audio_transcription.failed"))

    client = run(test)
    [failed] = client.of_type("conversation.item.input_audio_transcription.failed")
    assert failed["item_id"] == client.of_type("input_audio_buffer.committed")[0]["item_id"]
    assert failed["error"]["code"] == "overloaded" and failed["error"]["type"] == "server_error"


def test_deltas_only_carry_text_two_partials_agree_on() -> None:
    def hypothesis(*pieces: str) -> Segment:
        tokens = [Token(hash(p) % 1000, p, 0, 0) for p in pieces]
        text = "".join(pieces).replace("\u2581", " ").strip()
        return Segment(0, 1, text, text, tokens=tokens)

    text = ItemText()
    assert text.partial(hypothesis("\u2581ask")) == ""  # nothing agreed yet, but a new hypothesis
    assert text.partial(hypothesis("\u2581ask", "\u2581not")) == "ask"
    assert text.partial(hypothesis("\u2581ask", "\u2581not")) == " not"
    assert text.partial(hypothesis("\u2581ask", "\u2581not")) is None  # nothing new at all
    assert text.partial(hypothesis("\u2581asked", "\u2581not")) == ""  # a revision: no delta
    assert text.final("asked not what") == ""  # revises what was sent: the transcript alone counts
    assert ItemText().final("ask not") == "ask not"


@pytest.mark.parametrize("rate", [8000, 24000])
def test_other_rates_are_resampled_to_16_khz(rate: int) -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection=None, rate=rate)
        await client.append(np.zeros(rate, dtype=np.float32))
        await client.send("input_audio_buffer.commit")
        await client.settle(lambda: client.transcriber.finals)

    [(samples, _)] = run(test).transcriber.finals
    assert len(samples) == RATE


def test_switching_turn_detection_starts_the_buffer_afresh() -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection={"type": "server_vad"})
        await client.append(silence(1.0))  # no speech: nothing to commit, but the VAD keeps its prefix
        await client.configure(turn_detection=None)
        await client.append(tone(0.5))
        await client.send("input_audio_buffer.commit")
        await client.settle(lambda: client.transcriber.finals)

    client = run(test)
    [(samples, offset)] = client.transcriber.finals
    assert len(samples) == RATE // 2 and offset == 1.0 and client.errors() == []


def test_the_audio_buffer_holds_what_was_not_released_at_its_session_positions() -> None:
    from sensevoice_serve.realtime.buffer import AudioBuffer

    buffer = AudioBuffer()
    signal = np.arange(3 * RATE, dtype=np.float32)
    for start in range(0, len(signal), 1000):
        buffer.append(signal[start : start + 1000])
        buffer.release_before(start - RATE // 2)  # keep half a second behind
    assert (buffer.start, buffer.end) == (len(signal) - 1000 - RATE // 2, len(signal))
    assert np.array_equal(buffer.copy(buffer.start, buffer.end), signal[buffer.start :])
    with pytest.raises(ValueError, match="not all held"):
        buffer.copy(buffer.start - 1, buffer.end)
