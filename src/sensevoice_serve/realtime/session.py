"""One realtime transcription session: client events in, server events out.

Audio arrives as ``input_audio_buffer.append`` events and is decoded to 16 kHz. With the server VAD on,
``TurnDetector`` finds turns; while one is open, its audio is re-decoded every ``partial_interval`` of new
audio as a low-priority request (skipped by the scheduler when busy) and sent as deltas; when it ends, its
audio is decoded once more at high priority for the completed transcript. With ``turn_detection: null``,
the client commits: the buffer since the last commit is transcribed exactly as an uploaded file would be.

Bounds: at most ``max_finals_in_flight`` finals per session (``handle`` waits for the oldest before taking
more audio, so a client that sends faster than transcription keeps up is slowed down by the socket), one
partial at a time, an uncommitted buffer of at most ``max_buffer_seconds``, and an open turn of at most
``max_utterance_seconds`` (then cut at a pause). Every problem with a client event is answered with an
``error`` event and the session goes on.

When the server shuts down, ``finish`` refuses further client events, ends an open turn as if silence had come
and waits for every final, so what the client already said is transcribed before its socket closes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..audio import SAMPLE_RATE
from ..decoding import DecodeOptions
from ..errors import SenseVoiceError, ShuttingDown
from ..results import Segment, Transcription
from ..scheduler import Skipped
from ..server.errors import error_code
from ..settings import decode_options
from .buffer import AudioBuffer
from .codecs import AudioDecoder
from .protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    RealtimeError,
    SessionSettings,
    SessionUpdate,
    error_event,
    new_id,
    parse_client_event,
    server_event,
)
from .transcript import ItemText
from .turns import SpeechStarted, SpeechWorker, TurnDetector, WindowProbabilities

MIN_COMMIT_SECONDS = 0.1  # OpenAI's: a shorter buffer is refused as empty
TRANSCRIPTION = "conversation.item.input_audio_transcription"


class Transcriber(Protocol):
    async def partial(self, samples: np.ndarray, options: DecodeOptions) -> Segment:
        """A low-priority decode; raises ``scheduler.Skipped`` when there was no room for it."""

    async def final(self, samples: np.ndarray, options: DecodeOptions, offset: float) -> Transcription:
        """The whole transcription, segmented as an uploaded file is; times from ``offset`` seconds."""

    async def prepare(self, options: DecodeOptions) -> list[str]:
        """Compiles the options' hotwords ahead of their audio; why phrases were skipped."""


class Observer(Protocol):
    def partial_sent(self, seconds: float) -> None: ...
    def partial_skipped(self) -> None: ...
    def final_sent(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Limits:
    partial_interval_seconds: float = 0.3
    max_utterance_seconds: float = 15.0
    max_buffer_seconds: float = 120.0
    max_finals_in_flight: int = 4


@dataclass
class _Turn:
    """The open turn (server VAD): its item, where it starts, and its partials' state."""

    item_id: str
    start: int
    partial_at: int  # the buffer's end when the last partial was taken
    text: ItemText = field(default_factory=ItemText)


class _Detection:
    """The server VAD of a session: probabilities (computed in the speech worker) and turns."""

    def __init__(self, probabilities: WindowProbabilities, turns: TurnDetector) -> None:
        self.probabilities = probabilities
        self.turns = turns


class RealtimeSession:
    def __init__(
        self,
        send: Callable[[dict], Awaitable[None]],
        transcriber: Transcriber,
        speech: SpeechWorker,
        defaults: DecodeOptions,
        limits: Limits,
        observer: Observer,
    ) -> None:
        self.settings = SessionSettings()
        self._send = send
        self._transcriber = transcriber
        self._speech = speech
        self._defaults = defaults
        self._limits = limits
        self._observer = observer
        self._decoder = AudioDecoder(self.settings.format)
        self._audio = AudioBuffer()
        self._detection: _Detection | None = None  # created with the first audio while the VAD is on
        self._turn: _Turn | None = None
        self._last_item_id: str | None = None
        self._finals: deque[asyncio.Task] = deque()
        self._partial: asyncio.Task | None = None
        self._finishing = False
        self._idle = asyncio.Event()  # clear while ``handle`` works on a message
        self._idle.set()

    async def start(self) -> None:
        await self._send(server_event("session.created", session=self.settings.to_json()))

    async def handle(self, message: str | bytes) -> None:
        """One client message (the caller passes them one at a time); whatever is wrong with it is answered
        with an ``error`` event."""
        event = None
        try:
            event = parse_client_event(message)
            if self._finishing:
                shutting_down = ShuttingDown("the server is shutting down: this session takes no more events")
                raise RealtimeError(error_code(shutting_down), str(shutting_down), kind="server_error")
            self._idle.clear()
            try:
                await self._dispatch(event)
            finally:
                self._idle.set()
        except RealtimeError as error:
            if event is not None:
                error.event_id = event.event_id
            await self._send(error_event(error))

    async def finish(self) -> None:
        """The server is shutting down: take no more client events, end an open turn (server VAD) as if
        silence had come, and wait until every final has been sent. An uncommitted buffer (no VAD) is not
        transcribed: as with OpenAI, only commits are."""
        self._finishing = True
        await self._idle.wait()  # the message being handled, if any, is the last
        if self._turn is not None:
            self._detection.turns.end_turn(self._audio.end)
            await self._end_turn(self._audio.end, speech_stopped=True)
        if self._finals:
            await asyncio.wait(self._finals)
        self._finals.clear()

    async def close(self) -> None:
        """Drop all work in flight (its scheduler requests are cancelled) and the audio."""
        tasks = [*self._finals, *([self._partial] if self._partial else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._finals.clear()
        self._audio = AudioBuffer()

    # Client events.

    async def _dispatch(self, event: ClientEvent) -> None:
        if isinstance(event, SessionUpdate):
            await self._update(event)
        elif isinstance(event, AudioAppend):
            await self._append(event.audio)
        elif isinstance(event, AudioCommit):
            await self._commit()
        elif isinstance(event, AudioClear):
            await self._clear()

    async def _update(self, event: SessionUpdate) -> None:
        settings = event.applied_to(self.settings)
        restarts_audio = (
            settings.format != self.settings.format or settings.turn_detection != self.settings.turn_detection
        )
        if restarts_audio and self._buffered():
            raise RealtimeError(
                "input_audio_buffer_not_empty",
                "commit or clear the input audio buffer before changing the audio format or turn detection",
                "session.audio.input",
            )
        if settings.format != self.settings.format:
            self._decoder = AudioDecoder(settings.format)
        if settings.turn_detection != self.settings.turn_detection:
            # What the VAD kept before any speech belongs to no turn: the new mode starts from here.
            self._detection = None
            self._decoder.flush()
            self._audio.release_before(self._audio.end)
        hotwords_changed = settings.transcription.hotwords != self.settings.transcription.hotwords
        self.settings = settings
        # Before the next event's audio is taken: no batch waits for a large list to compile.
        skipped = await self._transcriber.prepare(self._options()) if hotwords_changed else []
        await self._send(server_event("session.updated", session=settings.to_json()))
        if skipped:
            raise RealtimeError(
                "hotwords_skipped", "; ".join(skipped), "session.audio.input.transcription.hotwords"
            )

    def _buffered(self) -> bool:
        """Audio waits to be transcribed: an open turn, or an uncommitted manual buffer."""
        if self.settings.turn_detection is not None:
            return self._turn is not None
        return self._audio.end > self._audio.start

    async def _append(self, payload: str) -> None:
        if self.settings.turn_detection is None:
            limit = int(self._limits.max_buffer_seconds * SAMPLE_RATE)
            held = self._audio.end - self._audio.start
            if held + self._decoder.samples_in(payload) > limit:
                raise RealtimeError(
                    "input_audio_buffer_full",
                    f"the input audio buffer holds at most {self._limits.max_buffer_seconds:g} s: commit or "
                    "clear it first (this audio was dropped)",
                    "audio",
                )
        samples = self._decoder.decode(payload)
        self._audio.append(samples)
        if self.settings.turn_detection is not None:
            await self._detect(samples)

    async def _commit(self) -> None:
        if self.settings.turn_detection is not None:
            turn = self._turn
            if turn is None:
                raise RealtimeError(
                    "input_audio_buffer_commit_empty",
                    "no speech to commit: the server VAD commits each turn itself",
                )
            self._detection.turns.end_turn(self._audio.end)
            await self._end_turn(self._audio.end, speech_stopped=False)
            return
        self._audio.append(self._decoder.flush())
        start, end = self._audio.start, self._audio.end
        if end - start < MIN_COMMIT_SECONDS * SAMPLE_RATE:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"the input audio buffer holds {(end - start) / SAMPLE_RATE * 1000:.0f} ms: at least "
                f"{MIN_COMMIT_SECONDS * 1000:.0f} ms are needed to commit",
            )
        await self._transcribe(new_id("item"), start, end, ItemText())
        self._audio.release_before(end)

    async def _clear(self) -> None:
        self._decoder.flush()
        self._drop_partial()
        self._turn = None
        if self._detection is not None:
            self._detection.turns.end_turn(self._audio.end)
        self._audio.release_before(self._audio.end)
        await self._send(server_event("input_audio_buffer.cleared"))

    # Server VAD.

    async def _detect(self, samples: np.ndarray) -> None:
        if self._detection is None:
            max_samples = int(self._limits.max_utterance_seconds * SAMPLE_RATE)
            turns = TurnDetector(
                self.settings.turn_detection, max_samples, origin=self._audio.end - len(samples)
            )
            self._detection = _Detection(await self._speech.open(), turns)
        detection = self._detection
        probabilities = await self._speech.run(detection.probabilities.push, samples)
        for event in detection.turns.push(probabilities):
            if isinstance(event, SpeechStarted):
                await self._start_turn(event.start)
            else:
                await self._end_turn(event.end, speech_stopped=True)
        self._audio.release_before(detection.turns.keep_from)
        self._start_partial()

    async def _start_turn(self, start: int) -> None:
        self._turn = _Turn(new_id("item"), start, partial_at=self._audio.end)
        await self._send(
            server_event(
                "input_audio_buffer.speech_started", audio_start_ms=_ms(start), item_id=self._turn.item_id
            )
        )

    async def _end_turn(self, end: int, speech_stopped: bool) -> None:
        turn, self._turn = self._turn, None
        self._drop_partial()
        if speech_stopped:
            await self._send(
                server_event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(end), item_id=turn.item_id)
            )
        await self._transcribe(turn.item_id, turn.start, end, turn.text)

    # Partials and finals.

    def _start_partial(self) -> None:
        turn = self._turn
        interval = self._limits.partial_interval_seconds * SAMPLE_RATE
        if turn is None or self._partial is not None or self._audio.end - turn.partial_at < interval:
            return
        turn.partial_at = self._audio.end
        samples = self._audio.copy(turn.start, self._audio.end)
        self._partial = asyncio.create_task(self._run_partial(turn, samples))

    def _drop_partial(self) -> None:
        if self._partial is not None:
            self._partial.cancel()  # its scheduler request too, if it has not started
            self._partial = None

    async def _run_partial(self, turn: _Turn, samples: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            segment = await self._transcriber.partial(samples, self._options())
        except (Skipped, SenseVoiceError):  # busy, or shutting down: the final will come all the same
            self._observer.partial_skipped()
            segment = None
        finally:
            if self._partial is asyncio.current_task():
                self._partial = None
        if segment is not None and turn is self._turn:
            delta = turn.text.partial(segment)
            if delta is not None:
                self._observer.partial_sent(time.perf_counter() - started)
                await self._send(_delta_event(turn.item_id, delta, segment))
        self._start_partial()  # audio may have come meanwhile

    async def _transcribe(self, item_id: str, start: int, end: int, text: ItemText) -> None:
        """Commit an item and transcribe it in the background."""
        previous, self._last_item_id = self._last_item_id, item_id
        await self._send(
            server_event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        )
        samples = self._audio.copy(start, end)
        task = asyncio.create_task(self._run_final(item_id, samples, start / SAMPLE_RATE, text))
        self._finals.append(task)
        await self._limit_finals()

    async def _run_final(self, item_id: str, samples: np.ndarray, offset: float, text: ItemText) -> None:
        ended = time.perf_counter()
        try:
            result = await self._transcriber.final(samples, self._options(), offset)
        except SenseVoiceError as error:
            kind = "invalid_request_error" if error.http_status < 500 else "server_error"
            details = {"type": kind, "code": error_code(error), "message": str(error), "param": None}
            await self._send(
                server_event(f"{TRANSCRIPTION}.failed", item_id=item_id, content_index=0, error=details)
            )
            return
        remainder = text.final(result.text)
        if remainder:
            await self._send(
                server_event(f"{TRANSCRIPTION}.delta", item_id=item_id, content_index=0, delta=remainder)
            )
        self._observer.final_sent(time.perf_counter() - ended)
        await self._send(_completed_event(item_id, result, offset))

    async def _limit_finals(self) -> None:
        """Back-pressure: take no more audio while this session has as many finals running as it may."""
        while self._finals and self._finals[0].done():
            self._finals.popleft()
        while len(self._finals) >= self._limits.max_finals_in_flight:
            await asyncio.wait([self._finals.popleft()])

    def _options(self) -> DecodeOptions:
        """The server's options under the session's language, beam size and hotwords (which replace the
        server's); a server beam of 1 leaves hotwords their default beam."""
        chosen, defaults = self.settings.transcription, self._defaults
        server_beam = defaults.beam_size if defaults.beam_size > 1 else None
        return decode_options(
            chosen.language or defaults.language,
            defaults.use_itn,
            defaults.ban_emo_unk,
            server_beam if chosen.beam_size is None else chosen.beam_size,
            defaults.hotwords if chosen.hotwords is None else chosen.hotwords,
            defaults.hotword_score,
        )


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE


def _delta_event(item_id: str, delta: str, segment: Segment) -> dict:
    # Beyond OpenAI's fields: the whole current hypothesis and its tags, which appending clients ignore.
    return server_event(
        f"{TRANSCRIPTION}.delta", item_id=item_id, content_index=0, delta=delta, text=segment.text,
        language=segment.language, emotion=segment.emotion, event=segment.event,
    )  # fmt: skip


def _completed_event(item_id: str, result: Transcription, offset: float) -> dict:
    segments = [
        {"start": s.start, "end": s.end, "text": s.text, "language": s.language, "emotion": s.emotion,
         "event": s.event}
        for s in result.segments
    ]  # fmt: skip
    return server_event(
        f"{TRANSCRIPTION}.completed", item_id=item_id, content_index=0, transcript=result.text,
        usage={"type": "duration", "seconds": round(result.duration, 3)},
        # SenseVoice's extras, which OpenAI clients ignore.
        language=result.language, emotion=result.emotion, emotion_prob=result.emotion_prob,
        event=result.event, start=round(offset, 3), end=round(offset + result.duration, 3),
        segments=segments,
    )  # fmt: skip
