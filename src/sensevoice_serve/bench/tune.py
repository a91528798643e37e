"""``--tune``: a coordinate search over settings candidates, each a server started afresh, and a verdict that
one lucky run cannot win."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..runtimes import int8_available
from ..tuning import MachineInfo, TunedSettings, auto_settings
from .drive import ServiceClient, Stability, measure_throughput, percentile
from .layout import TUNE_REPORT
from .material import BenchClip
from .provenance import describe_run
from .report import settings_text

# A candidate is kept only if it is this much faster (run-to-run noise is a few per cent) and its
# one-at-a-time latency stays within this factor of the untuned settings' (throughput must not cost users).
TUNE_MIN_GAIN = 0.03
TUNE_LATENCY_LIMIT = 1.2


def untuned_settings(explicit: dict, machine: MachineInfo) -> TunedSettings:
    """What serve uses with no profile, whatever profile exists now: the rules for the device and precision
    asked for (``--device cpu`` on a GPU machine gets the CPU's), with the explicit values on top."""
    rules = auto_settings(machine, explicit.get("device", "auto"), explicit.get("dtype", "auto"))
    chosen = dict(explicit)
    if "device" in chosen:
        chosen["device"] = rules.device  # "cuda" spelled as the GPU it means: "cuda:0"
    return replace(rules, **chosen)


def tuning_steps(baseline: TunedSettings, cores: int, gpu: bool) -> list[list[dict]]:
    """Alternatives to try, one dimension at a time (coordinate search), each a set of overrides."""
    steps = []
    if not gpu and int8_available():
        # The largest lever on a CPU: the int8 runtime against float32 (the rules pick by CPU feature).
        steps.append([{"dtype": "int8"}, {"dtype": "fp32"}])
    if gpu:
        # The GPU does the model; the cores decode. More workers is the lever, and fp16 vs bf16.
        splits = [(baseline.torch_threads, max(1, baseline.decode_workers * 2))]
    else:
        # Torch's threads and the decode workers share the cores.
        splits = [(cores, 1), (max(1, cores - 1), 1), (max(1, cores - 2), 2)]
    steps += [
        [{"torch_threads": threads, "decode_workers": workers} for threads, workers in splits],
        [
            {"max_batch_frames": baseline.max_batch_frames // 2},
            {"max_batch_frames": baseline.max_batch_frames * 2},
        ],
        [{"max_wait_ms": baseline.max_wait_ms / 2}, {"max_wait_ms": baseline.max_wait_ms * 2}],
    ]
    if gpu:
        steps.append([{"dtype": "fp16"}, {"dtype": "bf16"}])
    return steps


def measure_candidate(
    model_dir: Path, settings: TunedSettings, clips: Sequence[BenchClip], requests: int, concurrency: int
) -> dict:
    """One candidate on a mixed workload (every clip in turn): one-at-a-time p50 and throughput.

    Each candidate is a server started afresh with these settings, as a profile would start it.
    """
    stability = Stability()
    with ServiceClient(model_dir, settings) as client:
        for clip in clips:
            stability.record(lambda clip=clip: client.request(clip))  # warm-up per length
        timings = [
            stability.record(lambda i=i: client.request(clips[i % len(clips)])) for i in range(requests)
        ]
        totals = [t.total for t in timings if t]
        rate = measure_throughput(client, clips, concurrency, max(requests, concurrency), stability)
    return {
        "settings": asdict(settings),
        "p50_s": percentile(totals, 0.5) if totals else None,
        "audio_seconds_per_second": rate,
        "errors": stability.errors,
    }


class _Candidates:
    """Every candidate measured, in order (the report lists them all), and which settings were tried."""

    def __init__(
        self,
        model_dir: Path,
        clips: Sequence[BenchClip],
        requests: int,
        concurrency: int,
        progress: Callable[[str], None],
    ):
        self._measure_args = (clips, requests, concurrency)
        self._model_dir = model_dir
        self._progress = progress
        self._tried: set[TunedSettings] = set()
        self.entries: list[dict] = []

    def measure(self, settings: TunedSettings, again: bool = False) -> dict:
        self._progress(f"candidate {len(self.entries) + 1}: {settings_text(asdict(settings))}")
        self._tried.add(settings)
        self.entries.append(
            {**measure_candidate(self._model_dir, settings, *self._measure_args), "again": again}
        )
        return self.entries[-1]

    def tried(self, settings: TunedSettings) -> bool:
        return settings in self._tried


@dataclass
class _Verdict:
    settings: TunedSettings
    entry: dict  # the winner's first measurement, as listed in the report
    figures: dict  # what it is judged by: averaged over its two measurements when measured again
    untuned_figures: dict


def _better(candidate: dict, best: dict, untuned: dict) -> bool:
    """Faster than ``best`` by more than noise, without errors, and without costing users latency."""
    return (
        candidate["errors"] == 0
        and candidate["p50_s"] is not None
        and untuned["p50_s"] is not None
        and candidate["p50_s"] <= TUNE_LATENCY_LIMIT * untuned["p50_s"]
        and candidate["audio_seconds_per_second"] > best["audio_seconds_per_second"] * (1 + TUNE_MIN_GAIN)
    )


def _averaged(first: dict, second: dict) -> dict:
    p50 = [m["p50_s"] for m in (first, second) if m["p50_s"] is not None]
    return {
        "settings": first["settings"],
        "p50_s": sum(p50) / len(p50) if p50 else None,
        "audio_seconds_per_second": (first["audio_seconds_per_second"] + second["audio_seconds_per_second"])
        / 2,
        "errors": first["errors"] + second["errors"],
    }


def _search(candidates: _Candidates, baseline: TunedSettings, untuned: dict, cores: int) -> _Verdict:
    """Each dimension in turn from the best so far; a candidate wins by ``_better`` than the best."""
    best_settings, best = baseline, untuned
    for step in tuning_steps(baseline, cores, baseline.device.startswith("cuda")):
        for overrides in step:
            settings = replace(best_settings, **overrides)
            if not candidates.tried(settings):
                candidate = candidates.measure(settings)
                if _better(candidate, best, untuned):
                    best_settings, best = settings, candidate
    return _Verdict(best_settings, best, best, untuned)


def _confirm(candidates: _Candidates, baseline: TunedSettings, winner: _Verdict) -> _Verdict:
    """One lucky run must not make the profile: both are measured again and judged on their averages."""
    untuned = winner.untuned_figures
    if winner.entry is untuned:
        return winner
    untuned_figures = _averaged(untuned, candidates.measure(baseline, again=True))
    best_figures = _averaged(winner.entry, candidates.measure(winner.settings, again=True))
    if not _better(best_figures, untuned_figures, untuned_figures):
        return _Verdict(baseline, untuned, untuned_figures, untuned_figures)
    return _Verdict(winner.settings, winner.entry, best_figures, untuned_figures)


def run_tune(
    model_dir: Path,
    clips: Sequence[BenchClip],
    baseline: TunedSettings,
    requests: int,
    concurrency: int,
    progress: Callable[[str], None],
) -> tuple[dict, TunedSettings]:
    """Coordinate search from the untuned settings, then the winner confirmed against them once more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    candidates = _Candidates(model_dir, clips, requests, concurrency, progress)
    untuned = candidates.measure(baseline)
    verdict = _confirm(candidates, baseline, _search(candidates, baseline, untuned, cores))
    best, untuned_figures = verdict.figures, verdict.untuned_figures
    report = {
        **describe_run(TUNE_REPORT, model_dir),
        "clips": [{"label": clip.label, "seconds": clip.seconds} for clip in clips],
        "requests": requests,
        "concurrency": concurrency,
        "candidates": candidates.entries,
        "baseline": 0,
        "best": candidates.entries.index(verdict.entry),
        "throughput_gain": best["audio_seconds_per_second"] / untuned_figures["audio_seconds_per_second"] - 1,
        "latency_change": (
            best["p50_s"] / untuned_figures["p50_s"] - 1
            if best["p50_s"] and untuned_figures["p50_s"]
            else None
        ),
    }
    return report, verdict.settings
