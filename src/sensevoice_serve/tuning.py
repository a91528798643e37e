"""What this machine should run with: device, precision, threads vs decode workers, batch size, max wait.

``auto_settings`` turns a machine description into settings by rule; ``sensevoice bench --tune`` measures
candidates and saves the best as a profile, which overrides the rules on the same machine; values the user
sets explicitly override both.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import InvalidOption

logger = logging.getLogger(__name__)

GIB = 1024**3
# A conservative estimate, not yet measured on a GPU (none was lent to the sessions so far): inference keeps a
# few layers' activations (~7 KB per frame in half precision) plus float32 logits chunks; leave ample room.
FRAMES_PER_FREE_GIB = 2500
MAX_GPU_BATCH_FRAMES = 60_000
CPU_BATCH_FRAMES = 3000
# An automatic device list leaves out a GPU with less free: the weights, a CUDA context and a useful batch.
MIN_FREE_GPU_GIB = 2.0
FULL_PRECISION = {"fp32", "float32"}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    capability: tuple[int, int]
    free_bytes: int | None  # None: not read yet (no NVML), so that no CUDA context is opened to read it
    total_bytes: int


@dataclass(frozen=True)
class MachineInfo:
    cpu_count: int
    gpus: tuple[GpuInfo, ...] = ()
    int8_faster: bool = False  # the int8 runtime is installed and the CPU has an int8 dot product

    @property
    def fingerprint(self) -> str:
        """Same machine kind: the profile measured on one applies to the other."""
        return json.dumps({"cpus": self.cpu_count, "gpus": sorted(g.name for g in self.gpus)}, sort_keys=True)

    def free_bytes(self, index: int) -> int:
        """GPU ``index``'s free memory: NVML's reading, else torch's, which opens a CUDA context on that GPU
        (and only there: it is read for the GPUs chosen)."""
        known = self.gpus[index].free_bytes
        if known is not None:
            return known
        import torch

        return torch.cuda.mem_get_info(index)[0]


@dataclass(frozen=True)
class TunedSettings:
    device: str = "cpu"
    dtype: str = "fp32"
    torch_threads: int = 1
    decode_workers: int = 1
    max_batch_frames: int = CPU_BATCH_FRAMES
    max_wait_ms: float = 5.0
    source: str = field(default="rules", compare=False)  # rules | profile | user


def probe_machine() -> MachineInfo:
    """Cores and GPUs without a CUDA context on any GPU: torch's device properties need none, and free
    memory comes from NVML (``nvidia-ml-py``) when it is importable, else later, for the GPUs chosen only.
    A context costs each GPU some 300-500 MB, on GPUs this process may never use. Without an NVIDIA driver
    torch is not imported at all: the int8 runtime runs without it."""
    from .device import nvidia_driver_present
    from .runtimes import int8_preferred

    gpus = []
    cpus = len(os.sched_getaffinity(0))
    if not nvidia_driver_present():
        return MachineInfo(cpu_count=cpus, int8_faster=int8_preferred())
    import torch

    if torch.cuda.is_available():
        memory = _nvml_memory_by_uuid()
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            free, _ = memory.get(_uuid(getattr(properties, "uuid", "")), (None, None))
            capability = (properties.major, properties.minor)
            gpus.append(GpuInfo(properties.name, capability, free, properties.total_memory))
    return MachineInfo(cpu_count=cpus, gpus=tuple(gpus), int8_faster=int8_preferred())


def _uuid(value: object) -> str:
    """NVML says GPU-<uuid>, torch <uuid>: one spelling for both (NVML ignores CUDA_VISIBLE_DEVICES and
    orders GPUs its own way, so GPUs are matched by UUID, not by index)."""
    return str(value).lower().removeprefix("gpu-")


def _nvml_memory_by_uuid() -> dict[str, tuple[int, int]]:
    """(free, total) bytes of each GPU NVML sees, by UUID; empty without nvidia-ml-py or a driver."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception:  # NVML raises its own error types when no driver is loaded
        return {}
    try:
        memory = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            memory[_uuid(pynvml.nvmlDeviceGetUUID(handle))] = (info.free, info.total)
        return memory
    except Exception:  # a GPU NVML cannot read (MIG, a fallen-off device): torch reads it later
        logger.debug("NVML could not read GPU memory", exc_info=True)
        return {}
    finally:
        pynvml.nvmlShutdown()


def auto_settings(machine: MachineInfo, device: str = "auto", dtype: str = "auto") -> TunedSettings:
    """Rules from measurements on 2- and 16-core machines, for ``device`` and ``dtype`` ("auto": chosen here).

    Every value follows the device actually chosen: ``--device cpu`` on a GPU machine gets the CPU rules,
    ``--device cuda:1`` the memory of GPU 1.

    CPU: the model needs the cores. Decoding is a few percent of the work, yet torch threads that compete
    with a busy decoder for a core run many times slower, so from 3 cores on torch leaves the decoders
    theirs. On 2 cores giving torch both still won: transcribing the shared recordings took 10.9 s with 2
    threads against 14.5 s with 1 (full model, CLI, same run). GPU: torch needs few threads, decoding gets
    most cores, and the batch grows with free memory.
    """
    gpu_index = _gpu_index(machine, device)
    if gpu_index is None:
        return _cpu_rules(machine, "cpu" if device == "auto" else device, dtype)
    return _gpu_rules(machine, gpu_index, dtype)


def _gpu_index(machine: MachineInfo, device: str) -> int | None:
    """Which of ``machine``'s GPUs ``device`` names; None for the CPU (or another non-CUDA device)."""
    if device == "auto":
        return 0 if machine.gpus else None
    kind, _, index = device.partition(":")
    index = index or "0"
    if kind != "cuda":
        return None
    if not machine.gpus:
        raise InvalidOption(
            f"device {device}: torch sees no CUDA GPU here (a CPU-only torch build, or no driver): "
            "use --device cpu or auto"
        )
    if not index.isdigit() or int(index) >= len(machine.gpus):
        raise InvalidOption(
            f"device {device}: this machine has {len(machine.gpus)} GPU(s), "
            f"cuda:0 to cuda:{len(machine.gpus) - 1}"
        )
    return int(index)


def _cpu_rules(machine: MachineInfo, device: str, dtype: str) -> TunedSettings:
    from .device import refuse_half_precision_on_cpu

    if device == "cpu":
        refuse_half_precision_on_cpu(dtype)
    cpus = max(machine.cpu_count, 1)
    decode_workers = 1 if cpus <= 4 else max(2, cpus // 4)
    return TunedSettings(
        device=device,
        # int8 where it was measured faster (runtimes.int8_preferred); bench --tune measures both
        dtype="int8" if machine.int8_faster else "fp32",
        torch_threads=cpus if cpus <= 2 else cpus - decode_workers,
        decode_workers=decode_workers,
        max_batch_frames=CPU_BATCH_FRAMES,
        max_wait_ms=5.0,
    )


def _gpu_rules(machine: MachineInfo, index: int, dtype: str) -> TunedSettings:
    gpu = machine.gpus[index]
    free = machine.free_bytes(index)
    cpus = max(machine.cpu_count, 1)
    if dtype == "auto":
        dtype = "bf16" if gpu.capability >= (8, 0) else "fp16"
    # The estimate is for half precision; fp32 activations take twice the memory.
    frames_per_gib = FRAMES_PER_FREE_GIB // 2 if dtype in FULL_PRECISION else FRAMES_PER_FREE_GIB
    return TunedSettings(
        device=f"cuda:{index}",
        dtype=dtype,
        torch_threads=min(4, cpus),
        decode_workers=max(1, cpus - min(4, cpus)),
        max_batch_frames=int(min(MAX_GPU_BATCH_FRAMES, max(2000, free / GIB * frames_per_gib))),
        max_wait_ms=10.0,
    )


def default_profile_path() -> Path:
    return Path(
        os.environ.get("SENSEVOICE_PROFILE", Path.home() / ".config" / "sensevoice-serve" / "profile.json")
    )


def save_profile(path: Path, settings: TunedSettings, machine: MachineInfo | None = None) -> Path:
    """Write ``settings`` as the profile of ``machine`` (this one by default); returns the path."""
    machine = machine or probe_machine()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in asdict(settings).items() if k != "source"}
    path.write_text(json.dumps({"machine": machine.fingerprint, "settings": values}, indent=2))
    return path


def load_profile(path: Path, machine: MachineInfo) -> TunedSettings | None:
    """The saved settings, or None when absent, unreadable, or measured on another kind of machine."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data["machine"] != machine.fingerprint:
            logger.warning("ignoring %s: it was measured on another machine (%s)", path, data["machine"])
            return None
        known = {f.name for f in fields(TunedSettings)}
        return TunedSettings(**{k: v for k, v in data["settings"].items() if k in known}, source="profile")
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable profile %s: %s", path, error)
        return None


def resolve_tuned_settings(
    explicit: dict, machine: MachineInfo | None = None, device: str | None = None
) -> TunedSettings:
    """Every explicit value the user set (None or "auto" = unset), the rest from this machine's profile,
    else from the rules, both for the device and precision chosen: the user's, else ``device`` (one of
    several GPUs picked for an automatic device), else the rules' own pick.

    A profile applies to a device of the kind it was measured on (the CPU, or a GPU of the same name) and
    to the precision it was measured in: its batch size and threads were measured for those.
    """
    machine = machine or probe_machine()
    chosen = {
        k: v
        for k, v in explicit.items()
        if v not in (None, "auto") and k in TunedSettings.__dataclass_fields__
    }
    rules = auto_settings(machine, chosen.get("device", device or "auto"), chosen.get("dtype", "auto"))
    if "device" in chosen:
        chosen["device"] = rules.device  # "cuda" spelled as the GPU it means: "cuda:0"
    profile = load_profile(default_profile_path(), machine)
    if profile is not None and not _profile_applies(profile, rules.device, chosen.get("dtype"), machine):
        logger.info("not using the profile: it was measured on %s %s", profile.device, profile.dtype)
        profile = None
    tuned = replace(profile, device=rules.device) if profile is not None else rules
    return replace(tuned, **chosen, source="user") if chosen else tuned


def _profile_applies(profile: TunedSettings, device: str, dtype: str | None, machine: MachineInfo) -> bool:
    if dtype is not None and profile.dtype != dtype:
        return False
    try:
        measured_on, target = _gpu_index(machine, profile.device), _gpu_index(machine, device)
    except InvalidOption:  # measured on a GPU this machine does not have (it has fewer now)
        return False
    if measured_on is not None and target is not None:
        return machine.gpus[measured_on].name == machine.gpus[target].name
    return measured_on is None and target is None and profile.device.split(":")[0] == device.split(":")[0]


def resolve_device_settings(
    explicit: dict, devices: str | None = None, machine: MachineInfo | None = None
) -> list[TunedSettings]:
    """The settings of each device ``serve`` runs an engine on, in order.

    ``devices`` ("cuda:0,cuda:1"; "cpu,cpu" for tests: the engines then share torch's process-wide
    threads) lists them; without it an automatic device on a machine with several GPUs means every usable
    one (a real allocation and matmul succeed, at least ``MIN_FREE_GPU_GIB`` free), else the one device.
    Threads and decode processes are the process's: the first device's values hold for all.
    """
    machine = machine or probe_machine()
    if devices is not None:
        names = [name.strip() for name in devices.split(",")]
        if not all(names):
            raise InvalidOption(f"devices {devices!r}: a comma-separated list such as cuda:0,cuda:1")
        if explicit.get("device") not in (None, "auto"):
            raise InvalidOption("set either device or devices, not both")
        return [resolve_tuned_settings({**explicit, "device": name}, machine) for name in names]
    if explicit.get("device") not in (None, "auto") or len(machine.gpus) < 2:
        return [resolve_tuned_settings(explicit, machine)]
    usable = [f"cuda:{index}" for index in range(len(machine.gpus)) if _usable_gpu(machine, index)]
    return [resolve_tuned_settings(explicit, machine, device) for device in usable or ["cpu"]]


def _usable_gpu(machine: MachineInfo, index: int) -> bool:

    from . import device

    try:
        device.probe_device(f"cuda:{index}")
    except Exception as error:  # a broken GPU must not stop the others
        logger.warning("not using cuda:%d: %s", index, error)
        return False
    free_gib = machine.free_bytes(index) / GIB
    if free_gib < MIN_FREE_GPU_GIB:
        logger.warning("not using cuda:%d: %.1f GiB free (other processes hold the rest)", index, free_gib)
        return False
    return True
