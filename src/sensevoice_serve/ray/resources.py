"""How many engine copies a cluster holds and what each reserves; the settings an engine runs with there.

An engine copy (a Serve replica, a Ray Data actor) holds one model: one GPU when it uses one, else a share
of the cores. Inside it, torch threads and decode processes are tuned for that share, not for the whole
machine, which other copies share.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import InvalidOption
from ..settings import Settings
from ..tuning import TunedSettings

# Ray Data: a GPU actor's torch threads (feature extraction, CTC decoding); the rest decode audio.
GPU_ACTOR_CPUS = 2.0
# Ray Data: cores a CPU actor leaves to the decoding tasks.
DECODING_CPUS = 1


@dataclass(frozen=True)
class EnginePlan:
    count: int
    cpus: float  # per copy
    gpus: int  # per copy: 0 or 1


def uses_gpu(settings: Settings, cluster_gpus: float) -> bool:
    if settings.device == "cpu":
        return False
    if settings.device.startswith("cuda"):
        if cluster_gpus < 1:
            raise InvalidOption(f"--device {settings.device}: the Ray cluster has no GPU")
        return True
    return cluster_gpus >= 1


def plan_replicas(settings: Settings, cluster_cpus: float, cluster_gpus: float) -> EnginePlan:
    """Serve: one replica per GPU, else one; each decodes its own uploads, so it takes its GPU's share of
    the cores, or all of them over the replicas."""
    gpu = uses_gpu(settings, cluster_gpus)
    count = _count(settings, cluster_gpus, gpu)
    sharing = max(count, cluster_gpus) if gpu else count
    cpus = settings.ray_cpus_per_replica or max(1.0, math.floor(cluster_cpus / sharing))
    return EnginePlan(count=count, cpus=cpus, gpus=int(gpu))


def plan_actors(settings: Settings, cluster_cpus: float, cluster_gpus: float) -> EnginePlan:
    """Ray Data: one actor per GPU, else one; decoding runs in tasks of its own, so a GPU actor takes only
    the cores its torch threads need, and CPU actors leave one core to the decoding tasks."""
    gpu = uses_gpu(settings, cluster_gpus)
    count = _count(settings, cluster_gpus, gpu)
    share = GPU_ACTOR_CPUS if gpu else math.floor((cluster_cpus - DECODING_CPUS) / count)
    return EnginePlan(count=count, cpus=settings.ray_cpus_per_replica or max(1.0, share), gpus=int(gpu))


def _count(settings: Settings, cluster_gpus: float, gpu: bool) -> int:
    return settings.replicas or (max(1, math.floor(cluster_gpus)) if gpu else 1)


def engine_settings(settings: Settings, cpus: float) -> Settings:
    """``settings`` for an engine copy that holds ``cpus`` cores: torch threads and decode processes for that
    share (unless set explicitly), device, precision and batching for the GPU it was given, if any."""
    from ..tuning import probe_machine, resolve_tuned_settings

    machine = dataclasses.replace(probe_machine(), cpu_count=max(1, math.floor(cpus)))
    names = ("device", "dtype", "torch_threads", "decode_workers", "max_batch_frames", "max_wait_ms")
    tuned = resolve_tuned_settings({name: getattr(settings, name) for name in names}, machine)
    return settings.model_copy(
        update={"torch_threads": tuned.torch_threads, "decode_workers": tuned.decode_workers}
    )


def engine_tuned(settings: Settings, plan: EnginePlan, local: bool) -> TunedSettings:
    """The device and precision the engines will run with. On a local cluster they run on this machine; on
    another, a Ray worker that holds what an engine holds is asked (the kind of GPU decides the precision,
    and this machine may have none)."""
    if local:
        return engine_settings(settings, plan.cpus).tuned()
    import ray

    probe = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus)(_tuned_here)
    return ray.get(probe.remote(settings.model_dump()))


def _tuned_here(settings: dict) -> TunedSettings:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return engine_settings(Settings(**settings), cpus).tuned()
