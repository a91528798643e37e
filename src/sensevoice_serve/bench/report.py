"""The reports as the markdown tables users post when comparing machines."""

from __future__ import annotations

from .layout import PARTS

SETTINGS_SOURCES = {"rules": "automatic", "profile": "tuned profile", "user": "given on the command line"}


def format_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def format_s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f} s"


def format_mb(megabytes: float | None) -> str:
    return "–" if megabytes is None else f"{megabytes:,.0f} MB"


def format_times(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1f}×"


def settings_text(settings: dict) -> str:
    return (
        f"{settings['device']} {settings['dtype']}, torch threads {settings['torch_threads']}, "
        f"decode workers {settings['decode_workers']}, {settings['max_batch_frames']} frames/batch, "
        f"max wait {settings['max_wait_ms']:g} ms"
    )


def machine_label(report: dict) -> str:
    gpus = report["machine"]["gpus"]
    if gpus:
        return ", ".join(gpu["name"] for gpu in gpus)
    return f"{report['cpu_model']} ({report['machine']['cpu_count']} cores)"


def _header(report: dict) -> list[str]:
    model = report["model"]
    lines = [f"### sensevoice bench: {model['path']} on {machine_label(report)}", ""]
    if model["random_weights"]:
        lines += [
            f"**RANDOM weights** ({model['num_blocks']} blocks, width {model['output_size']}): speed and "
            "memory are representative, transcripts are meaningless.",
            "",
        ]
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines += [f"Machine: {report['platform']}, Python {report['python']}; {versions}", ""]
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _latency_table(report: dict) -> list[str]:
    lines = [
        "| clip | cold: ready | cold: first result | p50 | p90 | p99 | decode+VAD | queue | features "
        "| model | decoding | parts/total |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["clips"]:
        cold = row["cold_start"] or {}
        latency = row["latency"]
        if latency is None:
            cells = ["–"] * (3 + len(PARTS) + 1)
        else:
            parts = latency["parts_s"]
            cells = [format_ms(latency[k]) for k in ("p50_s", "p90_s", "p99_s")]
            cells += [format_ms(parts[name]) for name in PARTS]
            cells.append(f"{latency['parts_over_total']:.0%}")
        lines.append(
            _row([row["label"], format_s(cold.get("ready_s")), format_s(cold.get("first_result_s")), *cells])
        )
    return lines


def _stable_text(stability: dict) -> str:
    if not stability["errors"]:
        return f"yes ({stability['requests']} requests)"
    text = f"no: {stability['errors']} of {stability['requests']} failed"
    if stability["out_of_memory"]:
        text += f" ({stability['out_of_memory']} OOM)"
    return text


def _throughput_table(report: dict) -> list[str]:
    concurrency = report["concurrency"]
    lines = [
        "| clip | "
        + " | ".join(f"× real time @{c}" for c in concurrency)
        + " | peak RSS | peak GPU (torch) | peak GPU (NVML) | stable |",
        "|---|" + "---|" * (len(concurrency) + 4),
    ]
    for row in report["clips"]:
        rates = {t["concurrency"]: t["audio_seconds_per_second"] for t in row["throughput"]}
        memory = row["memory"]
        cells = [format_times(rates.get(c)) for c in concurrency]
        cells += [
            format_mb(memory[key]) for key in ("peak_rss_mb", "gpu_max_allocated_mb", "gpu_nvml_peak_mb")
        ]
        lines.append(_row([row["label"], *cells, _stable_text(row["stability"])]))
    return lines


def _device_table(devices: list[dict]) -> list[str]:
    """What each device did over the whole run (the router sends each request to the least loaded)."""
    total = sum(device["audio_seconds"] for device in devices) or 1.0
    lines = ["| device | batches | audio seconds | share | peak GPU (torch) |", "|---|---|---|---|---|"]
    for device in devices:
        share = device["audio_seconds"] / total
        cells = [device["device"], str(device["batches"]), f"{device['audio_seconds']:.0f}", f"{share:.0%}"]
        lines.append(_row([*cells, format_mb(device["gpu_max_allocated_mb"])]))
    return lines


def render_markdown(report: dict) -> str:
    """The bench report: latency and its parts, then throughput, memory and stability, per clip."""
    lines = _header(report)
    lines += [
        f"Settings ({SETTINGS_SOURCES[report['settings']['source']]}): {settings_text(report['settings'])} "
        f"(ran on {report['device']}, {report['dtype']}). "
        f"Latency: {report['requests']} requests one at a time, end to end from mp3 to result; the parts "
        "are their means.",
        "",
        *_latency_table(report),
        "",
        *_throughput_table(report),
    ]
    if len(report.get("devices", [])) > 1:
        lines += ["", *_device_table(report["devices"])]
    errors = [m for row in report["clips"] for m in row["stability"]["messages"]]
    if errors:
        lines += ["", "Errors seen:", *(f"- {message}" for message in errors)]
    return "\n".join(lines) + "\n"


def render_tune_markdown(report: dict) -> str:
    lines = _header(report)
    clips = ", ".join(clip["label"] for clip in report["clips"])
    lines += [
        f"Tuning on a mixed workload ({clips}): p50 of {report['requests']} requests one at a time, "
        f"throughput with {report['concurrency']} concurrent clients.",
        "",
        "| # | settings | p50 | × real time | errors | |",
        "|---|---|---|---|---|---|",
    ]
    for index, candidate in enumerate(report["candidates"]):
        marks = ["measured again"] if candidate["again"] else []
        if index == report["baseline"]:
            marks.append("untuned")
        if index == report["best"]:
            marks.append("**best**")
        lines.append(
            f"| {index + 1} | {settings_text(candidate['settings'])} | {format_ms(candidate['p50_s'])} | "
            f"{format_times(candidate['audio_seconds_per_second'])} | {candidate['errors']} | "
            f"{', '.join(marks)} |"
        )
    change = report["latency_change"]
    confirmed = any(candidate["again"] for candidate in report["candidates"])
    averaged = " (each measured twice, averaged)" if confirmed else ""
    lines += [
        "",
        f"Gain over the untuned settings{averaged}: throughput {report['throughput_gain']:+.0%}"
        + (f", one-at-a-time p50 {change:+.0%}" if change is not None else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"
