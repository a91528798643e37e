"""The live server under Hypothesis: fuzzed requests to both transcription endpoints, a few at a time.

Accepted answers are 200, any 4xx, and 503 with Retry-After. Anything else counts: another status (a 500),
a dropped connection, no answer within the bound (a hang). Each connection serves one request, so a
dropped one is the server's doing, never a stale keep-alive. Afterwards the same serving process and decode
workers must still be there (a replaced one means it died), /ready 200, and the memory where it was.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sensevoice_serve.bench.drive import percentile

from .api_requests import FuzzRequest, fuzz_requests
from .mutations import campaign
from .processes import MemoryWatch
from .server import Server

PROGRESS_EVERY = 250
SLOWEST_KEPT = 5


@dataclass
class Answer:
    outcome: str  # accepted, bad-status, dropped, hang
    status: int | None
    code: str | None
    seconds: float
    detail: str = ""


def _chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def send(client: httpx.Client, server: Server, request: FuzzRequest, corpus: dict[str, bytes]) -> Answer:
    path, headers, body, chunked = request.encoded(corpus)
    started = time.monotonic()
    try:
        response = client.post(server.url + path, headers=headers, content=_chunks(body) if chunked else body)
    except httpx.TimeoutException as error:
        return Answer("hang", None, None, time.monotonic() - started, repr(error))
    except httpx.TransportError as error:
        return Answer("dropped", None, None, time.monotonic() - started, repr(error))
    seconds = time.monotonic() - started
    status = response.status_code
    try:
        code = response.json().get("error", {}).get("code")
    except (ValueError, AttributeError):
        code = None
    accepted = status == 200 or 400 <= status < 500 or (status == 503 and "retry-after" in response.headers)
    return Answer("accepted" if accepted else "bad-status", status, code, seconds, response.text[:2000])


@dataclass
class HttpTally:
    crash_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)  # (endpoint, status, error code)
    seconds: list[float] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    slowest: list[tuple[float, str]] = field(default_factory=list)  # (seconds, recipe), the slowest first
    examples: dict[str, str] = field(default_factory=dict)  # a message per kind of answer

    def add(self, request: FuzzRequest, answer: Answer, corpus: dict[str, bytes]) -> int:
        with self.lock:
            self.outcomes[answer.outcome] += 1
            kind = f"{request.endpoint} {answer.status} {answer.code}"
            self.answers[kind] += 1
            self.examples.setdefault(kind, answer.detail[:300])
            self.seconds.append(answer.seconds)
            self.slowest = sorted([*self.slowest, (answer.seconds, repr(request))], reverse=True)[
                :SLOWEST_KEPT
            ]
            if answer.outcome != "accepted":
                self._save(request, answer, corpus)
            return len(self.seconds)

    def _save(self, request: FuzzRequest, answer: Answer, corpus: dict[str, bytes]) -> None:
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        stem = self.crash_dir / f"http-{answer.outcome}-{len(self.failures):03d}"
        described = {"recipe": repr(request), "answer": vars(answer)}
        stem.with_suffix(".json").write_text(json.dumps(described, indent=1))
        if answer.outcome != "harness-error":
            stem.with_suffix(".body").write_bytes(request.encoded(corpus)[2])
        self.failures.append({"outcome": answer.outcome, "status": answer.status, "file": str(stem)})


def _health(server: Server, pids_before: list[int]) -> dict:
    pids_after = server.serving_pids()
    log = server.log_path.read_text(errors="replace")
    return {
        "ready_after": server.ready(timeout=30),
        "serving_process_replaced": pids_before[:1] != pids_after[:1],
        "decode_workers_replaced": sorted(pids_before[1:]) != sorted(pids_after[1:]),
        "tracebacks_in_log": log.count("Traceback"),
    }


def fuzz_http(
    server: Server,
    corpus: dict[str, bytes],
    count: int,
    seed: int,
    bound_seconds: float,
    clients: int,
    crash_dir: Path,
) -> dict:
    """``count`` Hypothesis requests (reproducible from ``seed``), ``clients`` in flight at once."""
    tally = HttpTally(crash_dir)
    pids_before = server.serving_pids()
    memory = MemoryWatch(server.rss_mb)
    rss: dict = {"start": server.rss_mb(), "samples": []}  # samples: (requests, serving MB, workers MB)
    slots = threading.BoundedSemaphore(clients)
    client = httpx.Client(timeout=bound_seconds, limits=httpx.Limits(max_keepalive_connections=0))
    pool = ThreadPoolExecutor(clients)
    started = time.monotonic()

    def one(request: FuzzRequest) -> None:
        try:
            try:
                answer = send(client, server, request, corpus)
            except Exception as error:  # noqa: BLE001 - the harness's own fault: counted, never hidden
                answer = Answer("harness-error", None, None, 0.0, repr(error))
            done = tally.add(request, answer, corpus)
        finally:
            slots.release()
        if done == max(1, count // 10):
            rss["after_warm_up"] = server.rss_mb()
        if done % PROGRESS_EVERY == 0:
            rss["samples"].append((done, *server.rss_parts_mb()))
            print(f"http fuzz: {done} requests, {dict(tally.outcomes)}", file=sys.stderr, flush=True)

    @campaign(fuzz_requests(corpus), count, seed)
    def fuzz(request: FuzzRequest) -> None:
        slots.acquire()
        pool.submit(one, request)

    try:
        fuzz()
        pool.shutdown(wait=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        memory.stop()
    rss.update(end=server.rss_mb(), peak=memory.peak())
    return {
        "requests": len(tally.seconds),
        "seed": seed,
        "clients": clients,
        "bound_seconds": bound_seconds,
        "wall_seconds": time.monotonic() - started,
        "outcomes": dict(tally.outcomes),
        "answers": dict(tally.answers.most_common()),
        "p99_seconds": percentile(tally.seconds, 0.99) if tally.seconds else None,
        "max_seconds": max(tally.seconds, default=None),
        "rss_mb": rss,
        **_health(server, pids_before),
        "failures": tally.failures,
        "examples": tally.examples,
        "slowest": tally.slowest,
    }
