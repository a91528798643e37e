"""Long audio: a file becomes a stream of bounded utterances (VAD segments) without holding the whole file.

Audio is decoded in windows; each window feeds the VAD, and a segment's samples are cut from a buffer that
only reaches back to the earliest sample a segment may still start at. So a 2-hour file needs about as much
memory as a 10-minute one. Files no longer than the segment cap are one utterance, exactly as the reference
runs them; ``vad="on"`` segments them anyway, ``vad="off"`` cuts long files at fixed lengths instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .audio import SAMPLE_RATE, AudioInput, AudioStream, _label
from .batching import Utterance
from .decoding import FRAME_SECONDS, DecodeOptions
from .errors import InvalidOption, SenseVoiceError
from .results import Segment, Transcription
from .vad import SpeechSpan, VadOptions, VoiceActivityDetector

if TYPE_CHECKING:
    from .pipeline import SenseVoice

VadMode = Literal["auto", "on", "off"]
STREAM_WINDOW_SECONDS = 30.0
STOP_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class SegmentationOptions:
    vad: VadMode = "auto"
    max_segment_seconds: float = 30.0
    split_channels: bool = False

    def __post_init__(self) -> None:
        if self.vad not in ("auto", "on", "off"):
            raise InvalidOption(f"vad must be auto, on or off, not {self.vad!r}")
        if not 1.0 <= self.max_segment_seconds <= 600.0:
            raise InvalidOption("max segment length must be between 1 and 600 seconds")


@dataclass
class ChannelUtterance:
    """An utterance of one file, with the channel it came from (None unless channels are split)."""

    utterance: Utterance
    channel: int | None


class _SampleBuffer:
    """Consecutive samples of one channel from absolute index ``start`` on; the front can be released."""

    def __init__(self) -> None:
        self.start = 0
        self._pieces: list[np.ndarray] = []
        self._length = 0

    @property
    def end(self) -> int:
        return self.start + self._length

    def append(self, samples: np.ndarray) -> None:
        self._pieces.append(samples)
        self._length += len(samples)

    def cut(self, begin: int, end: int) -> np.ndarray:
        joined = np.concatenate(self._pieces) if len(self._pieces) != 1 else self._pieces[0]
        self._pieces = [joined]
        return joined[begin - self.start : end - self.start].copy()

    def release_before(self, index: int) -> None:
        drop = min(max(index - self.start, 0), self._length)
        if drop == 0:
            return
        joined = np.concatenate(self._pieces)[drop:]
        self._pieces = [joined] if len(joined) else []
        self._length -= drop
        self.start += drop


class _ChannelSegmenter:
    """Turns one channel's consecutive sample windows into utterances, per the segmentation options."""

    def __init__(
        self,
        options: SegmentationOptions,
        decode_options: DecodeOptions,
        detector: VoiceActivityDetector | None,
    ):
        self.options = options
        self.decode_options = decode_options
        self.cap = int(options.max_segment_seconds * SAMPLE_RATE)
        self.buffer = _SampleBuffer()
        self.detector = detector
        self.segmenter = None
        # "auto" waits to see whether the file outgrows the cap before it starts the VAD.
        self.use_vad = options.vad == "on"
        if self.use_vad:
            self._start_vad()

    def _start_vad(self) -> None:
        if self.detector is None:
            raise InvalidOption("VAD segmentation needs a voice activity detector")
        self.segmenter = self.detector.stream()
        self.use_vad = True

    def feed(self, samples: np.ndarray) -> list[Utterance]:
        self.buffer.append(samples)
        if self.options.vad == "off":
            return self._fixed_windows(final=False)
        if not self.use_vad:
            if self.buffer.end <= self.cap:
                return []
            self._start_vad()
            return self._spans(self.segmenter.feed(self.buffer.cut(self.buffer.start, self.buffer.end)))
        return self._spans(self.segmenter.feed(samples))

    def flush(self) -> list[Utterance]:
        if self.options.vad == "off":
            return self._fixed_windows(final=True)
        if not self.use_vad:
            if self.buffer.end == 0:
                return []
            return [self._utterance(self.buffer.start, self.buffer.end)]
        return self._spans(self.segmenter.flush())

    def _spans(self, spans: list[SpeechSpan]) -> list[Utterance]:
        utterances = [self._utterance(span.start, span.end) for span in spans]
        self.buffer.release_before(self.segmenter.earliest_pending_sample)
        return utterances

    def _fixed_windows(self, final: bool) -> list[Utterance]:
        utterances = []
        while self.buffer.end - self.buffer.start >= self.cap or (
            final and self.buffer.end > self.buffer.start
        ):
            end = min(self.buffer.start + self.cap, self.buffer.end)
            utterances.append(self._utterance(self.buffer.start, end))
            self.buffer.release_before(end)
        return utterances

    def _utterance(self, start: int, end: int) -> Utterance:
        return Utterance(self.buffer.cut(start, end), self.decode_options, offset=start / SAMPLE_RATE)


def stream_utterances(
    source: AudioInput,
    decode_options: DecodeOptions,
    options: SegmentationOptions,
    detector: VoiceActivityDetector | None,
    max_duration: float | None = None,
) -> tuple[AudioStream, Iterator[ChannelUtterance]]:
    """The decoding stream (for its duration and warnings once consumed) and the file's utterances."""
    stream = AudioStream(
        source,
        max_duration=max_duration,
        keep_channels=options.split_channels,
        window_seconds=STREAM_WINDOW_SECONDS,
    )

    def generate() -> Iterator[ChannelUtterance]:
        segmenters: list[_ChannelSegmenter] = []
        for channels in stream:
            if not segmenters:
                segmenters = [_ChannelSegmenter(options, decode_options, detector) for _ in channels]
            for index, (segmenter, samples) in enumerate(zip(segmenters, channels, strict=True)):
                label = index if options.split_channels else None
                yield from (ChannelUtterance(u, label) for u in segmenter.feed(samples))
        for index, segmenter in enumerate(segmenters):
            label = index if options.split_channels else None
            yield from (ChannelUtterance(u, label) for u in segmenter.flush())

    return stream, generate()


def assemble(source: str, duration: float, warnings: list[str], segments: list[Segment]) -> Transcription:
    """A file's result from its segments (of every channel), interleaved by time."""
    ordered = sorted(segments, key=lambda s: (s.start, s.channel if s.channel is not None else -1))
    return Transcription(
        source=source, duration=round(duration, 3), segments=ordered, warnings=list(warnings)
    )


def default_detector(options: SegmentationOptions) -> VoiceActivityDetector | None:
    if options.vad == "off":
        return None
    return VoiceActivityDetector(VadOptions(max_segment_seconds=options.max_segment_seconds))


@dataclass
class FileOutcome:
    """One input's end: its result, or the error that stopped it."""

    key: object
    source: str
    result: Transcription | None = None
    error: SenseVoiceError | None = None


@dataclass
class _FileState:
    source: str
    segments: list[Segment] = field(default_factory=list)
    outstanding: int = 0
    decoded: bool = False
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)
    failed: bool = False


_END = object()


def transcribe_sources(
    engine: SenseVoice,
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
    share batches. An input that fails to decode yields its error; the others go on. ``on_progress(key,
    seconds)`` is told after each batch how far into an input transcription has reached, so a caller can
    show progress within a long file.
    """
    detector = default_detector(options)
    # Bounds decoded-but-unprocessed audio at about two batches of full-length segments.
    segment_frames = int(options.max_segment_seconds / FRAME_SECONDS)
    handoff: queue.Queue = queue.Queue(maxsize=max(8, 2 * max_batch_frames // segment_frames))
    stop = threading.Event()

    def hand_over(item: object) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def produce() -> None:
        seen: set[object] = set()
        try:
            for key, source in sources:
                if key in seen:
                    raise ValueError(f"input key {key!r} given twice")
                seen.add(key)
                try:
                    stream, utterances = stream_utterances(
                        source, decode_options, options, detector, max_duration
                    )
                    hand_over(("start", key, stream.source))
                    for item in utterances:
                        hand_over(("utterance", key, item))
                    hand_over(("decoded", key, stream))
                except SenseVoiceError as error:
                    hand_over(("error", key, (_label(source), error)))
        except _Stopped:
            return
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            last: object = ("crash", None, error)
        else:
            last = _END
        with suppress(_Stopped):
            hand_over(last)

    producer = threading.Thread(target=produce, name="decode-and-segment", daemon=True)
    producer.start()
    try:
        yield from _run_handed_over(engine, handoff, max_batch_frames, batch_size, on_progress)
    finally:
        stop.set()
        # It stops at its next hand-over; one stuck reading its input (a dead network share) is left behind
        # as a daemon rather than hanging the caller, say after Ctrl-C.
        producer.join(timeout=STOP_WAIT_SECONDS)


class _Stopped(Exception):
    """The consumer has gone: the decoding thread ends without handing over more."""


def _run_handed_over(
    engine: SenseVoice,
    handoff: queue.Queue,
    max_batch_frames: int,
    batch_size: int | None,
    on_progress: Callable[[object, float], None] | None,
) -> Iterator[FileOutcome]:
    files: dict[object, _FileState] = {}
    pending: list[tuple[object, ChannelUtterance]] = []
    pending_frames = 0
    finished = False
    while not finished or pending:
        item = None
        if not finished:
            try:
                # Wait for more work only while a batch would still be small.
                item = handoff.get(timeout=0.02 if pending else None)
            except queue.Empty:
                item = None
        if item is _END:
            finished = True
        elif item is not None:
            kind, key, payload = item
            if kind == "crash":
                raise payload
            if kind == "start":
                files[key] = _FileState(payload)
            elif kind == "utterance":
                files[key].outstanding += 1
                pending.append((key, payload))
                pending_frames += payload.utterance.frames
            elif kind == "decoded":
                state = files[key]
                state.decoded, state.duration, state.warnings = True, payload.duration, payload.warnings
            else:
                label, error = payload
                state = files.setdefault(key, _FileState(label))
                state.failed = True
                yield FileOutcome(key, state.source, error=error)
        batch_ready = pending and (pending_frames >= max_batch_frames or item is None or finished)
        if batch_ready:
            batch, pending, pending_frames = pending, [], 0
            segments = engine.run_utterances([cu.utterance for _, cu in batch], max_batch_frames, batch_size)
            for (key, channel_utterance), segment in zip(batch, segments, strict=True):
                if key not in files:  # its file failed after this segment was queued
                    continue
                segment.channel = channel_utterance.channel
                files[key].segments.append(segment)
                files[key].outstanding -= 1
                if on_progress is not None:
                    on_progress(key, segment.end)
        for key in [k for k, s in files.items() if s.decoded and s.outstanding == 0 and not s.failed]:
            state = files.pop(key)
            yield FileOutcome(
                key, state.source, assemble(state.source, state.duration, state.warnings, state.segments)
            )
        for key in [k for k, s in files.items() if s.failed]:
            files.pop(key)
