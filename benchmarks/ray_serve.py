"""Plain ``sensevoice serve`` against ``serve --ray`` with 1 and 2 replicas, on this machine: throughput under
concurrent clients, and the latency Ray adds per request.

    python benchmarks/ray_serve.py --model models/random-tiny --clients 8 --requests 48 --rounds 3
    python benchmarks/ray_serve.py --model models/random-full --clients 8 --requests 24 --rounds 2

Each server is started as users start it, measured, then stopped (SIGTERM) before the next starts; the rounds
interleave the servers, so a neighbour's load falls on all of them, and the summary is the median of the
rounds. Throughput: ``load_server.run`` (the files of ../shared/audio sent back to back to the native
endpoint by N clients). Latency: ``--latency-file`` (jfk.flac, 11 s) sent alone, one request at a time: the
p50 of the whole request, and of what is left of it besides the parts the server reports (decode, queue,
inference): HTTP, uploads and, with Ray, its proxy and the hop to the replica. That residual is what Ray's
overhead shows in, apart from compute that a busy machine slows down.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from load_server import SHARED_AUDIO, audio_duration, run

STARTUP_SECONDS = 300


def start(model: Path, port: int, replicas: int | None, extra: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "sensevoice_serve.cli", "serve", "--model", str(model)]
    command += ["--port", str(port), *extra]
    if replicas:
        command += ["--ray", "--replicas", str(replicas)]
    environment = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="svb-", dir="/tmp")}
    with log.open("wb") as output:
        return subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)


def wait_ready(url: str, server: subprocess.Popen) -> float:
    started = time.monotonic()
    while time.monotonic() - started < STARTUP_SECONDS:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError("the server did not become ready")


def latency(url: str, clip: Path, requests: int) -> tuple[float, float]:
    """p50 seconds of a lone request, and of its part outside the server's reported decode/queue/inference."""
    totals, residuals = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post("/v1/transcribe", files={"files": (clip.name, clip.read_bytes())})
            total = time.perf_counter() - started
            response.raise_for_status()
            timings = response.json()["results"][0]["timings"]
            totals.append(total)
            residuals.append(total - timings["decode"] - timings["queue"] - timings["inference"])
    return statistics.median(totals), statistics.median(residuals)


def measure(url: str, files: list, clip: Path, clients: list[int], requests: int) -> dict[str, float]:
    run(url, "native", files, 1, 4)  # warm-up: first-call costs are not measured
    whole, outside = latency(url, clip, requests)
    figures = {"p50 ms": whole * 1000, "outside ms": outside * 1000}
    for count in clients:
        result = run(url, "native", files, count, requests)
        assert set(result.statuses) == {200}, result.statuses
        figures[f"audio s/s @{count}"] = result.audio_seconds / result.wall_seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clients", default="8", help="comma-separated client counts (all files)")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--replicas", default="1,2", help="comma-separated Ray replica counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-file", type=Path, default=SHARED_AUDIO / "jfk.flac")
    parser.add_argument("--port", type=int, default=18600)
    parser.add_argument("--serve-args", default="", help='more flags for every server: "--torch-threads 1"')
    args = parser.parse_args()

    paths = sorted(p for p in SHARED_AUDIO.iterdir() if p.suffix in {".wav", ".mp3", ".flac"})
    files = [(p.name, p.read_bytes(), audio_duration(p)) for p in paths]
    clients = [int(c) for c in args.clients.split(",")]
    servers = {"plain serve": None, **{f"ray, {r} replica(s)": int(r) for r in args.replicas.split(",")}}
    print(f"model {args.model}; {len(files)} files, {sum(f[2] for f in files):.1f} s of audio; "
          f"{args.requests} requests per measurement; {os.cpu_count()} cores; {args.serve_args}")  # fmt: skip
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for number in range(1, args.rounds + 1):
        for name, replicas in servers.items():
            url = f"http://127.0.0.1:{args.port}"
            log = Path(tempfile.mkdtemp(prefix="svb-log-")) / "server.log"
            server = start(args.model, args.port, replicas, args.serve_args.split(), log)
            try:
                ready = wait_ready(url, server)
                figures = {"ready s": ready, **measure(url, files, args.latency_file, clients, args.requests)}
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=120)
            rounds[name].append(figures)
            load = os.getloadavg()[0]
            shown = "  ".join(f"{key} {value:.1f}" for key, value in figures.items())
            print(f"round {number} {name:>20}: {shown}  (load {load:.1f})", flush=True)
    print("\nmedian of the rounds")
    for name, results in rounds.items():
        shown = "  ".join(f"{key} {statistics.median(r[key] for r in results):.1f}" for key in results[0])
        print(f"{name:>20}: {shown}")


if __name__ == "__main__":
    main()
