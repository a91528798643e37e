"""``--compare A.json B.json``: two runs side by side, B/A for every figure both have."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidOption
from .layout import BENCH_REPORT, REPORT_VERSION
from .report import format_mb, format_ms, format_s, format_times, machine_label

Figure = tuple[str, Callable[[float | None], str], float | None, float | None]  # name, format, A, B
# Figures at the same place in every row: name (the arrow says which way is better), format, keys.
NESTED_FIGURES = (
    ("cold first result ↓", format_s, ("cold_start", "first_result_s")),
    ("p50 latency ↓", format_ms, ("latency", "p50_s")),
    ("p90 latency ↓", format_ms, ("latency", "p90_s")),
    ("p99 latency ↓", format_ms, ("latency", "p99_s")),
)
MEMORY_FIGURES = (("peak RSS ↓", "peak_rss_mb"), ("peak GPU (torch) ↓", "gpu_max_allocated_mb"))


def load_report(path: str | Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidOption(f"cannot read bench results {path}: {error}") from error
    if report.get("report") != BENCH_REPORT or report.get("version") != REPORT_VERSION:
        raise InvalidOption(f"{path} is not a sensevoice bench --json file (version {REPORT_VERSION})")
    return report


def render_comparison(first: dict, second: dict) -> str:
    """Two runs side by side with B/A for every figure both have; arrows say which way is better."""
    a, b = machine_label(first), machine_label(second)
    lines = [
        f"### sensevoice bench: A = {a} ({first['device']}, {first['dtype']}) vs "
        f"B = {b} ({second['device']}, {second['dtype']})",
        "",
    ]
    if first["model"]["random_weights"] != second["model"]["random_weights"]:
        lines += ["Note: one run used RANDOM weights and the other did not.", ""]
    lines += ["| clip | figure | A | B | B/A |", "|---|---|---|---|---|"]
    rows_b = {row["label"]: row for row in second["clips"]}
    for row_a in first["clips"]:
        row_b = rows_b.get(row_a["label"])
        if row_b is None:
            continue
        for name, unit_format, value_a, value_b in _comparable_figures(row_a, row_b):
            ratio = f"{value_b / value_a:.2f}" if value_a and value_b is not None else "–"
            lines.append(
                f"| {row_a['label']} | {name} | {unit_format(value_a)} | {unit_format(value_b)} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def _nested(row: dict, keys: tuple[str, ...]) -> float | None:
    value = row
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _comparable_figures(row_a: dict, row_b: dict) -> list[Figure]:
    figures = [(name, fmt, _nested(row_a, keys), _nested(row_b, keys)) for name, fmt, keys in NESTED_FIGURES]
    rates_b = {t["concurrency"]: t["audio_seconds_per_second"] for t in row_b["throughput"]}
    for entry in row_a["throughput"]:
        clients = entry["concurrency"]
        if clients in rates_b:
            figures.append(
                (
                    f"× real time @{clients} ↑",
                    format_times,
                    entry["audio_seconds_per_second"],
                    rates_b[clients],
                )
            )
    for name, key in MEMORY_FIGURES:
        figures.append((name, format_mb, row_a["memory"][key], row_b["memory"][key]))
    figures.append(("errors ↓", str, row_a["stability"]["errors"], row_b["stability"]["errors"]))
    return figures
