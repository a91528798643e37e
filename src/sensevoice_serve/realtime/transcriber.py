"""Sessions' decodes as ordinary scheduler requests, so every stream shares batches with every other stream
and with file requests: partials at low priority, finals (segmented as an uploaded file is) at high."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import numpy as np

from ..audio import SAMPLE_RATE
from ..batching import Utterance
from ..decoding import DecodeOptions
from ..longform import SegmentationOptions, assemble, default_detector, stream_utterances
from ..results import Segment, Transcription
from ..scheduler import Priority, RequestResult, Scheduler

SOURCE = "realtime"


class SchedulerTranscriber:
    def __init__(
        self,
        scheduler: Scheduler,
        segmentation: SegmentationOptions,
        prepare: Callable[[DecodeOptions], Awaitable[list[str]]],
    ) -> None:
        self.scheduler = scheduler
        self.segmentation = segmentation
        self.prepare = prepare  # Service.prepare: compiles hotwords off the inference worker

    async def partial(self, samples: np.ndarray, options: DecodeOptions) -> Segment:
        future = self.scheduler.submit([Utterance(samples, options)], Priority.LOW)
        return (await _result(future)).segments[0]

    async def final(self, samples: np.ndarray, options: DecodeOptions, offset: float) -> Transcription:
        # In a thread: audio over the segment cap goes through the VAD, as an upload's does.
        utterances = await asyncio.to_thread(self._utterances, samples, options, offset)
        result = await _result(self.scheduler.submit(utterances))
        return assemble(SOURCE, len(samples) / SAMPLE_RATE, [], result.segments)

    def _utterances(self, samples: np.ndarray, options: DecodeOptions, offset: float) -> list[Utterance]:
        _, pieces = stream_utterances(
            samples, options, self.segmentation, default_detector(self.segmentation)
        )
        return [Utterance(p.utterance.samples, options, offset + p.utterance.offset) for p in pieces]


async def _result(future: Future[RequestResult]) -> RequestResult:
    """The request's result; a caller that goes away (cancelled) withdraws the request from the queue."""
    try:
        return await asyncio.wrap_future(future)
    finally:
        future.cancel()
