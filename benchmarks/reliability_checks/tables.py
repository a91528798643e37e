"""Each mode's figures as (name, value) rows."""

from __future__ import annotations

Rows = list[tuple[str, str]]


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def _latency(figures: dict) -> str:
    return " / ".join(_s(figures.get(key)) for key in ("p50_seconds", "p99_seconds", "max_seconds"))


def fuzz_decoder(figures: dict) -> Rows:
    rss = figures["decoder_rss_mb"]
    bounds = f"bounds {figures['bound_seconds']:g} s, {figures['memory_bound_mb']:g} MB"
    return [
        ("inputs", f"{figures['inputs']:,} (seed {figures['seed']})"),
        ("outcomes", str(figures["outcomes"])),
        (
            "crashes / hangs / memory hogs",
            f"{figures['crashes']} / {figures['hangs']} / {figures['memory_hogs']} ({bounds})",
        ),
        ("p99 / max per input", f"{_s(figures['p99_seconds'])} / {_s(figures['max_seconds'])}"),
        ("decoder RSS warm / end / peak", " / ".join(_mb(rss[k]) for k in ("after_warm_up", "end", "peak"))),
        ("wall", _s(figures["wall_seconds"])),
    ]


def fuzz_http(figures: dict) -> Rows:
    rss = figures["rss_mb"]
    replaced = figures["serving_process_replaced"] or figures["decode_workers_replaced"]
    return [
        ("requests", f"{figures['requests']:,} (seed {figures['seed']}, {figures['clients']} at once)"),
        ("outcomes", str(figures["outcomes"])),
        ("p99 / max answer", f"{_s(figures['p99_seconds'])} / {_s(figures['max_seconds'])}"),
        (
            "RSS start / warm / end / peak",
            " / ".join(_mb(rss.get(k)) for k in ("start", "after_warm_up", "end", "peak")),
        ),
        ("ready after; processes replaced", f"{figures['ready_after']}; {replaced}"),
        ("tracebacks in the server log", str(figures["tracebacks_in_log"])),
        ("wall", _s(figures["wall_seconds"])),
    ]


def overload(figures: dict) -> Rows:
    rss = figures["rss_mb"]
    levels = ", ".join(
        f"{row['clients']}: {row['ok_per_second']:.1f}/s p99 {_s(row['p99_seconds'])}"
        for row in figures["levels"]
    )
    return [
        ("capacity search (clients: ok/s, p99)", levels),
        (
            "capacity",
            f"{figures['capacity_per_second']:.1f}/s (p99 {_s(figures['p99_at_capacity_seconds'])})",
        ),
        (
            "offered",
            f"{figures['offered_per_second']:.1f}/s ({figures['factor']:g}x) for {figures['seconds']:g} s",
        ),
        ("statuses", str(figures["statuses"])),
        ("200s per second while overloaded", f"{figures['ok_per_second']:.1f}/s"),
        ("503 without Retry-After", str(figures["503_without_retry_after"])),
        (
            "503 answer p50 / p99",
            f"{_s(figures['refused_p50_seconds'])} / {_s(figures['refused_p99_seconds'])}",
        ),
        ("admitted p50 / p99 / max", _latency(figures)),
        (
            "p99 bound",
            f"{_s(figures['p99_bound_seconds'])} "
            f"(2 x max_queue {figures['max_queue']} / 200s per second + p99 at capacity)",
        ),
        ("RSS before / end / settled", " / ".join(_mb(rss[k]) for k in ("before", "end", "settled"))),
    ]


def soak(figures: dict) -> Rows:
    rss = figures["rss_mb"]
    warm, end = rss["after_warm_up"], rss["end"]
    return [
        (
            "requests",
            f"{figures['requests']:,} ({figures['clients']} clients, {figures['wall_seconds']:.0f} s)",
        ),
        ("statuses", str(figures["statuses"])),
        ("p50 / p99 / max", _latency(figures)),
        ("RSS after warm-up / end / peak", " / ".join(_mb(rss[k]) for k in ("after_warm_up", "end", "peak"))),
        ("RSS growth after warm-up", f"{end / warm - 1:+.1%}" if warm else "-"),
    ]


def kill_server(figures: dict) -> Rows:
    rows = [
        (
            "load",
            f"{figures['clients']} clients, {figures['load_requests']:,} requests: "
            f"{figures['load_statuses']}",
        )
    ]
    for index, kill in enumerate(figures["kills"], 1):
        rows.append(
            (
                f"kill {index}",
                f"ready in {_s(kill['recovery_seconds'])}; probes answered {kill['probes_answered']}, "
                f"refused {kill['probes_refused']}, longest wait {_s(kill['longest_probe_wait_seconds'])}; "
                f"failed load requests {kill['failed_requests']}",
            )
        )
    return rows


def kill_bulk(figures: dict) -> Rows:
    runs = "; ".join(
        f"{run['lines_after']} lines, {_s(run['seconds'])}, exit {run['exit_code']}"
        for run in figures["runs"]
    )
    return [
        ("files", f"{figures['files']:,} ({figures['damaged_files']} damaged)"),
        ("runs (killed, then the last to completion)", runs),
        (
            "records / missing / more than once",
            f"{figures['records']} / {len(figures['missing'])} / {len(figures['twice_or_more'])}",
        ),
        ("failures recorded", str(figures["failures_recorded"])),
    ]


def deadline(figures: dict) -> Rows:
    return [
        (
            "bomb",
            f"{figures['bomb_bytes'] / 1e6:.1f} MB FLAC, {figures['bomb_audio_seconds']:,} s of silence",
        ),
        ("deadline", _s(figures["deadline_seconds"])),
        (
            "bomb answer",
            f"{figures['bomb_status']} after {_s(figures['bomb_answer_seconds'])}: "
            f"{figures['bomb_message'][:120]}",
        ),
        (
            "decode worker replaced; pool whole after",
            f"{figures['worker_replaced']}; {_s(figures['workers_back_seconds'])}",
        ),
        ("next upload", f"{figures['next_status']} in {_s(figures['next_answer_seconds'])}"),
    ]
