"""Concurrent clients share one model: their requests run in common batches, and each gets its own result."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .conftest import LiveServer, wav

CLIENTS = 32


def test_concurrent_requests_are_batched_without_cross_talk(
    server: LiveServer, speech: np.ndarray, tiny_engine
) -> None:
    # Different lengths, two of them long enough to be split by the VAD into several segments.
    seconds = [*np.random.default_rng(3).uniform(0.5, 20.0, size=CLIENTS - 2), 40.0, 45.0]
    clips = [wav(speech[: int(16000 * s)]) for s in seconds]
    alone = [tiny_engine.transcribe(clip)[0] for clip in clips]  # each file by itself, no batching
    batches_before = server.metric("sensevoice_batch_size_count")
    singles_before = server.metric("sensevoice_batch_size_bucket", le="1.0")

    def request(clip: bytes) -> dict:
        response = server.transcribe_native(("clip.wav", clip))
        assert response.status_code == 200, response.text
        return response.json()["results"][0]

    with ThreadPoolExecutor(CLIENTS) as pool:
        received = list(pool.map(request, clips))

    for got, expected in zip(received, alone, strict=True):
        assert [t["id"] for s in got["segments"] for t in s["tokens"]] == [t.id for t in expected.tokens]
        assert got["text"] == expected.text and got["duration"] == expected.duration
    assert len(received[-1]["segments"]) > 1, "the 45 s clip should have been split by the VAD"
    batches = server.metric("sensevoice_batch_size_count") - batches_before
    singles = server.metric("sensevoice_batch_size_bucket", le="1.0") - singles_before
    assert batches > singles, "no forward ran more than one utterance"
