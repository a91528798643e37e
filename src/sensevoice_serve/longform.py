"""Many inputs, long ones included, transcribed with decoding overlapping inference.

A background thread opens each input and segments it (``segmentation``: PyAV and the VAD) while the caller's
thread runs the model on batches that mix the segments of different files; a file's result is assembled as
soon as its last segment is back. Memory stays bounded by the queue between the two threads.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from .audio import AudioInput, AudioStream, input_label
from .batching import Utterance
from .decoding import FRAME_SECONDS, DecodeOptions
from .errors import AudioDecodeError, SenseVoiceError
from .results import Segment, Transcription
from .segmentation import ChannelUtterance, SegmentationOptions, default_detector, stream_utterances

logger = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 5.0


def assemble(source: str, duration: float, warnings: list[str], segments: list[Segment]) -> Transcription:
    """A file's result from its segments (of every channel), interleaved by time."""
    ordered = sorted(segments, key=lambda s: (s.start, s.channel if s.channel is not None else -1))
    return Transcription(
        source=source, duration=round(duration, 3), segments=ordered, warnings=list(warnings)
    )


@dataclass
class FileOutcome:
    """One input's end: its result, or the error that stopped it."""

    key: object
    source: str
    result: Transcription | None = None
    error: SenseVoiceError | None = None


class UtteranceRunner(Protocol):
    """The model as ``transcribe_sources`` needs it; ``pipeline.SenseVoice`` is one.

    pipeline imports this module and hands itself in, never the reverse: inputs flow from here into the
    model through this one call, and its segments come back.
    """

    def run_utterances(
        self, utterances: Sequence[Utterance], max_batch_frames: int, max_batch_size: int | None
    ) -> list[Segment]: ...


def transcribe_sources(
    runner: UtteranceRunner,
    sources: Iterable[tuple[object, AudioInput]],
    decode_options: DecodeOptions,
    options: SegmentationOptions,
    *,
    max_batch_frames: int,
    batch_size: int | None = None,
    max_duration: float | None = None,
    on_progress: Callable[[object, float], None] | None = None,
) -> Iterator[FileOutcome]:
    """Transcribe many inputs, long ones included, yielding each as soon as its last segment is done.

    A background thread decodes and segments (PyAV and the VAD) while this thread runs the model, so decoding
    overlaps inference; the queue between them is bounded, and so is memory. Segments of different files
    share batches. An input that fails to decode or segment, whatever the exception, yields its error; the
    others go on. Keys must be unique; an error of ``sources`` itself ends the run in the caller's thread.
    ``on_progress(key, seconds)`` is told after each batch how far into an input transcription has reached,
    so a caller can show progress within a long file.
    """
    detector = default_detector(options)

    def open_input(source: AudioInput) -> tuple[AudioStream, Iterator[ChannelUtterance]]:
        return stream_utterances(source, decode_options, options, detector, max_duration)

    # Bounds decoded-but-unprocessed audio at about two batches of full-length segments.
    segment_frames = int(options.max_segment_seconds / FRAME_SECONDS)
    handoff = _Handoff(maxsize=max(8, 2 * max_batch_frames // segment_frames))
    producer = threading.Thread(
        target=_produce, args=(sources, open_input, handoff), name="decode-and-segment", daemon=True
    )
    producer.start()
    try:
        yield from _consume(runner, handoff, max_batch_frames, batch_size, on_progress)
    finally:
        handoff.stop()
        # It stops at its next hand-over; one stuck reading its input (a dead network share) is left behind
        # as a daemon rather than hanging the caller, say after Ctrl-C.
        producer.join(timeout=STOP_WAIT_SECONDS)


# What the decoding thread hands over, in order: per input, _Started, its _Utterances and _Decoded, or
# _Failed at any point; after the last input _AllHandedOver, or _Crashed if the thread itself died.


@dataclass(frozen=True)
class _Started:
    key: object
    source: str


@dataclass(frozen=True)
class _Utterance:
    key: object
    piece: ChannelUtterance


@dataclass(frozen=True)
class _Decoded:
    """The input is read to its end: its duration and warnings are final and no more utterances come."""

    key: object
    duration: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Failed:
    key: object
    source: str
    error: SenseVoiceError


@dataclass(frozen=True)
class _AllHandedOver:
    pass


@dataclass(frozen=True)
class _Crashed:
    """An error that is no one input's (``sources`` raised, a key came twice): re-raised to the caller."""

    error: BaseException


_Message = _Started | _Utterance | _Decoded | _Failed | _AllHandedOver | _Crashed
_InputOpener = Callable[[AudioInput], tuple[AudioStream, Iterator[ChannelUtterance]]]


class _Stopped(Exception):
    """The consumer has gone: the decoding thread ends without handing over more."""


class _Handoff:
    """The bounded queue from the decoding thread to the caller's, and the caller's signal to stop."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=maxsize)
        self._stopped = threading.Event()

    def put(self, message: _Message) -> None:
        """Wait for room; raises ``_Stopped`` once the caller has gone."""
        while not self._stopped.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self, wait: bool) -> _Message | None:
        """The next message; without ``wait``, None when none comes within a moment."""
        try:
            return self._queue.get(timeout=None if wait else 0.02)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._stopped.set()


def _produce(
    sources: Iterable[tuple[object, AudioInput]],
    open_input: _InputOpener,
    handoff: _Handoff,
) -> None:
    """The decoding thread: every input's messages, then the end (or the error that ended the run)."""
    seen: set[object] = set()
    try:
        for key, source in sources:
            if key in seen:
                raise ValueError(f"input key {key!r} given twice")
            seen.add(key)
            _hand_over_input(key, source, open_input, handoff)
    except _Stopped:
        return
    except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
        last: _Message = _Crashed(error)
    else:
        last = _AllHandedOver()
    with suppress(_Stopped):
        handoff.put(last)


def _hand_over_input(
    key: object,
    source: AudioInput,
    open_input: _InputOpener,
    handoff: _Handoff,
) -> None:
    """One input's messages. Any exception from reading or segmenting it becomes its own error."""
    try:
        stream, utterances = open_input(source)
        handoff.put(_Started(key, stream.source))
        for piece in utterances:
            handoff.put(_Utterance(key, piece))
        handoff.put(_Decoded(key, stream.duration, tuple(stream.warnings)))
    except _Stopped:
        raise
    except Exception as error:
        label = input_label(source)
        handoff.put(_Failed(key, label, input_error(error, label)))


def input_error(error: Exception, label: str) -> SenseVoiceError:
    """Ours as they are; anything else (a decoder's or our own bug) named, logged and wrapped as ours."""
    if isinstance(error, SenseVoiceError):
        return error
    logger.warning("%s failed with an unexpected error", label, exc_info=error)
    wrapped = AudioDecodeError(f"could not read the input ({type(error).__name__}: {error})")
    wrapped.__cause__ = error
    return wrapped


def _consume(
    runner: UtteranceRunner,
    handoff: _Handoff,
    max_batch_frames: int,
    batch_size: int | None,
    on_progress: Callable[[object, float], None] | None,
) -> Iterator[FileOutcome]:
    """The caller's thread: messages into the ledger, batches through the model, outcomes out."""
    ledger = _Ledger(on_progress)
    all_handed_over = False
    while not all_handed_over or ledger.pending:
        # Wait for more work only while a batch would still be small.
        message = None if all_handed_over else handoff.get(wait=not ledger.pending)
        if isinstance(message, _Crashed):
            raise message.error
        all_handed_over = all_handed_over or isinstance(message, _AllHandedOver)
        if isinstance(message, _Failed):
            yield ledger.fail(message)
        elif message is not None:
            ledger.apply(message)
        if ledger.pending and (
            ledger.pending_frames >= max_batch_frames or message is None or all_handed_over
        ):
            batch = ledger.take_batch()
            utterances = [piece.utterance for _, piece in batch]
            ledger.record(batch, runner.run_utterances(utterances, max_batch_frames, batch_size))
        yield from ledger.completed()


@dataclass
class _FileState:
    source: str
    segments: list[Segment] = field(default_factory=list)
    outstanding: int = 0  # utterances handed over whose segments have not come back
    decoded: _Decoded | None = None


class _Ledger:
    """Each input under way and the utterances waiting for the next batch, kept by the caller's thread."""

    def __init__(self, on_progress: Callable[[object, float], None] | None) -> None:
        self._files: dict[object, _FileState] = {}
        self.pending: list[tuple[object, ChannelUtterance]] = []
        self.pending_frames = 0
        self._on_progress = on_progress

    def apply(self, message: _Message) -> None:
        match message:
            case _Started(key, source):
                self._files[key] = _FileState(source)
            case _Utterance(key, piece):
                self._files[key].outstanding += 1
                self.pending.append((key, piece))
                self.pending_frames += piece.utterance.frames
            case _Decoded(key):
                self._files[key].decoded = message

    def fail(self, message: _Failed) -> FileOutcome:
        """The input is dropped with its waiting utterances: nothing of it runs any more."""
        self._files.pop(message.key, None)
        self.pending = [(key, piece) for key, piece in self.pending if key != message.key]
        self.pending_frames = sum(piece.utterance.frames for _, piece in self.pending)
        return FileOutcome(message.key, message.source, error=message.error)

    def take_batch(self) -> list[tuple[object, ChannelUtterance]]:
        batch, self.pending, self.pending_frames = self.pending, [], 0
        return batch

    def record(self, batch: list[tuple[object, ChannelUtterance]], segments: list[Segment]) -> None:
        for (key, piece), segment in zip(batch, segments, strict=True):
            segment.channel = piece.channel
            state = self._files[key]
            state.segments.append(segment)
            state.outstanding -= 1
            if self._on_progress is not None:
                self._on_progress(key, segment.end)

    def completed(self) -> list[FileOutcome]:
        """The outcomes of inputs read to their end whose every segment is back, now off the ledger."""
        done = [key for key, state in self._files.items() if state.decoded and not state.outstanding]
        return [self._result(key, self._files.pop(key)) for key in done]

    @staticmethod
    def _result(key: object, state: _FileState) -> FileOutcome:
        assert state.decoded is not None
        decoded = state.decoded
        result = assemble(state.source, decoded.duration, list(decoded.warnings), state.segments)
        return FileOutcome(key, state.source, result)
