"""HTTP load from asyncio clients: closed loops (N clients back to back) and open loops (arrivals at a rate,
whatever the server answers). Request bodies are encoded once, so the clients spend little CPU on them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

from sensevoice_serve.bench.drive import percentile

from .api_requests import ENDPOINTS
from .material import Clip


@dataclass(frozen=True)
class Body:
    """One request ready to send: path, headers and multipart body."""

    label: str
    seconds: float  # of audio
    path: str
    headers: dict[str, str]
    content: bytes


@dataclass
class Outcome:
    label: str  # which body
    status: int | None  # None: no answer (refused, dropped, timed out)
    seconds: float
    sent_at: float  # time.monotonic() when sent
    retry_after_seconds: float | None = None
    error: str = ""


def request_bodies(clips: list[Clip]) -> list[Body]:
    """Every clip to both endpoints."""
    bodies = []
    for clip in clips:
        for endpoint, (path, field) in sorted(ENDPOINTS.items()):
            request = httpx.Request("POST", "http://server" + path, files={field: (clip.name, clip.data)})
            headers = {"Content-Type": request.headers["Content-Type"]}
            bodies.append(Body(f"{endpoint} {clip.name}", clip.seconds, path, headers, request.read()))
    return bodies


async def send(client: httpx.AsyncClient, url: str, body: Body) -> Outcome:
    sent_at = time.monotonic()
    try:
        response = await client.post(url + body.path, headers=body.headers, content=body.content)
    except httpx.HTTPError as error:
        return Outcome(body.label, None, time.monotonic() - sent_at, sent_at, error=repr(error))
    return Outcome(
        body.label,
        response.status_code,
        time.monotonic() - sent_at,
        sent_at,
        retry_after_seconds=_seconds(response.headers.get("retry-after")),
        error="" if response.status_code == 200 else response.text[:300],
    )


def _seconds(header: str | None) -> float | None:
    """Retry-After in seconds (None when absent or not a number of seconds)."""
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def _client(connections: int, timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


async def closed_loop(
    url: str,
    bodies: list[Body],
    clients: int,
    *,
    seconds: float | None = None,
    total: int | None = None,
    timeout: float = 120,
    seed: int = 0,
    on_answer: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    retry_after: bool = False,
) -> list[Outcome]:
    """``clients`` clients sending back to back until ``seconds`` pass, ``total`` requests are sent or
    ``stop`` is set. ``on_answer(count)`` is called after each answer with the number answered so far.
    With ``retry_after``, a client answered 503 waits as its Retry-After says, as well-behaved ones do."""
    rng = np.random.default_rng(seed)
    order = rng.integers(len(bodies), size=total or 1_000_000)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds if seconds is not None else float("inf")
    stop = stop or threading.Event()
    issued = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while time.monotonic() < deadline and issued < len(order) and not stop.is_set():
            body = bodies[order[issued]]
            issued += 1
            outcome = await send(client, url, body)
            outcomes.append(outcome)
            if retry_after and outcome.status == 503:
                await asyncio.sleep(outcome.retry_after_seconds or 1.0)
            if on_answer is not None:
                on_answer(len(outcomes))

    async with _client(clients, timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return outcomes


async def open_loop(
    url: str, bodies: list[Body], rate: float, seconds: float, *, timeout: float = 120, seed: int = 0
) -> list[Outcome]:
    """Requests arriving at ``rate`` per second (Poisson, seeded) for ``seconds``, each on its own
    connection when none is free; all are awaited."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 2) + 10))
    arrivals = arrivals[arrivals < seconds]
    started = time.monotonic()
    async with _client(len(arrivals), timeout) as client:
        tasks = []
        for index, arrival in enumerate(arrivals):
            await asyncio.sleep(max(0.0, started + arrival - time.monotonic()))
            body = bodies[index % len(bodies)]
            tasks.append(asyncio.create_task(send(client, url, body)))
        return list(await asyncio.gather(*tasks))


def _p99_by_label(outcomes: list[Outcome]) -> dict[str, float]:
    """The p99 of 200s per kind of request: whether the slow tail is one kind (long clips, one endpoint)."""
    by_label: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.status == 200:
            by_label.setdefault(outcome.label, []).append(outcome.seconds)
    return {label: percentile(seconds, 0.99) for label, seconds in sorted(by_label.items())}


def summarize(outcomes: list[Outcome], wall_seconds: float) -> dict:
    """Status counts, throughput of 200s, and the latency of 200s."""
    admitted = [outcome.seconds for outcome in outcomes if outcome.status == 200]
    statuses = Counter("no answer" if outcome.status is None else str(outcome.status) for outcome in outcomes)
    refusals = [outcome for outcome in outcomes if outcome.status == 503]
    refused = [outcome.seconds for outcome in refusals]
    return {
        "requests": len(outcomes),
        "statuses": dict(statuses),
        "503_without_retry_after": sum(outcome.retry_after_seconds is None for outcome in refusals),
        "ok_per_second": len(admitted) / wall_seconds if wall_seconds else None,
        "p50_seconds": percentile(admitted, 0.5) if admitted else None,
        "p99_seconds": percentile(admitted, 0.99) if admitted else None,
        "max_seconds": max(admitted, default=None),
        "p99_seconds_by_request": _p99_by_label(outcomes),
        # A 503 is decided once the upload is in: its latency is what receiving an upload costs meanwhile.
        "refused_p50_seconds": percentile(refused, 0.5) if refused else None,
        "refused_p99_seconds": percentile(refused, 0.99) if refused else None,
        "errors": sorted({outcome.error for outcome in outcomes if outcome.status not in (200, 503)})[:5],
    }
