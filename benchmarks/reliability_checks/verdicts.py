"""Each mode's pass criteria, and its figures as a short table."""

from __future__ import annotations

from collections.abc import Callable

from . import tables
from .deadline import ANSWER_SLACK_SECONDS
from .tables import Rows

# Memory "flat": the serving processes' RSS at the end at most this much above its level after warm-up.
MAX_RSS_GROWTH = 0.05


def growth(before: float | None, after: float | None) -> float | None:
    if not before or after is None:
        return None
    return after / before - 1


def _fuzz_decoder(figures: dict) -> list[str]:
    problems = []
    if figures["crashes"]:
        problems.append(f"{figures['crashes']} decoder crash(es): {figures['failures'][:3]}")
    if figures["hangs"]:
        problems.append(f"{figures['hangs']} input(s) not decoded within {figures['bound_seconds']:g} s")
    if figures["memory_hogs"]:
        problems.append(
            f"{figures['memory_hogs']} input(s) took the decoder over {figures['memory_bound_mb']:g} MB"
        )
    return problems


def _memory_and_health(figures: dict, before: str, after: str) -> list[str]:
    problems = []
    rss_growth = growth(figures["rss_mb"].get(before), figures["rss_mb"][after])
    if rss_growth is not None and rss_growth > MAX_RSS_GROWTH:
        problems.append(f"RSS grew {rss_growth:.1%} ({before} to {after})")
    if not figures["ready_after"]:
        problems.append("the server was not ready at the end")
    return problems


def _fuzz_http(figures: dict) -> list[str]:
    problems = [
        f"{count} request(s) {outcome}"
        for outcome, count in figures["outcomes"].items()
        if outcome != "accepted" and count
    ]
    if figures["serving_process_replaced"] or figures["decode_workers_replaced"]:
        problems.append("a serving process or decode worker died during the run")
    return problems + _memory_and_health(figures, "after_warm_up", "end")


def _overload(figures: dict) -> list[str]:
    problems = [
        f"{count} answer(s) {status}"
        for status, count in figures["statuses"].items()
        if status not in ("200", "503")
    ]
    if figures["503_without_retry_after"]:
        problems.append(f"{figures['503_without_retry_after']} 503 without Retry-After")
    if figures["p99_seconds"] is not None and figures["p99_seconds"] > figures["p99_bound_seconds"]:
        problems.append(
            f"admitted p99 {figures['p99_seconds']:.2f} s over {figures['p99_bound_seconds']:.2f} s"
        )
    return problems + _memory_and_health(figures, "before", "settled")


def _soak(figures: dict) -> list[str]:
    problems = [
        f"{count} answer(s) {status}" for status, count in figures["statuses"].items() if status != "200"
    ]
    return problems + _memory_and_health(figures, "after_warm_up", "end")


def _kill_server(figures: dict) -> list[str]:
    problems = []
    for index, kill in enumerate(figures["kills"], 1):
        if kill["probes_refused"]:
            problems.append(f"kill {index}: {kill['probes_refused']} connection(s) refused")
        if not kill["replaced"]:
            problems.append(f"kill {index}: the serving process was not replaced")
    if not figures["ready_after"]:
        problems.append("the server was not ready at the end")
    return problems


def _kill_bulk(figures: dict) -> list[str]:
    problems = []
    if figures["missing"] or figures["twice_or_more"] or figures["records"] != figures["files"]:
        problems.append(
            f"{figures['records']} records for {figures['files']} files; missing {figures['missing']}, "
            f"more than once {figures['twice_or_more']}"
        )
    return problems


def _deadline(figures: dict) -> list[str]:
    problems = []
    limit = figures["deadline_seconds"] + ANSWER_SLACK_SECONDS
    if figures["bomb_status"] != 422 or figures["bomb_answer_seconds"] > limit:
        problems.append(
            f"the bomb got {figures['bomb_status']} after {figures['bomb_answer_seconds']:.1f} s "
            f"(expected 422 within {limit:g} s): the deadline is not enforced"
        )
    if figures["workers_back_seconds"] is None or figures["next_status"] != 200:
        problems.append("the decode pool was not whole again")
    return problems


# Each mode: its pass criteria, and its figures as table rows.
MODES: dict[str, tuple[Callable[[dict], list[str]], Callable[[dict], Rows]]] = {
    "fuzz-decoder": (_fuzz_decoder, tables.fuzz_decoder),
    "fuzz-http": (_fuzz_http, tables.fuzz_http),
    "overload": (_overload, tables.overload),
    "soak": (_soak, tables.soak),
    "kill-server": (_kill_server, tables.kill_server),
    "kill-bulk": (_kill_bulk, tables.kill_bulk),
    "deadline": (_deadline, tables.deadline),
}


def problems(mode: str, figures: dict) -> list[str]:
    criteria, _ = MODES[mode]
    return criteria(figures)


def render(figures: dict) -> str:
    lines = [
        f"## {figures['mode']} ({figures['provenance']['commit']})",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    _, rows = MODES[figures["mode"]]
    lines += [f"| {name} | {value} |" for name, value in rows(figures)]
    verdict = "; ".join(figures["problems"]) or "all criteria met"
    return "\n".join([*lines, "", f"verdict: {verdict}"])
