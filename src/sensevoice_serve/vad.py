"""Speech segmentation for long audio: bounded, padded segments the model can attend over.

SenseVoiceSmall's attention is quadratic in the input length, so minutes or hours of audio are cut into
speech segments of at most ``max_segment_seconds`` before they reach the scheduler. The speech
probabilities come from Silero VAD v6 through ``silero`` (which model, why not its package's own API, speed
and threads are written down there); this module knows only that there is one probability per
``WINDOW_SAMPLES`` of 16 kHz audio, and turns them into segments.

Streaming: ``StreamingSegmenter`` takes consecutive chunks of a signal and returns segments as soon as
they are final, holding only the probability stream's state and the probabilities of the segment being
built (bounded by the cap), so memory does not grow with the file. ``VoiceActivityDetector.segments``
feeds the whole signal through the same machinery, and probabilities do not depend on the chunking, so
chunked and whole-file runs give identical segments.

Thread safety: a ``VoiceActivityDetector`` holds only read-only weights and may be shared; all per-signal
state lives in its ``StreamingSegmenter`` objects, each of which must be used from one thread at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidOption
from .silero import SAMPLE_RATE, WINDOW_SAMPLES, SileroModel, SpeechProbabilities, load_model

# Probabilities are smoothed over 5 windows (160 ms) before picking where to split an over-long
# segment, so a cut lands in a real pause rather than on a one-window dip inside a word.
SMOOTHING_RADIUS_WINDOWS = 2
# Silero's own convention: once speech has started it only counts as silence below threshold - 0.15,
# so probabilities hovering at the threshold do not chop a stretch of speech into pieces.
RELEASE_MARGIN = 0.15


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    min_speech_seconds: float = 0.25
    min_silence_seconds: float = 0.3  # gaps shorter than this are merged
    speech_pad_seconds: float = 0.1  # configurable padding around speech
    max_segment_seconds: float = 30.0  # hard cap (like funasr's max_single_segment_time)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InvalidOption(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        for name in ("min_speech_seconds", "min_silence_seconds", "speech_pad_seconds"):
            if getattr(self, name) < 0:
                raise InvalidOption(f"VAD {name} must not be negative, got {getattr(self, name)}")
        # A stretch must be able to close (speech + silence) and carry its pads before the cap forces a
        # cut; this also guarantees the cut search range is never empty.
        shortest_cap = max(
            1.0, self.min_speech_seconds + self.min_silence_seconds + 2 * self.speech_pad_seconds
        )
        if self.max_segment_seconds < shortest_cap:
            raise InvalidOption(
                f"VAD max_segment_seconds must be at least {shortest_cap:g} with these options, "
                f"got {self.max_segment_seconds}"
            )


@dataclass(frozen=True)
class SpeechSpan:
    start: int  # sample index, 16 kHz
    end: int  # exclusive


def _seconds_to_samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


@dataclass
class _OpenStretch:
    """The speech stretch being built: where it starts and the probabilities needed to cut it."""

    speech_start: int  # sample where speech (or, after a cut, this piece) starts
    first_window: int  # window index of probabilities[0]
    probabilities: list[float]
    padded_start: int | None = None  # known once the stretch is long enough to be kept
    silence_from_window: int | None = None  # start of the current run of silence inside the stretch


class SegmentBuilder:
    """Turns per-window speech probabilities into final, padded, capped segments, incrementally.

    Rules: speech starts at a window >= threshold and ends after ``min_silence_seconds`` of windows below
    ``threshold - 0.15`` (shorter gaps are merged); stretches shorter than ``min_speech_seconds`` are
    dropped; pads of ``speech_pad_seconds`` are added on both sides, halving the gap when two segments are
    closer than two pads and never leaving the signal; a stretch that reaches ``max_segment_seconds`` is
    cut at its quietest point (lowest smoothed probability) in the second half of the allowed length,
    latest on ties, and the rest goes on as a new piece, so every segment is at most the cap.

    Each decision depends only on windows already seen, so feeding probabilities in any chunking gives
    the same segments. Memory is bounded by the cap: only the open stretch's probabilities are kept.
    """

    def __init__(self, options: VadOptions) -> None:
        self._threshold = options.threshold
        self._release_threshold = max(options.threshold - RELEASE_MARGIN, 0.01)
        self._min_speech = _seconds_to_samples(options.min_speech_seconds)
        self._min_silence_windows = math.ceil(options.min_silence_seconds * SAMPLE_RATE / WINDOW_SAMPLES)
        self._pad = _seconds_to_samples(options.speech_pad_seconds)
        self._cap = _seconds_to_samples(options.max_segment_seconds)
        self._next_window = 0
        self._emitted_end = 0  # later segments start at or after the end of the last one
        self._pending: tuple[int, int] | None = None  # closed (padded start, speech end) awaiting its end pad
        self._open: _OpenStretch | None = None
        self._ready: list[SpeechSpan] = []

    @property
    def earliest_pending_sample(self) -> int:
        """No segment returned from now on starts before this sample: earlier audio may be released."""
        if self._pending is not None:
            return self._pending[0]
        stretch = self._open
        if stretch is not None and stretch.padded_start is not None:
            return stretch.padded_start
        next_speech_start = self._next_window * WINDOW_SAMPLES if stretch is None else stretch.speech_start
        return max(next_speech_start - self._pad, self._emitted_end)

    def push(self, probabilities: np.ndarray) -> list[SpeechSpan]:
        """Consume the next windows' probabilities; return the segments that became final."""
        for probability in np.asarray(probabilities, dtype=np.float64).tolist():
            self._step(self._next_window, probability)
            self._next_window += 1
        return self._take_ready()

    def finish(self, total_samples: int) -> list[SpeechSpan]:
        """End of signal (``total_samples`` long): close what is open and return the last segments."""
        stretch = self._open
        if stretch is not None:
            silence_from = stretch.silence_from_window
            speech_end = (self._next_window if silence_from is None else silence_from) * WINDOW_SAMPLES
            self._close(min(speech_end, total_samples))
        if self._pending is not None:
            padded_start, speech_end = self._pending
            self._emit(padded_start, min(speech_end + self._pad, total_samples))
            self._pending = None
        return self._take_ready()

    def _step(self, window: int, probability: float) -> None:
        window_start = window * WINDOW_SAMPLES
        stretch = self._open
        if stretch is None:
            # No speech can start within two pads of the pending end any more, so its pad is settled.
            if self._pending is not None and window_start - self._pending[1] >= 2 * self._pad:
                self._settle_pending(next_speech_start=None)
            if probability >= self._threshold:
                self._open = _OpenStretch(window_start, window, [probability])
                self._confirm_if_long_enough(window)
            return

        stretch.probabilities.append(probability)
        if probability >= self._threshold:
            stretch.silence_from_window = None
        elif probability < self._release_threshold and stretch.silence_from_window is None:
            stretch.silence_from_window = window
        silence_from = stretch.silence_from_window
        if silence_from is not None and window + 1 - silence_from >= self._min_silence_windows:
            self._close(silence_from * WINDOW_SAMPLES)
            return
        self._confirm_if_long_enough(window)
        if (
            stretch.padded_start is not None
            and window_start + WINDOW_SAMPLES - stretch.padded_start >= self._cap
        ):
            self._cut(window)

    def _confirm_if_long_enough(self, window: int) -> None:
        stretch = self._open
        assert stretch is not None
        silence_from = stretch.silence_from_window
        # The speech part can only grow from here, so once it is long enough the stretch will be kept.
        speech_end = (window + 1 if silence_from is None else silence_from) * WINDOW_SAMPLES
        if stretch.padded_start is None and speech_end - stretch.speech_start >= self._min_speech:
            self._confirm(stretch)

    def _confirm(self, stretch: _OpenStretch) -> None:
        if self._pending is not None:
            self._settle_pending(next_speech_start=stretch.speech_start)
        stretch.padded_start = max(stretch.speech_start - self._pad, self._emitted_end)

    def _settle_pending(self, next_speech_start: int | None) -> None:
        assert self._pending is not None
        padded_start, speech_end = self._pending
        end_pad = self._pad
        if next_speech_start is not None:
            end_pad = min(end_pad, (next_speech_start - speech_end) // 2)
        self._emit(padded_start, speech_end + end_pad)
        self._pending = None

    def _close(self, speech_end: int) -> None:
        stretch = self._open
        assert stretch is not None
        self._open = None
        if speech_end - stretch.speech_start < max(self._min_speech, 1):
            return
        if stretch.padded_start is None:
            self._confirm(stretch)
        assert stretch.padded_start is not None
        self._pending = (stretch.padded_start, speech_end)

    def _cut(self, window: int) -> None:
        """Split the open stretch at its quietest point; the part before it becomes a final segment."""
        stretch = self._open
        assert stretch is not None and stretch.padded_start is not None
        radius = SMOOTHING_RADIUS_WINDOWS
        smoothed = np.convolve(
            stretch.probabilities, np.full(2 * radius + 1, 1 / (2 * radius + 1)), mode="valid"
        )
        # Cuts fall on window centres, where a window's probability describes the audio best.
        half = WINDOW_SAMPLES // 2
        earliest = math.ceil((stretch.padded_start + self._cap // 2 - half) / WINDOW_SAMPLES)
        latest = min((stretch.padded_start + self._cap - half) // WINDOW_SAMPLES, window - radius)
        first_smoothed = stretch.first_window + radius
        earliest = min(max(earliest, first_smoothed), latest)
        candidates = smoothed[earliest - first_smoothed : latest - first_smoothed + 1]
        # Latest of equally quiet points, so pieces come out as long as the cap allows.
        quietest = latest - int(np.argmin(candidates[::-1]))
        cut = quietest * WINDOW_SAMPLES + half
        self._emit(stretch.padded_start, cut)
        stretch.probabilities = stretch.probabilities[quietest - stretch.first_window :]
        stretch.first_window = quietest
        stretch.speech_start = cut
        stretch.padded_start = cut

    def _emit(self, start: int, end: int) -> None:
        end = min(end, start + self._cap)
        if end > start:
            self._ready.append(SpeechSpan(start, end))
            self._emitted_end = end

    def _take_ready(self) -> list[SpeechSpan]:
        ready, self._ready = self._ready, []
        return ready


class StreamingSegmenter:
    """Segments one signal fed as consecutive 16 kHz chunks, with memory that does not grow with it.

    ``feed`` returns the segments that became final (absolute sample indices); ``flush`` ends the signal
    and returns the rest. Segments of fed audio are delayed by up to one block (~16 s) of computation,
    plus however long the segment's end takes to be decided. Use from one thread at a time; a
    detector's ``stream()`` makes one.
    """

    def __init__(self, probabilities: SpeechProbabilities, options: VadOptions) -> None:
        self._probabilities = probabilities
        self._builder = SegmentBuilder(options)
        self._samples_seen = 0
        self._flushed = False

    @property
    def samples_seen(self) -> int:
        return self._samples_seen

    @property
    def earliest_pending_sample(self) -> int:
        """No segment returned from now on starts before this sample: callers may drop earlier audio."""
        return self._builder.earliest_pending_sample

    def feed(self, chunk: np.ndarray) -> list[SpeechSpan]:
        if self._flushed:
            raise RuntimeError("This StreamingSegmenter was flushed; start a new one for the next signal")
        samples = _as_mono_float32(chunk)
        self._samples_seen += len(samples)
        return self._builder.push(self._probabilities.push(samples))

    def flush(self) -> list[SpeechSpan]:
        if self._flushed:
            return []
        self._flushed = True
        spans = self._builder.push(self._probabilities.finish())
        return spans + self._builder.finish(self._samples_seen)


def _as_mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"The VAD takes mono samples (a 1-D array), got shape {array.shape}")
    return array


class VoiceActivityDetector:
    """Silero VAD v6 on the CPU over 16 kHz mono float32 samples.

    The shipped model is loaded (and self-checked) once per process, when a detector first computes: with
    torch, which the int8 runtime otherwise never imports, so audio that needs no cutting never pays for it.
    A detector holds only read-only weights: it may be shared across threads, as long as each
    ``StreamingSegmenter`` is used from one thread at a time.
    """

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        self.options = options

    @property
    def _model(self) -> SileroModel:
        return load_model()

    def stream(self) -> StreamingSegmenter:
        """A segmenter for one signal that will be fed in consecutive chunks."""
        return StreamingSegmenter(self._model.stream(), self.options)

    def speech_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """One speech probability per 512-sample window; the last partial window is zero-padded."""
        stream = self._model.stream()
        head = stream.push(_as_mono_float32(samples))
        return np.concatenate([head, stream.finish()])

    def segments(self, samples: np.ndarray) -> list[SpeechSpan]:
        """Final segments of a whole signal: merged, padded, capped, sorted and non-overlapping."""
        segmenter = self.stream()
        return segmenter.feed(samples) + segmenter.flush()
