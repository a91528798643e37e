"""The decode deadline against a decompression bomb: a small upload that keeps a decoder busy for long.

The bomb is FLAC of digital silence: 7,000 s at 48 kHz (just under the default 2-hour limit) in about 1 MB,
which a decode worker must decode, resample and run the VAD over. With ``decode_timeout_seconds`` set below
that work, the worker must be killed at the deadline, that request answered with a clear error (422), and
the pool whole again: as many decode workers as before (new ones) and the next upload transcribed.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import soundfile

from .material import Clip
from .server import Server, running_server

BOMB_SECONDS = 7000
BOMB_RATE = 48000
# What the answer may take beyond the deadline: the request's own upload and the pool's check interval.
ANSWER_SLACK_SECONDS = 5.0
WORKERS_BACK_SECONDS = 120


def silence_flac(seconds: float = BOMB_SECONDS, rate: int = BOMB_RATE) -> bytes:
    buffer = io.BytesIO()
    block = np.zeros(1 << 20, dtype=np.float32)
    with soundfile.SoundFile(buffer, "w", rate, 1, format="FLAC", subtype="PCM_16") as sound:
        for _ in range(round(seconds * rate) // len(block)):
            sound.write(block)
    return buffer.getvalue()


def _post(server: Server, name: str, data: bytes) -> tuple[int, str, float]:
    started = time.monotonic()
    response = httpx.post(
        server.url + "/v1/audio/transcriptions",
        files={"file": (name, data)},
        timeout=WORKERS_BACK_SECONDS * 5,
    )
    return response.status_code, response.text[:300], time.monotonic() - started


def _workers_back(server: Server, before: list[int]) -> float | None:
    """Seconds until there are as many decode workers as before, none of the killed ones among them."""
    started = time.monotonic()
    while time.monotonic() - started < WORKERS_BACK_SECONDS:
        now = server.decode_worker_pids()
        if len(now) == len(before) and server.ready(timeout=1):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def run_deadline(model_dir, work_dir, clip: Clip, deadline_seconds: float) -> dict:
    bomb = silence_flac()
    with running_server(model_dir, work_dir, decode_timeout_seconds=deadline_seconds) as server:
        before = server.decode_worker_pids()
        status, message, seconds = _post(server, "bomb.flac", bomb)
        after_bomb = server.decode_worker_pids()
        back = _workers_back(server, before)
        next_status, _, next_seconds = _post(server, clip.name, clip.data)
        return {
            "deadline_seconds": deadline_seconds,
            "bomb_bytes": len(bomb),
            "bomb_audio_seconds": BOMB_SECONDS,
            "bomb_status": status,
            "bomb_message": message,
            "bomb_answer_seconds": seconds,
            "decode_workers_before": before,
            "decode_workers_after": server.decode_worker_pids(),
            "worker_replaced": sorted(after_bomb) != sorted(before),
            "workers_back_seconds": back,
            "next_status": next_status,
            "next_answer_seconds": next_seconds,
        }
