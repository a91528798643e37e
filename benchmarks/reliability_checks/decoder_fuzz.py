"""The decoder under Hypothesis: damaged files through ``decode_audio`` and ``AudioStream``, isolated.

Each input is decoded in a long-lived child process, so that a crash of native code (FFmpeg, libsndfile)
or a hang is caught and counted instead of ending the run: a child that dies is a crash, one that does not
answer within the time bound is a hang (it is killed), one whose peak memory passes the memory bound a
memory hog; either way a fresh child takes over. What may come out of
the decoder is what the unit test allows (``tests/test_audio_fuzz.py``, whose checks run here): model-ready
audio, ``AudioDecodeError`` or ``AudioTooLongError``; anything else is a crash, with its traceback.
"""

from __future__ import annotations

import multiprocessing
import resource
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
SLOWEST_KEPT = 5


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _decode_requests(connection: Connection) -> None:
    """The child: decode each input it is sent and answer ("decoded" | "rejected" | "crash", detail, its
    peak RSS in MB so far)."""
    from tests.test_audio_fuzz import _decodes_or_fails_alone, _streams_or_fails_alone

    connection.send(("ready", "", _peak_rss_mb()))  # imports done: what follows is timed as decoding
    while True:
        data = connection.recv_bytes()
        try:
            outcome = "decoded" if _decodes_or_fails_alone(data) else "rejected"
            _streams_or_fails_alone(data)
            connection.send((outcome, "", _peak_rss_mb()))
        except BaseException:  # noqa: BLE001 - exactly what the fuzzer looks for
            connection.send(("crash", traceback.format_exc(), _peak_rss_mb()))


class IsolatedDecoder:
    """A child process that decodes, replaced whenever it dies, overruns ``bound_seconds`` on one input or
    its peak memory passes ``memory_bound_mb`` (which a legitimate input of at most LIMIT_SECONDS, 30 s,
    never approaches: the child idles at about 300 MB)."""

    def __init__(self, bound_seconds: float, memory_bound_mb: float) -> None:
        self.bound_seconds, self.memory_bound_mb = bound_seconds, memory_bound_mb
        self.restarts = 0
        self.peak_rss_mb = 0.0
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

    def decode(self, data: bytes) -> tuple[str, str, float]:
        """(outcome, detail, seconds): outcome is decoded, rejected, crash, died, hang or memory."""
        started = time.monotonic()
        try:
            self._connection.send_bytes(data)
            if not self._connection.poll(self.bound_seconds):
                self._replace()
                return "hang", f"no answer within {self.bound_seconds:g} s", time.monotonic() - started
            outcome, detail, peak_mb = self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join()
            code = self.process.exitcode
            self._replace()
            return "died", f"the decoding process ended with exit code {code}", time.monotonic() - started
        seconds = time.monotonic() - started
        self.peak_rss_mb = max(self.peak_rss_mb, peak_mb)
        if peak_mb > self.memory_bound_mb:
            self._replace()  # a fresh child: the next input's peak is its own
            return (
                "memory",
                f"peak RSS {peak_mb:.0f} MB, over {self.memory_bound_mb:g} MB ({outcome})",
                seconds,
            )
        return outcome, detail, seconds

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
    slowest: list[tuple[float, str]] = field(default_factory=list)  # (seconds, recipe), the slowest first

    def add(self, case: FuzzCase, data: bytes, outcome: str, detail: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.by_seed[case.seed] += 1
        self.seconds.append(seconds)
        self.slowest = sorted([*self.slowest, (seconds, repr(case))], reverse=True)[:SLOWEST_KEPT]
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
            "memory_hogs": self.outcomes["memory"],
            "p99_seconds": percentile(self.seconds, 0.99) if self.seconds else None,
            "max_seconds": max(self.seconds, default=None),
            "failures": self.failures,
            "slowest": self.slowest,
        }


def fuzz_decoder(
    corpus: dict[str, bytes], count: int, seed: int, bounds: tuple[float, float], crash_dir: Path
) -> dict:
    """``count`` Hypothesis inputs (reproducible from ``seed``) through an isolated decoder; ``bounds``:
    (seconds, peak MB) per input."""
    decoder = IsolatedDecoder(*bounds)
    tally = Tally(crash_dir)
    started = time.monotonic()
    rss_start: float | None = None

    @campaign(fuzz_cases(corpus), count, seed)
    def fuzz(case: FuzzCase) -> None:
        nonlocal rss_start
        data = case.build(corpus)
        tally.add(case, data, *decoder.decode(data))
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
        bound_seconds=decoder.bound_seconds,
        memory_bound_mb=decoder.memory_bound_mb,
        wall_seconds=time.monotonic() - started,
        decoder_restarts=decoder.restarts,
        decoder_rss_mb={"after_warm_up": rss_start, "end": rss_end, "peak": decoder.peak_rss_mb},
    )
    return summary
