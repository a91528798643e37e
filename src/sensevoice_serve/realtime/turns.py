"""Server VAD for realtime sessions: Silero's speech probabilities as audio arrives, and where turns start
and end, with OpenAI's ``server_vad`` settings (threshold, prefix padding, silence duration).

``silero.SpeechProbabilities`` computes 16 s blocks for throughput on files; a live stream needs each
512-sample window (32 ms) as soon as it is complete, so ``WindowProbabilities`` runs whatever windows an
append completes. ``SpeechWorker`` runs every session's VAD in one thread: off the event loop, and never
on more than one core, which the inference worker needs more.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..silero import CONTEXT_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, SileroModel, load_model
from ..vad import RELEASE_MARGIN, VadOptions
from .protocol import ServerVad

# Speech must last this long before a turn starts, so a click or a breath does not open one.
MIN_SPEECH_SECONDS = VadOptions().min_speech_seconds

Result = TypeVar("Result")


class WindowProbabilities:
    """One stream's speech probability per complete window, as its samples arrive. Use from one thread."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state = model.initial_state()
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._waiting = np.zeros(0, dtype=np.float32)  # less than a window

    def push(self, samples: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._waiting, samples])
        complete = len(joined) // WINDOW_SAMPLES * WINDOW_SAMPLES
        self._waiting = joined[complete:].copy()
        if not complete:
            return np.zeros(0, dtype=np.float32)
        with_context = np.concatenate([self._context, joined[:complete]])
        self._context = with_context[-CONTEXT_SAMPLES:].copy()
        probabilities, self._state = self._model.run(with_context, self._state)
        return probabilities


class SpeechWorker:
    """One thread for every session's VAD; the Silero model loads there on first use."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="realtime-vad")

    async def run(self, function: Callable[..., Result], *args: object) -> Result:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def open(self) -> WindowProbabilities:
        return WindowProbabilities(await self.run(load_model))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # sample index in the session's audio, prefix padding included


@dataclass(frozen=True)
class SpeechStopped:
    end: int  # the silence that ended the turn included; or where an over-long turn was cut


TurnEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """Per-window probabilities -> turn starts and ends, in sample indices of the session's audio.

    A turn starts once windows at or above ``threshold`` have lasted MIN_SPEECH_SECONDS (a dip below
    ``threshold - 0.15`` resets the count), ``prefix_padding_ms`` before its first speech window. It ends
    after ``silence_duration_ms`` of windows below ``threshold - 0.15``, that silence included, as OpenAI's
    ``audio_end_ms`` does. A turn that reaches ``max_samples`` is cut at its quietest window in its second
    half and goes on as a new turn, so no utterance outgrows what a partial re-decodes. Turns never
    overlap. Window 0 starts at sample ``origin``.
    """

    def __init__(self, settings: ServerVad, max_samples: int, origin: int = 0) -> None:
        self._threshold = settings.threshold
        self._release = max(settings.threshold - RELEASE_MARGIN, 0.01)
        self._prefix = settings.prefix_padding_ms * SAMPLE_RATE // 1000
        self._silence_windows = math.ceil(settings.silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW_SAMPLES)
        self._min_speech_windows = math.ceil(MIN_SPEECH_SECONDS * SAMPLE_RATE / WINDOW_SAMPLES)
        self._max_samples = max_samples
        self._origin = origin
        self._next = 0  # the next window's index
        self._floor = origin  # no turn starts before this sample (the end of the last one)
        self._candidate: int | None = None  # idle: first window of a speech run
        self._speech_windows = 0
        self._turn_start: int | None = None  # in a turn: its first sample
        self._first_window = 0  # in a turn: the window of _probabilities[0]
        self._probabilities: list[float] = []
        self._silence_from: int | None = None  # in a turn: start of the current run of silence

    @property
    def in_turn(self) -> bool:
        return self._turn_start is not None

    @property
    def keep_from(self) -> int:
        """No event from now on refers to audio before this sample: earlier audio may be released."""
        if self._turn_start is not None:
            return self._turn_start
        window = self._next if self._candidate is None else self._candidate
        return max(self._sample(window) - self._prefix, self._floor)

    def push(self, probabilities: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for probability in probabilities.tolist():
            if self._turn_start is None:
                self._idle_step(probability, events)
            else:
                self._turn_step(probability, events)
            self._next += 1
        return events

    def end_turn(self, at: int) -> None:
        """The client committed (or cleared) the open turn at sample ``at``: idle from there on."""
        self._turn_start, self._candidate, self._speech_windows = None, None, 0
        self._floor = max(self._floor, at)

    def _sample(self, window: int) -> int:
        return self._origin + window * WINDOW_SAMPLES

    def _idle_step(self, probability: float, events: list[TurnEvent]) -> None:
        if probability >= self._threshold:
            if self._candidate is None:
                self._candidate, self._speech_windows = self._next, 0
            self._speech_windows += 1
            if self._speech_windows >= self._min_speech_windows:
                start = max(self._sample(self._candidate) - self._prefix, self._floor)
                self._begin(start, self._next + 1, [], events)
        elif probability < self._release:
            self._candidate = None

    def _begin(
        self, start: int, first_window: int, probabilities: list[float], events: list[TurnEvent]
    ) -> None:
        """A turn from sample ``start``; ``probabilities`` are its windows' from ``first_window`` on."""
        self._turn_start, self._candidate = start, None
        self._first_window, self._probabilities = first_window, probabilities
        self._silence_from = None
        events.append(SpeechStarted(start))

    def _turn_step(self, probability: float, events: list[TurnEvent]) -> None:
        window = self._next
        self._probabilities.append(probability)
        if probability >= self._threshold:
            self._silence_from = None
        elif probability < self._release and self._silence_from is None:
            self._silence_from = window
        if self._silence_from is not None and window + 1 - self._silence_from >= self._silence_windows:
            end = self._sample(window + 1)
            events.append(SpeechStopped(end))
            self.end_turn(end)
        elif self._sample(window + 1) - self._turn_start >= self._max_samples:
            self._cut(events)

    def _cut(self, events: list[TurnEvent]) -> None:
        """End the turn at its quietest window in its second half (latest of equals); a new turn goes on."""
        assert self._turn_start is not None
        half = self._turn_start + self._max_samples // 2
        earliest = math.ceil((half - self._origin) / WINDOW_SAMPLES) - self._first_window
        earliest = min(max(earliest, 0), len(self._probabilities) - 1)
        candidates = np.asarray(self._probabilities[earliest:])
        quietest = earliest + len(candidates) - 1 - int(np.argmin(candidates[::-1]))
        window = self._first_window + quietest
        cut = self._sample(window) + WINDOW_SAMPLES // 2
        silence_from = self._silence_from
        events.append(SpeechStopped(cut))
        self._floor = cut
        self._begin(cut, window, self._probabilities[quietest:], events)
        if silence_from is not None and silence_from >= window:
            self._silence_from = silence_from
