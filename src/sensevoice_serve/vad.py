"""Speech segmentation for long audio: bounded, padded segments the model can attend over.

SenseVoiceSmall's attention is quadratic in the input length, so minutes or hours of audio are cut into
speech segments of at most ``max_segment_seconds`` before they reach the scheduler.

Which VAD, and why
------------------
Silero VAD v6, from the ``silero-vad`` PyPI package (MIT), which ships its weights inside the wheel
(``silero_vad/data/silero_vad.jit``, plus ONNX exports). From 6.2.3 on, the package's only hard
dependencies are ``torch`` and ``packaging``: torchaudio and onnxruntime moved to extras, so
``pip install "silero-vad>=6.2.3"`` brings nothing that conflicts with our CPU torch pin. Earlier releases
hard-require torchaudio (no build exists for our torch), and 6.0/6.1 ship older weights.

- torch-only: the TorchScript file runs on the torch we already have; the ONNX file would add
  onnxruntime as a dependency for no gain.
- We never import the ``silero_vad`` package itself: its ``model`` module calls
  ``torch.set_num_threads(1)`` at import time, which would silently slow down the ASR model in the same
  process. We only locate its data directory (``importlib.util.find_spec`` does not execute the package).
- The package also ships ``silero_vad_16k.safetensors``, but those weights are not the ones in the
  TorchScript/ONNX model the package uses by default (they differ by far more than rounding), so we
  load the TorchScript model.

Speed: the scripted model takes one 512-sample window per call and carries an LSTM state, so stepping it
runs at only ~100x real time on one core. Only the LSTM is sequential, though: the STFT and convolution
encoder see one window (plus 64 samples of context) at a time and no state. We therefore run the scripted
STFT, encoder and output head on a whole block of windows at once, and the LSTM over the block's sequence
with one ``torch.nn.LSTM`` call holding the scripted cell's weights. Measured on a 2-core machine over
10 minutes of speech and pauses: ~1,500x real time on one thread, ~2,400x on two. A self-check at load
time compares this path with the scripted model's own stepwise output, so a future package whose internals
change fails loudly instead of segmenting badly.

Threads: nothing here calls ``torch.set_num_threads``: it is process-wide state that the ASR model depends
on, and with torch's OpenMP backend even a temporary change sticks to threads that start meanwhile. The
VAD runs in the calling thread with that thread's intra-op setting. One thread is plenty (a 2-hour file in
about 5 s), and more threads than idle cores hurt: two threads beside a busy core fell to a few hundred
times real time, as OpenMP threads wait for each other. Callers that share the CPU with the model should
therefore run the VAD where torch uses one thread, e.g. in the decoding process pool.

Streaming: ``StreamingSegmenter`` takes consecutive chunks of a signal and returns segments as soon as
they are final, holding only the LSTM state, less than one block of unprocessed samples and the
probabilities of the segment being built (bounded by the cap), so memory does not grow with the file.
``VoiceActivityDetector.segments`` feeds the whole signal through the same machinery, and blocks are
aligned to absolute window positions, so chunked and whole-file runs give identical segments.

Thread safety: a ``VoiceActivityDetector`` holds only read-only weights and may be shared; all per-signal
state lives in its ``StreamingSegmenter`` objects, each of which must be used from one thread at a time.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InvalidOption, ModelLoadError

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512  # silero's native window at 16 kHz: one probability per 32 ms
CONTEXT_SAMPLES = 64  # the tail of the previous window that silero prepends to each window
# Windows per network call: big enough to amortise the per-call overhead (~1,500x real time),
# small enough that streamed segments are not held back long (about 16 s of audio).
BLOCK_WINDOWS = 512
# Probabilities are smoothed over 5 windows (160 ms) before picking where to split an over-long
# segment, so a cut lands in a real pause rather than on a one-window dip inside a word.
SMOOTHING_RADIUS_WINDOWS = 2
# Silero's own convention: once speech has started it only counts as silence below threshold - 0.15,
# so probabilities hovering at the threshold do not chop a stretch of speech into pieces.
RELEASE_MARGIN = 0.15
SELF_CHECK_TOLERANCE = 1e-4


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

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_seconds(self) -> float:
        return self.end / SAMPLE_RATE


def _seconds_to_samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


class _SileroNetwork:
    """Silero VAD's scripted layers, run a block of windows per call (see the module docstring)."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        self._scripted = scripted
        try:
            core = scripted._model
            self._spectrum = core.stft
            self._encoder = core.encoder
            self._head = core.decoder.decoder
            cell = core.decoder.rnn
            hidden_size = cell.weight_hh.shape[1]
            self._lstm = torch.nn.LSTM(cell.weight_ih.shape[1], hidden_size, batch_first=True)
            with torch.no_grad():
                self._lstm.weight_ih_l0.copy_(cell.weight_ih)
                self._lstm.weight_hh_l0.copy_(cell.weight_hh)
                self._lstm.bias_ih_l0.copy_(cell.bias_ih)
                self._lstm.bias_hh_l0.copy_(cell.bias_hh)
        except (AttributeError, RuntimeError) as error:
            raise ModelLoadError(
                f"silero-vad's TorchScript model has an unexpected layout: {error}"
            ) from error
        self._lstm.eval()
        self._hidden_size = hidden_size

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(1, 1, self._hidden_size)
        return zeros, zeros.clone()

    def probabilities(
        self, windows: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(N, CONTEXT + WINDOW) windows in time order -> N speech probabilities and the new LSTM state."""
        features = self._encoder(self._spectrum(windows)).squeeze(-1)
        hidden, state = self._lstm(features.unsqueeze(0), state)
        speech = self._head(hidden[0].unsqueeze(-1))
        return speech.mean(dim=(1, 2)), state

    def check_against_scripted(self) -> None:
        """Fail at load time if the batched path no longer reproduces the scripted model stepwise."""
        probe = _self_check_probe()
        with torch.inference_mode():
            self._scripted.reset_states()
            expected = torch.cat(
                [
                    self._scripted(window.unsqueeze(0), SAMPLE_RATE)[:, 0]
                    for window in probe.split(WINDOW_SAMPLES)
                ]
            )
            self._scripted.reset_states()
            with_context = torch.cat([torch.zeros(CONTEXT_SAMPLES), probe])
            windows = with_context.unfold(0, CONTEXT_SAMPLES + WINDOW_SAMPLES, WINDOW_SAMPLES)
            batched, _ = self.probabilities(windows, self.initial_state())
        difference = (batched - expected).abs().max().item()
        if difference > SELF_CHECK_TOLERANCE:
            raise ModelLoadError(
                "silero-vad's model no longer matches our batched evaluation "
                f"(max difference {difference:.2g}); pin silero-vad to a version this module supports"
            )


def _self_check_probe() -> torch.Tensor:
    """About a second of voiced-like signal (a gliding harmonic tone over noise), then noise alone."""
    generator = np.random.default_rng(0)
    voiced_windows = 32
    signal = generator.normal(scale=0.01, size=2 * voiced_windows * WINDOW_SAMPLES)
    time = np.arange(voiced_windows * WINDOW_SAMPLES) / SAMPLE_RATE
    pitch_phase = 2 * np.pi * (120 * time + 40 * time**2)
    signal[: len(time)] += 0.3 * sum(np.sin(harmonic * pitch_phase) / harmonic for harmonic in range(1, 8))
    return torch.from_numpy(signal.astype(np.float32))


def _shipped_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            'The VAD model comes from the silero-vad package: pip install "silero-vad>=6.2.3"'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise ModelLoadError(f"silero-vad is installed but its model file {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _load_network() -> _SileroNetwork:
    # Cached: every detector shares the one read-only copy, loaded and self-checked once per process.
    path = _shipped_model_path()
    try:
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as error:
        raise ModelLoadError(f"Could not load the silero VAD model {path}: {error}") from error
    network = _SileroNetwork(scripted)
    network.check_against_scripted()
    return network


class _ProbabilityStream:
    """Speech probabilities of consecutive chunks, computed a fixed block of windows at a time.

    Blocks start at absolute multiples of BLOCK_WINDOWS, so every window is computed in the same batch
    position whatever the chunking: chunked and whole-signal runs are bit-identical.
    """

    def __init__(self, network: _SileroNetwork) -> None:
        self._network = network
        self._state = network.initial_state()
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._unprocessed = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        # Whole signals arrive with nothing buffered: use them in place rather than copy hours of audio.
        buffered = np.concatenate([self._unprocessed, samples]) if len(self._unprocessed) else samples
        block_samples = BLOCK_WINDOWS * WINDOW_SAMPLES
        complete = len(buffered) // block_samples * block_samples
        probabilities = [
            self._run(buffered[offset : offset + block_samples])
            for offset in range(0, complete, block_samples)
        ]
        # Copy, so a large caller array is not kept alive through a view of its tail.
        self._unprocessed = buffered[complete:].copy()
        return np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """Probabilities of what is left, the last window zero-padded (as silero itself does)."""
        if not len(self._unprocessed):
            return np.zeros(0, dtype=np.float32)
        padded_length = math.ceil(len(self._unprocessed) / WINDOW_SAMPLES) * WINDOW_SAMPLES
        tail = np.zeros(padded_length, dtype=np.float32)
        tail[: len(self._unprocessed)] = self._unprocessed
        self._unprocessed = np.zeros(0, dtype=np.float32)
        return self._run(tail)

    def _run(self, block: np.ndarray) -> np.ndarray:
        with_context = np.concatenate([self._context, block])
        self._context = with_context[-CONTEXT_SAMPLES:].copy()
        with torch.inference_mode():
            windows = torch.from_numpy(with_context).unfold(
                0, CONTEXT_SAMPLES + WINDOW_SAMPLES, WINDOW_SAMPLES
            )
            probabilities, self._state = self._network.probabilities(windows, self._state)
        return probabilities.numpy()


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
    plus however long the segment's end takes to be decided. Use from one thread at a time.
    """

    def __init__(self, detector: VoiceActivityDetector) -> None:
        self._probabilities = _ProbabilityStream(detector._network)
        self._builder = SegmentBuilder(detector.options)
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

    The shipped model is loaded (and self-checked) once per process on first construction. A detector
    holds only read-only weights: it may be shared across threads, as long as each
    ``StreamingSegmenter`` is used from one thread at a time.
    """

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        self.options = options
        self._network = _load_network()

    def stream(self) -> StreamingSegmenter:
        """A segmenter for one signal that will be fed in consecutive chunks."""
        return StreamingSegmenter(self)

    def speech_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """One speech probability per 512-sample window; the last partial window is zero-padded."""
        stream = _ProbabilityStream(self._network)
        head = stream.push(_as_mono_float32(samples))
        return np.concatenate([head, stream.finish()])

    def segments(self, samples: np.ndarray) -> list[SpeechSpan]:
        """Final segments of a whole signal: merged, padded, capped, sorted and non-overlapping."""
        segmenter = self.stream()
        return segmenter.feed(samples) + segmenter.flush()
