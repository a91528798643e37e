"""Realtime load: N concurrent ``/v1/realtime`` sessions streaming real recordings at real-time pace (100 ms
chunks, server VAD, partials every 300 ms) against one server, compared with N independent single-stream
decoders (one model copy per stream, each decoding its own partials and finals in its audio loop, as
sherpa-onnx's simulated-streaming examples run SenseVoice), measured in the same run.

    python benchmarks/load_realtime.py --model tiny --seconds 30
    python benchmarks/load_realtime.py --model full --seconds 30 --json realtime-full.json

For each N (1, 2, 4, ... until a step fails) it reports the final latency after the end of speech (from the
moment the audio at ``audio_end_ms`` was sent to the completed transcript; the user also waits the VAD's
silence duration, 500 ms, before that), the interval achieved between partials, partials sent and skipped,
and how far the streams fell behind real time. A step keeps up when no stream fell more than ``--max-lag``
behind and the p99 final latency is within ``--max-final-p99``. The largest N that keeps up is the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from sensevoice_serve.bench.drive import percentile

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
RECORDINGS = ("multilingual.mp3", "jfk.flac", "zh_sample.wav", "stereo_diarization.wav", "hotwords.mp3")
RATE = 16000
CHUNK = 0.1  # seconds of audio per append
PAUSE = 1.5  # seconds of silence after each recording
PARTIAL_INTERVAL = 0.3
MAX_UTTERANCE = 15.0
COMPLETION_GRACE = 30.0  # seconds a stream waits for its last finals once its audio is sent


@dataclass
class StreamRecord:
    """One stream's measurements, shared server session or independent decoder."""

    lag: float = 0.0  # how far its audio fell behind real time at worst (s)
    final_latencies: list[float] = field(default_factory=list)
    partial_intervals: list[float] = field(default_factory=list)
    partials: int = 0
    missing_finals: int = 0
    peak_rss_mb: float = 0.0


def material() -> np.ndarray:
    """The shared recordings, each followed by a pause, as one 16 kHz loop (about 100 s)."""
    from sensevoice_serve.audio import decode_audio

    pieces = []
    for name in RECORDINGS:
        pieces += [decode_audio(SHARED_AUDIO / name).samples, np.zeros(int(PAUSE * RATE), np.float32)]
    return np.concatenate(pieces)


def stream_audio(loop: np.ndarray, index: int, seconds: float) -> np.ndarray:
    """Stream ``index``'s audio: ``seconds`` of the loop from its own phase, so streams do not align."""
    start = int(index * 7.3 * RATE) % len(loop)
    return np.resize(np.roll(loop, -start), int(seconds * RATE))


def pcm_chunks(audio: np.ndarray) -> list[str]:
    step = int(CHUNK * RATE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return [
        base64.b64encode(pcm[i : i + step].tobytes()).decode() for i in range(0, len(pcm) - step + 1, step)
    ]


def final_latency(done_at: float, decided_ms: int, available: list[float]) -> float:
    """From when the audio up to ``decided_ms``, which ended the turn, existed (its chunk was sent) to
    ``done_at``."""
    chunk = min(max(0, -(-decided_ms // int(CHUNK * 1000)) - 1), len(available) - 1)
    return done_at - available[chunk]


# One server, N sessions.


class SessionLog:
    def __init__(self) -> None:
        self.sent_at: list[float] = []
        self.started: dict[str, int] = {}  # item -> audio_start_ms
        self.stopped: dict[str, int] = {}  # item -> audio_end_ms
        self.completed: dict[str, float] = {}
        self.partials: dict[str, list[float]] = {}
        self.all_done = asyncio.Event()
        self.sending = True

    def receive(self, event: dict, now: float) -> None:
        kind, item = event["type"], event.get("item_id")
        if kind == "input_audio_buffer.speech_started":
            self.started[item] = event["audio_start_ms"]
        elif kind == "input_audio_buffer.speech_stopped":
            self.stopped[item] = event["audio_end_ms"]
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.completed[item] = now
        elif kind == "conversation.item.input_audio_transcription.delta" and "text" in event:
            self.partials.setdefault(item, []).append(now)
        self._check_done()

    def finish_sending(self) -> None:
        self.sending = False
        self._check_done()

    def _check_done(self) -> None:
        if not self.sending and set(self.stopped) <= set(self.completed):
            self.all_done.set()

    def record(self, lag: float) -> StreamRecord:
        record = StreamRecord(lag=lag)
        next_starts = set(self.started.values())
        for item, end_ms in self.stopped.items():
            # A turn cut at the maximum length (the next one starts where it ends) was decided when it
            # reached that length, not at its end.
            cut = end_ms in next_starts
            decided_ms = max(end_ms, self.started[item] + int(MAX_UTTERANCE * 1000)) if cut else end_ms
            if item in self.completed:
                record.final_latencies.append(final_latency(self.completed[item], decided_ms, self.sent_at))
            else:
                record.missing_finals += 1
        for times in self.partials.values():
            record.partials += len(times)
            record.partial_intervals += list(np.diff(times))
        return record


async def server_session(url: str, audio: np.ndarray) -> StreamRecord:
    from websockets.asyncio.client import connect

    log, lag = SessionLog(), 0.0
    update = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
              "turn_detection": {"type": "server_vad"}}}}  # fmt: skip
    async with connect(url, max_size=None, open_timeout=120) as socket:
        await socket.recv()
        await socket.send(json.dumps({"type": "session.update", "session": update}))
        receiver = asyncio.create_task(_receive(socket, log))
        started = time.perf_counter()
        for index, chunk in enumerate(pcm_chunks(audio)):
            delay = started + index * CHUNK - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, -delay)
            await socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            log.sent_at.append(time.perf_counter())
        log.finish_sending()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(log.all_done.wait(), COMPLETION_GRACE)
        receiver.cancel()
    return log.record(lag)


async def _receive(socket, log: SessionLog) -> None:
    async for message in socket:
        log.receive(json.loads(message), time.perf_counter())


def shared_step(url: str, audios: list[np.ndarray]) -> list[StreamRecord]:
    async def everyone() -> list[StreamRecord]:
        return list(await asyncio.gather(*(server_session(url, audio) for audio in audios)))

    return asyncio.run(everyone())


def metric(base_url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(base_url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def start_server(model_dir: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "SENSEVOICE_MODEL": model_dir, "SENSEVOICE_PORT": str(port),
           "SENSEVOICE_REALTIME_MAX_SESSIONS": "10000", "SENSEVOICE_SUPERVISE": "false"}  # fmt: skip
    log = open(Path(tempfile.gettempdir()) / f"load-realtime-server-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "sensevoice_serve.cli", "serve"], env=env,
                               stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become ready")


# N independent single-stream decoders.


def simulate(model_dir: str, audio: np.ndarray, ready, go) -> StreamRecord:
    """One stream with its own model copy, decoding partials and finals in its own audio loop."""
    import torch

    from sensevoice_serve.batching import Utterance
    from sensevoice_serve.pipeline import SenseVoice
    from sensevoice_serve.realtime.buffer import AudioBuffer
    from sensevoice_serve.realtime.protocol import ServerVad
    from sensevoice_serve.realtime.turns import SpeechStarted, TurnDetector, WindowProbabilities
    from sensevoice_serve.silero import load_model

    torch.set_num_threads(1)
    engine = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32")
    probabilities = WindowProbabilities(load_model())
    turns = TurnDetector(ServerVad(), int(MAX_UTTERANCE * RATE))
    record, buffer, available = StreamRecord(), AudioBuffer(), []
    turn_start, partial_at, last_partial = None, 0, None
    ready.put(os.getpid())
    go.wait()
    step, started = int(CHUNK * RATE), time.perf_counter()
    for index in range(len(audio) // step):
        delay = started + index * CHUNK - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        record.lag = max(record.lag, -delay)
        available.append(time.perf_counter())
        chunk = audio[index * step : (index + 1) * step]
        buffer.append(chunk)
        for event in turns.push(probabilities.push(chunk)):
            if isinstance(event, SpeechStarted):
                turn_start, partial_at, last_partial = event.start, buffer.end, None
                continue
            engine.run_batch([Utterance(buffer.copy(turn_start, event.end))])
            record.final_latencies.append(time.perf_counter() - available[-1])  # decided on this chunk
            turn_start = None
        if turn_start is not None and buffer.end - partial_at >= PARTIAL_INTERVAL * RATE:
            engine.run_batch([Utterance(buffer.copy(turn_start, buffer.end))])
            partial_at, now = buffer.end, time.perf_counter()
            record.partials += 1
            if last_partial is not None:
                record.partial_intervals.append(now - last_partial)
            last_partial = now
        buffer.release_before(turns.keep_from)
    record.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def _independent_worker(model_dir: str, audio: np.ndarray, ready, go, results) -> None:
    results.put(vars(simulate(model_dir, audio, ready, go)))


def independent_step(model_dir: str, audios: list[np.ndarray]) -> list[StreamRecord]:
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    processes = [
        context.Process(target=_independent_worker, args=(model_dir, audio, ready, go, results))
        for audio in audios
    ]
    for process in processes:
        process.start()
    for _ in processes:  # every copy loaded before any stream starts
        ready.get(timeout=1800)
    go.set()
    records = [StreamRecord(**results.get(timeout=3600)) for _ in processes]
    for process in processes:
        process.join()
    return records


# Reporting.


def summary(streams: int, records: list[StreamRecord], max_lag: float, max_final_p99: float) -> dict:
    latencies = [value for record in records for value in record.final_latencies]
    intervals = [value for record in records for value in record.partial_intervals]
    missing = sum(record.missing_finals for record in records)
    lag = max(record.lag for record in records)
    p99 = percentile(latencies, 0.99) if latencies else 0.0  # no turn ended: judged by the lag alone
    return {
        "streams": streams,
        "finals": len(latencies),
        "missing_finals": missing,
        "final_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "final_p99_s": round(p99, 3),
        "partial_interval_p50_s": round(percentile(intervals, 0.5), 3) if intervals else None,
        "partials": sum(record.partials for record in records),
        "max_lag_s": round(lag, 3),
        "peak_rss_mb_per_copy": round(max(record.peak_rss_mb for record in records), 1) or None,
        "keeps_up": lag <= max_lag and p99 <= max_final_p99 and missing == 0,
    }


def print_row(kind: str, row: dict) -> None:
    skipped = f" skipped {row['partials_skipped']}/{row['partials_skipped'] + row['partials_sent']}" if (
        "partials_skipped" in row) else ""  # fmt: skip
    print(
        f"{kind:>11} N={row['streams']:<4} finals {row['finals']:>4} p50 {row['final_p50_s']} s "
        f"p99 {row['final_p99_s']} s | partial every {row['partial_interval_p50_s']} s{skipped} | "
        f"lag {row['max_lag_s']} s | load {row['load']} | "
        + ("keeps up" if row["keeps_up"] else "FALLS BEHIND"),
        flush=True,
    )


def resolve_model(name: str) -> str:
    if name not in ("tiny", "full"):
        return name
    target = Path(tempfile.gettempdir()) / f"{name}-model"
    if not (target / "model.pt").exists():
        from sensevoice_serve.random_checkpoint import write_random_checkpoint

        write_random_checkpoint(target, name, seed=0)
    return str(target)


def ramp(measures: dict[str, Callable[[int], dict]], counts: list[int]) -> dict[str, list[dict]]:
    """Each way at N = 1, 2, 4... in turn, the ways interleaved so that they share the machine's load of
    the moment; a way stops at its first N that falls behind."""
    results: dict[str, list[dict]] = {kind: [] for kind in measures}
    for count in counts:
        running = [kind for kind, rows in results.items() if all(row["keeps_up"] for row in rows)]
        if not running:
            break
        for kind in running:
            row = measures[kind](count)
            if row:
                row["load"] = round(os.getloadavg()[0], 1)
                print_row(kind, row)
                results[kind].append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="tiny, full (random test checkpoints) or a directory")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio each stream sends per step")
    parser.add_argument("--streams", default="1,2,4,8,16,32,64,128,256", help="N to try, in order")
    parser.add_argument("--max-lag", type=float, default=0.5, help="seconds a stream may fall behind")
    parser.add_argument("--max-final-p99", type=float, default=2.0, help="p99 final latency allowed (s)")
    parser.add_argument("--max-independent", type=int, default=32, help="largest N of model copies to try")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    model_dir, loop = resolve_model(args.model), material()
    counts = [int(n) for n in args.streams.split(",")]
    url = f"http://127.0.0.1:{args.port}"
    server = start_server(model_dir, args.port)

    def shared(count: int) -> dict:
        before = {
            o: metric(url, "sensevoice_realtime_partials_total", outcome=o) for o in ("sent", "skipped")
        }
        audios = [stream_audio(loop, i, args.seconds) for i in range(count)]
        row = summary(count, shared_step(url.replace("http", "ws") + "/v1/realtime", audios), args.max_lag,
                      args.max_final_p99)  # fmt: skip
        for outcome, value in before.items():
            row[f"partials_{outcome}"] = int(
                metric(url, "sensevoice_realtime_partials_total", outcome=outcome) - value
            )
        row["server_peak_rss_mb"] = peak_rss_mb(server.pid)
        return row

    def independent(count: int) -> dict:
        if count > args.max_independent:
            return {}
        audios = [stream_audio(loop, i, args.seconds) for i in range(count)]
        return summary(count, independent_step(model_dir, audios), args.max_lag, args.max_final_p99)

    print(f"model {model_dir}, {args.seconds:g} s per stream, {os.cpu_count()} cores, load {os.getloadavg()}")
    try:
        results = ramp({"one server": shared, "independent": independent}, counts)
    finally:
        server.terminate()
        server.wait()
    for kind, rows in results.items():
        passing = [row["streams"] for row in rows if row["keeps_up"]]
        print(f"{kind}: largest N that keeps up: {max(passing) if passing else 0}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": model_dir, "seconds": args.seconds, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
