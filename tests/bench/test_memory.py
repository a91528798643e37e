"""Peak memory over a block: the CPU's needs no torch, so that the int8 engine's peak RSS is its own."""

from __future__ import annotations

import subprocess
import sys

MEASURE_ON_THE_CPU = """
import sys
import numpy as np
from sensevoice_serve.bench.run import run_bench
from sensevoice_serve.bench.memory import PeakMemory

with PeakMemory("cpu") as memory:
    np.ones(1_000_000).sum()
assert memory.result["peak_rss_mb"] > 0 and memory.result["gpu_max_allocated_mb"] is None, memory.result
print("torch" in sys.modules)
"""


def test_cpu_peak_memory_does_not_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_ON_THE_CPU], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "False", "bench imported torch for a CPU measurement"
