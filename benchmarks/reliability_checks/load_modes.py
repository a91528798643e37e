"""Capacity, overload and soak against a live server.

* Capacity: closed loops of 1, 2, 4, ... clients, each for a while. Throughput stops growing once the
  server is saturated and latency then only grows; capacity is the throughput of the smallest client count
  reaching 90 % of the best one, and its p99 is the latency the server holds at capacity.
* Overload: arrivals at ``factor`` x capacity for ``seconds``. At most ``max_queue`` requests are admitted,
  and the scheduler runs what waits in rounds (length-sorted within a round), so an admitted request waits
  at most for the round in progress and its own: the p99 bound is 2 x max_queue / the throughput of 200s
  during the overload + the p99 at capacity. A server that queued without bound would pass it more and
  more as the run goes on.
* Soak: ``total`` requests of mixed lengths from a few clients; memory after warm-up must stay flat.
"""

from __future__ import annotations

import asyncio
import sys
import time

from .load import Body, closed_loop, open_loop, summarize
from .server import Server

SATURATED_SHARE = 0.9
SETTLE_SECONDS = 5


def warm_up(server: Server, bodies: list[Body]) -> None:
    """Every body once: first-call costs (codecs, shapes) out of the way."""
    asyncio.run(closed_loop(server.url, bodies, 2, total=len(bodies) * 2))


def measure_capacity(server: Server, bodies: list[Body], levels: list[int], level_seconds: float) -> dict:
    rows = []
    for clients in levels:
        started = time.monotonic()
        outcomes = asyncio.run(closed_loop(server.url, bodies, clients, seconds=level_seconds, seed=clients))
        rows.append({"clients": clients, **summarize(outcomes, time.monotonic() - started)})
        print(f"capacity: {clients} clients {rows[-1]['ok_per_second']:.1f}/s", file=sys.stderr, flush=True)
    best = max(row["ok_per_second"] for row in rows)
    knee = next(row for row in rows if row["ok_per_second"] >= SATURATED_SHARE * best)
    return {
        "levels": rows,
        "capacity_per_second": knee["ok_per_second"],
        "capacity_clients": knee["clients"],
        "p99_at_capacity_seconds": knee["p99_seconds"],
    }


def run_overload(
    server: Server, bodies: list[Body], capacity: dict, factor: float, seconds: float, max_queue: int
) -> dict:
    rate = factor * capacity["capacity_per_second"]
    rss_before = server.rss_mb()
    started = time.monotonic()
    outcomes = asyncio.run(open_loop(server.url, bodies, rate, seconds))
    figures = summarize(outcomes, time.monotonic() - started)
    rss_end = server.rss_mb()
    time.sleep(SETTLE_SECONDS)
    # With the throughput the server kept while overloaded (the capacity search is noisy on a shared
    # machine): the scheduler runs in rounds of what is waiting (at most max_queue requests), so a request
    # admitted just after a round started waits for that round and then for its own.
    bound = 2 * max_queue / figures["ok_per_second"] + capacity["p99_at_capacity_seconds"]
    return {
        **capacity,
        "factor": factor,
        "offered_per_second": rate,
        "seconds": seconds,
        "max_queue": max_queue,
        "p99_bound_seconds": bound,
        **figures,
        "rss_mb": {"before": rss_before, "end": rss_end, "settled": server.rss_mb()},
        "ready_after": server.ready(timeout=30),
    }


def run_soak(server: Server, bodies: list[Body], total: int, clients: int, sample_every: int) -> dict:
    samples: list[tuple[int, float, float]] = []  # (requests, serving process MB, decode workers MB)
    warm_up_count = total // 10

    def on_answer(count: int) -> None:
        if count % sample_every == 0 or count == warm_up_count:
            samples.append((count, *server.rss_parts_mb()))
        if count % (sample_every * 4) == 0:
            print(f"soak: {count} requests, RSS {sum(samples[-1][1:]):.0f} MB", file=sys.stderr, flush=True)

    started = time.monotonic()
    outcomes = asyncio.run(closed_loop(server.url, bodies, clients, total=total, on_answer=on_answer))
    figures = summarize(outcomes, time.monotonic() - started)
    totals = [(count, serving + workers) for count, serving, workers in samples]
    warm = next(mb for count, mb in totals if count >= warm_up_count)
    return {
        **figures,
        "clients": clients,
        "wall_seconds": time.monotonic() - started,
        "audio_seconds_per_request": sum(body.seconds for body in bodies) / len(bodies),
        "rss_mb": {
            "after_warm_up": warm,
            "end": server.rss_mb(),
            "peak": max(mb for _, mb in totals),
        },
        "warm_up_requests": warm_up_count,
        "rss_samples": samples,
        "ready_after": server.ready(timeout=30),
    }
