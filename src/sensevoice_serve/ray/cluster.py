"""The Ray cluster a command runs on: the one at ``ray_address`` when given, else a local one started here
and stopped on the way out. Either way nothing of Ray outlives the command but what was there before.

Ray reads part of its configuration from environment variables when it is imported, and its processes
inherit them, so they are set before the first ``import ray`` (this module imports it only then):

- ``RAY_USAGE_STATS_ENABLED=0``: no usage report. Collecting it also asks the cloud metadata addresses which
  cloud this is, requests that wait out their timeouts on a machine without internet.
- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, for a local cluster only: Ray then takes loopback as the node's
  address, as it does on a laptop, and its servers (GCS, raylet, workers, agents) listen on 127.0.0.1.
  Otherwise they listen on the machine's network address, reachable from other machines. A cluster that
  spans machines is started with ``ray start`` and joined with ``--ray-address``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOption
from ..settings import Settings

logger = logging.getLogger(__name__)

MB = 1024 * 1024
SAFE_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0"}
LOCAL_ONLY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
EXIT_WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class Cluster:
    """What a command needs to know of the cluster it runs on."""

    cpus: float
    gpus: float
    local: bool  # started by this command (and stopped with it)


def ray_missing_error() -> InvalidOption:
    return InvalidOption("--ray needs Ray: pip install 'sensevoice-serve[ray]' (or -e '.[ray]')")


@contextmanager
def ray_cluster(settings: Settings) -> Iterator[Cluster]:
    """Join ``settings.ray_address`` or start a local cluster; at the end leave it, or stop the local one
    (every process below this one, which is the command's: nothing else may run below it)."""
    local = not settings.ray_address
    os.environ.update(SAFE_ENVIRONMENT)
    if local:
        os.environ.update(LOCAL_ONLY_ENVIRONMENT)
    try:
        import ray
    except ImportError:
        raise ray_missing_error() from None
    if local:
        ray.init(
            num_cpus=len(os.sched_getaffinity(0)),
            object_store_memory=settings.ray_object_store_mb * MB,
            include_dashboard=settings.ray_dashboard,
            dashboard_host="127.0.0.1",
        )
    else:
        ray.init(address=settings.ray_address)
    try:
        resources = ray.cluster_resources()
        cluster = Cluster(resources.get("CPU", 0.0), resources.get("GPU", 0.0), local)
        logger.info(
            "Ray cluster %s: %g CPUs, %g GPUs",
            "started on loopback" if local else f"at {settings.ray_address}", cluster.cpus, cluster.gpus,
        )  # fmt: skip
        yield cluster
    finally:
        started = _descendants(os.getpid()) if local else set()
        ray.shutdown()  # a joined cluster is only left
        _end(started)


def _descendants(root: int) -> set[int]:
    """Every live process below ``root``: a local cluster's daemons, their workers and what those started."""
    children: dict[int, list[int]] = {}
    for pid, parent in _live_processes().items():
        children.setdefault(parent, []).append(pid)
    found, pending = set(), [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def _end(pids: set[int]) -> None:
    """End what is left of a local cluster: ``ray.shutdown`` stops its daemons, and its workers would leave a
    few seconds later, once they notice. They are asked to go now (SIGTERM), and killed if still there after
    ``EXIT_WAIT_SECONDS``: the command ends with nothing of its cluster left behind."""
    _signal(pids & _live_processes().keys(), signal.SIGTERM)
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    while (left := pids & _live_processes().keys()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        logger.warning("Ray processes %s still running after shutdown: killed", sorted(left))
        _signal(left, signal.SIGKILL)


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _live_processes() -> dict[int, int]:
    """pid -> parent pid of every process but zombies (exited, waiting for their parent to collect them)."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue  # gone meanwhile
            if state != "Z":
                processes[int(entry.name)] = int(parent)
    return processes
