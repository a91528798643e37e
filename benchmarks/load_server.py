"""Load test for a running ``sensevoice serve``: N concurrent clients sending real recordings.

    python benchmarks/load_server.py --url http://127.0.0.1:8000 --clients 1,8,32 --requests 64

Each client sends files from ``../shared/audio`` (or ``--files``) back to back to the native endpoint
(``--endpoint openai`` for the OpenAI one). Per client count it prints throughput (audio seconds transcribed
per wall-clock second), latency percentiles and error counts by status. ``--clients 1`` is the baseline of
the same files sent one at a time.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sensevoice_serve.bench.drive import percentile

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
ENDPOINTS = {"native": ("/v1/transcribe", "files"), "openai": ("/v1/audio/transcriptions", "file")}


@dataclass
class Run:
    clients: int
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


def audio_duration(path: Path) -> float:
    from sensevoice_serve.audio import decode_audio

    return decode_audio(path).duration


def run(url: str, endpoint: str, files: list[tuple[str, bytes, float]], clients: int, requests: int) -> Run:
    path, field_name = ENDPOINTS[endpoint]
    result = Run(clients)
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                name, data, seconds = files[index % len(files)]
                started = time.perf_counter()
                response = session.post(path, files={field_name: (name, data)})
                elapsed = time.perf_counter() - started
                with lock:
                    result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        result.latencies.append(elapsed)
                        result.audio_seconds += seconds

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    result.wall_seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=64, help="requests per client count")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="native")
    parser.add_argument("--files", nargs="*", type=Path, help=f"audio files (default: all of {SHARED_AUDIO})")
    args = parser.parse_args()

    paths = args.files or sorted(p for p in SHARED_AUDIO.iterdir() if p.suffix in {".wav", ".mp3", ".flac"})
    files = [(p.name, p.read_bytes(), audio_duration(p)) for p in paths]
    # One request first, so first-call costs (kernel selection, allocations) are not measured.
    httpx.post(
        args.url + ENDPOINTS[args.endpoint][0], files={ENDPOINTS[args.endpoint][1]: files[0][:2]}, timeout=600
    )

    print(f"{len(files)} files, {sum(f[2] for f in files):.1f} s of audio; {args.requests} requests per row")
    print(f"{'clients':>7} {'audio s/s':>10} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7}  statuses")
    for clients in (int(c) for c in args.clients.split(",")):
        result = run(args.url, args.endpoint, files, clients, args.requests)
        latencies = result.latencies or [float("nan")]
        print(
            f"{clients:>7} {result.audio_seconds / result.wall_seconds:>10.1f}"
            f" {statistics.median(latencies):>7.2f} {percentile(latencies, 0.9):>7.2f}"
            f" {percentile(latencies, 0.99):>7.2f}  {dict(result.statuses)}"
        )


if __name__ == "__main__":
    main()
