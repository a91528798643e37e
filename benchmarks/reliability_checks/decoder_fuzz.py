"""The decoder under Hypothesis: damaged files through ``decode_audio`` and ``AudioStream``, isolated.

Each input is decoded in a long-lived child process, so that a crash of native code (FFmpeg, libsndfile)
or a hang is caught and counted instead of ending the run: a child that dies is a crash, one that does not
answer within the bound is a hang (it is killed); either way a fresh child takes over. What may come out of
the decoder is what the unit test allows (``tests/test_audio_fuzz.py``, whose checks run here): model-ready
audio, ``AudioDecodeError`` or ``AudioTooLongError``; anything else is a crash, with its traceback.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from sensevoice_serve.bench.drive import percentile

from .mutations import FuzzCase, campaign, fuzz_cases
from .processes import rss_mb

PROGRESS_EVERY = 500


def _decode_requests(connection: Connection) -> None:
    """The child: decode each input it is sent and answer ("decoded" | "rejected" | "crash", detail)."""
    from tests.test_audio_fuzz import _decodes_or_fails_alone, _streams_or_fails_alone

    connection.send(("ready", ""))  # imports done: what follows is timed as decoding
    while True:
        data = connection.recv_bytes()
        try:
            outcome = "decoded" if _decodes_or_fails_alone(data) else "rejected"
            _streams_or_fails_alone(data)
            connection.send((outcome, ""))
        except BaseException:  # noqa: BLE001 - exactly what the fuzzer looks for
            connection.send(("crash", traceback.format_exc()))


class IsolatedDecoder:
    """A child process that decodes, replaced whenever it dies or overruns."""

    def __init__(self) -> None:
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self.process = context.Process(target=_decode_requests, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()
        if self._connection.recv()[0] != "ready":
            raise RuntimeError("the decoding process did not start")

    def _replace(self) -> None:
        self.process.kill()
        self.process.join()
        self._connection.close()
        self.restarts += 1
        self._start()

    def decode(self, data: bytes, bound_seconds: float) -> tuple[str, str, float]:
        """(outcome, detail, seconds): outcome is decoded, rejected, crash, died or hang."""
        started = time.monotonic()
        try:
            self._connection.send_bytes(data)
            if not self._connection.poll(bound_seconds):
                self._replace()
                return "hang", f"no answer within {bound_seconds:g} s", time.monotonic() - started
            outcome, detail = self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join()
            code = self.process.exitcode
            self._replace()
            return "died", f"the decoding process ended with exit code {code}", time.monotonic() - started
        return outcome, detail, time.monotonic() - started

    def close(self) -> None:
        self.process.kill()
        self.process.join()


@dataclass
class Tally:
    """Every outcome, the slowest answers, and each failure's recipe and bytes (saved under ``crash_dir``)."""

    crash_dir: Path
    outcomes: Counter = field(default_factory=Counter)
    by_seed: Counter = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def add(self, case: FuzzCase, data: bytes, outcome: str, detail: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.by_seed[case.seed] += 1
        self.seconds.append(seconds)
        if outcome in ("decoded", "rejected"):
            return
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        saved = self.crash_dir / f"decoder-{outcome}-{len(self.failures):03d}.bin"
        saved.write_bytes(data)
        saved.with_suffix(".txt").write_text(f"{case!r}\n\n{detail}\n", encoding="utf-8")
        self.failures.append({"outcome": outcome, "recipe": repr(case), "file": str(saved), "detail": detail})

    def summary(self) -> dict:
        return {
            "inputs": len(self.seconds),
            "outcomes": dict(self.outcomes),
            "inputs_per_seed": dict(self.by_seed),
            "crashes": sum(self.outcomes[kind] for kind in ("crash", "died")),
            "hangs": self.outcomes["hang"],
            "p99_seconds": percentile(self.seconds, 0.99) if self.seconds else None,
            "max_seconds": max(self.seconds, default=None),
            "failures": self.failures,
        }


def fuzz_decoder(
    corpus: dict[str, bytes], count: int, seed: int, bound_seconds: float, crash_dir: Path
) -> dict:
    """``count`` Hypothesis inputs (reproducible from ``seed``) through an isolated decoder."""
    decoder = IsolatedDecoder()
    tally = Tally(crash_dir)
    started = time.monotonic()
    rss_start: float | None = None

    @campaign(fuzz_cases(corpus), count, seed)
    def fuzz(case: FuzzCase) -> None:
        nonlocal rss_start
        data = case.build(corpus)
        tally.add(case, data, *decoder.decode(data, bound_seconds))
        done = len(tally.seconds)
        if done == PROGRESS_EVERY // 5:  # the first inputs have loaded every codec
            rss_start = rss_mb([decoder.process.pid])
        if done % PROGRESS_EVERY == 0:
            print(f"decoder fuzz: {done} inputs, {dict(tally.outcomes)}", file=sys.stderr, flush=True)

    try:
        fuzz()
        rss_end = rss_mb([decoder.process.pid])
    finally:
        decoder.close()
    summary = tally.summary()
    summary.update(
        seed=seed,
        bound_seconds=bound_seconds,
        wall_seconds=time.monotonic() - started,
        decoder_restarts=decoder.restarts,
        decoder_rss_mb={"after_warm_up": rss_start, "end": rss_end},
    )
    return summary
