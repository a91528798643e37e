"""Peak memory over a block: this process's resident set, and the GPU's as torch and NVML count it."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NVML_SAMPLE_INTERVAL_S = 0.02


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux); False where the peak can only be read since process start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


class _NvmlPeak:
    """Samples NVML's view of GPU memory (this process's, else the whole device's) and keeps the peak.

    NVML sees what torch's allocator does not: the CUDA context, cuBLAS/cuDNN workspaces, fragmentation.
    """

    def __init__(self, device_index: int):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.scope = "process"
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _used_mb(self) -> float:
        pid = os.getpid()
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                return process.usedGpuMemory / 2**20
        # In a container NVML reports host pids, so our own is not found: fall back to the device.
        self.scope = "device"
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._used_mb())
            self._stop.wait(NVML_SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()


class PeakMemory:
    """Peak resident memory of this process and peak GPU memory (torch's count and NVML's) over a block."""

    def __init__(self, device: str | torch.device):
        self.device = str(device)
        self._cuda = None
        if self.device.startswith("cuda"):
            # Only for a GPU: the int8 engine runs without torch, which would add some 230 MB to its peak RSS.
            import torch

            self._cuda = torch.cuda
        self.rss_window = False
        self._nvml: _NvmlPeak | None = None
        self.result: dict = {}

    def __enter__(self) -> PeakMemory:
        self.rss_window = _reset_peak_rss()
        if self._cuda is not None:
            self._cuda.reset_peak_memory_stats(self.device)
            try:
                self._nvml = _NvmlPeak(int(self.device.partition(":")[2] or 0))
            except Exception:  # noqa: BLE001 - nvidia-ml-py missing or NVML unusable: torch's count remains
                self._nvml = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.result = {
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_scope": "clip" if self.rss_window else "process",
            "gpu_max_allocated_mb": None,
            "gpu_nvml_peak_mb": None,
            "gpu_nvml_scope": None,
        }
        if self._cuda is not None:
            self.result["gpu_max_allocated_mb"] = self._cuda.max_memory_allocated(self.device) / 2**20
        if self._nvml is not None:
            self._nvml.stop()
            self.result["gpu_nvml_peak_mb"] = self._nvml.peak_mb
            self.result["gpu_nvml_scope"] = self._nvml.scope
