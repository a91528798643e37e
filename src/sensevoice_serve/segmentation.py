"""One input becomes a stream of bounded utterances (VAD segments) without holding the whole file.

Audio is decoded in windows; each window feeds the VAD, and a segment's samples are cut from a buffer that
only reaches back to the earliest sample a segment may still start at. So a 2-hour file needs about as much
memory as a 10-minute one. Files no longer than the segment cap are one utterance, exactly as the reference
runs them; ``vad="on"`` segments them anyway, ``vad="off"`` cuts long files at fixed lengths instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .audio import SAMPLE_RATE, AudioInput, AudioStream
from .batching import Utterance
from .decoding import DecodeOptions
from .errors import InvalidOption
from .vad import SpeechSpan, VadOptions, VoiceActivityDetector

VadMode = Literal["auto", "on", "off"]
STREAM_WINDOW_SECONDS = 30.0


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


def default_detector(options: SegmentationOptions) -> VoiceActivityDetector | None:
    if options.vad == "off":
        return None
    return VoiceActivityDetector(VadOptions(max_segment_seconds=options.max_segment_seconds))
