"""The report of ``scripts/gpu-check.sh``: what ran and what did not, then each step's findings.

    python3 scripts/gpu_report.py step --work WORK --name NAME --status ok|failed|timeout|skipped \
        [--rc N] [--seconds S] [--limit S] [--note TEXT] [--command TEXT]
    python3 scripts/gpu_report.py render --work WORK --out OUTDIR

``step`` appends one record to WORK/steps.jsonl; ``render`` writes OUTDIR/report.md and OUTDIR/report.json
from everything in WORK (the plan, the step records and their outputs in WORK/out/, the GPU tests' JSON lines
and JUnit XML, the bench and baseline JSON). The script renders after every step, so a run stopped half-way
still leaves a report. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path

STEP_LOG = "steps.jsonl"
PLAN = "plan.txt"
MODE = "mode.txt"
TEST_FIGURES = "gpu-tests.jsonl"
JUNIT = "pytest.xml"
MACHINE_LINES = 40
OUTCOMES = ("passed", "failure", "error", "skipped")
RAN = ("ok", "failed", "timeout")
FIGURE_COLUMNS = (
    "token_agreement",
    "tokens_same",
    "tokens_total",
    "max_relative_logit_error",
    "mean_abs_logit_error",
    "finite",
    "peak_gpu_mb",
)
# Steps whose own markdown output goes into the report, under these titles, in the order they ran.
SECTIONS = {
    "bench-bf16": "`sensevoice bench`, bf16",
    "bench-fp32": "`sensevoice bench`, fp32",
    "funasr": "funasr's AutoModel against ours: same device, checkpoint and clips",
}


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path) if line.strip()]


def last_output_line(work: Path, name: str) -> str:
    """The last line a failed step printed (stderr first): usually the exception or the refusal."""
    for stream in ("err", "out"):
        lines = [line.strip() for line in read_lines(work / "out" / f"{name}.{stream}") if line.strip()]
        if lines:
            return lines[-1][:300]
    return ""


def step_table(work: Path) -> list[dict]:
    """Every planned step with its record; a step the script never reached says so."""
    records = {record["name"]: record for record in json_lines(work / STEP_LOG)}
    planned = [name for name in read_lines(work / PLAN) if name.strip()]
    steps = []
    for name in planned + [name for name in records if name not in planned]:
        unreached = {"name": name, "status": "not reached", "note": "the script stopped before this step"}
        record = records.get(name, unreached)
        if record["status"] in ("failed", "timeout") and not record.get("note"):
            record["note"] = last_output_line(work, name)
        steps.append(record)
    return steps


def junit_summary(path: Path) -> dict | None:
    """Counts and each test's outcome from pytest's JUnit XML."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    cases = []
    for case in root.iter("testcase"):
        problems = [found for kind in OUTCOMES[1:] if (found := case.find(kind)) is not None]
        outcome = problems[0].tag if problems else "passed"
        message = (problems[0].get("message") or "").strip().splitlines() if problems else []
        cases.append({"test": case.get("name"), "outcome": outcome, "message": (message or [""])[0][:300]})
    counts = {outcome: sum(case["outcome"] == outcome for case in cases) for outcome in OUTCOMES}
    return {"counts": counts, "cases": cases}


def collect(work: Path) -> dict:
    mode = (read_lines(work / MODE) or ["gpu"])[0]
    steps = step_table(work)
    return {
        "report": "sensevoice-gpu-check",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "ran": [step["name"] for step in steps if step["status"] in RAN],
        "not_run": [{"name": s["name"], "why": s.get("note", "")} for s in steps if s["status"] not in RAN],
        "steps": steps,
        "machine": read_lines(work / "out" / "machine.out"),
        "doctor": read_json(work / "out" / "doctor.out"),
        "gpu_tests": {"junit": junit_summary(work / JUNIT), "figures": json_lines(work / TEST_FIGURES)},
        "bench": {path.stem.removeprefix("bench-"): read_json(path) for path in work.glob("bench-*.json")},
        "funasr_baseline": read_json(work / "funasr.json"),
    }


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.4f}"
    return "—" if value is None else str(value).replace("|", "\\|")


def table_row(cells: list[object]) -> str:
    return "| " + " | ".join(cell(value) for value in cells) + " |"


def steps_markdown(report: dict) -> list[str]:
    ran = [f"{step['name']} ({step['status']})" for step in report["steps"] if step["status"] in RAN]
    reasons: dict[str, list[str]] = {}
    for item in report["not_run"]:
        reasons.setdefault(item["why"], []).append(item["name"])
    not_run = [f"{', '.join(names)} ({why})" for why, names in reasons.items()]
    lines = [
        f"**Ran:** {', '.join(ran) or 'nothing'}",
        "",
        f"**Did not run:** {'; '.join(not_run) or 'nothing, every step ran'}",
        "",
        "| step | status | exit | seconds | limit | note |",
        "|---|---|---|---|---|---|",
    ]
    for step in report["steps"]:
        seconds = step.get("seconds")
        shown = f"{seconds:.1f}" if isinstance(seconds, (int, float)) else None
        row = [step["name"], step["status"], step.get("rc"), shown, step.get("limit"), step.get("note", "")]
        lines.append(table_row(row))
    return lines


def tests_markdown(report: dict) -> list[str]:
    junit, figures = report["gpu_tests"]["junit"], report["gpu_tests"]["figures"]
    if junit is None and not figures:
        return []
    lines = ["", "## GPU tests (`pytest -m gpu`)", ""]
    if junit is not None:
        lines.append(", ".join(f"{count} {outcome}" for outcome, count in junit["counts"].items()))
        lines += [""] + [f"- {c['outcome']}: `{c['test']}` {c['message']}" for c in junit["cases"]]
    if figures:
        lines += ["", table_row(["figure", *FIGURE_COLUMNS]), "|---|" + "---|" * len(FIGURE_COLUMNS)]
        lines += [table_row([figure["test"], *(figure.get(c) for c in FIGURE_COLUMNS)]) for figure in figures]
    return lines


def render_markdown(work: Path, report: dict) -> str:
    label = "GPU" if report["mode"] == "gpu" else "CPU REHEARSAL (no GPU: no figure here is about GPUs)"
    lines = [f"# sensevoice-serve GPU check: {label}, {report['created']}", "", *steps_markdown(report)]
    if report["machine"]:
        lines += ["", "## Machine", "", "```", *report["machine"][:MACHINE_LINES], "```"]
    lines += tests_markdown(report)
    for step in report["steps"]:
        output = read_lines(work / "out" / f"{step['name']}.out") if step["name"] in SECTIONS else []
        if output:
            lines += ["", f"## {SECTIONS[step['name']]}", "", *output]
    return "\n".join(lines) + "\n"


def render(work: Path, out: Path) -> None:
    report = collect(work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(work, report), encoding="utf-8")


def record_step(args: argparse.Namespace) -> None:
    fields = ("name", "status", "rc", "seconds", "limit", "note", "command")
    with open(Path(args.work) / STEP_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({field: getattr(args, field) for field in fields}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="action", required=True)
    step = commands.add_parser("step", help="record one step")
    step.add_argument("--work", required=True)
    step.add_argument("--name", required=True)
    step.add_argument("--status", required=True, choices=[*RAN, "skipped"])
    step.add_argument("--rc", type=int)
    step.add_argument("--seconds", type=float)
    step.add_argument("--limit", type=int)
    step.add_argument("--note", default="")
    step.add_argument("--command", default="")
    step.set_defaults(handler=record_step)
    make = commands.add_parser("render", help="write report.md and report.json")
    make.add_argument("--work", required=True)
    make.add_argument("--out", required=True)
    make.set_defaults(handler=lambda args: render(Path(args.work), Path(args.out)))
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
