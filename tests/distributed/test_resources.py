"""How many engine copies a cluster gets and what each reserves, for Serve replicas and Ray Data actors."""

from __future__ import annotations

import pytest

from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.ray.resources import EnginePlan, engine_settings, plan_actors, plan_replicas
from sensevoice_serve.settings import Settings


def test_serve_gets_a_replica_per_gpu_with_its_share_of_the_cores() -> None:
    assert plan_replicas(Settings(), 960, 80) == EnginePlan(count=80, cpus=12, gpus=1)
    assert plan_replicas(Settings(replicas=4), 96, 8) == EnginePlan(count=4, cpus=12, gpus=1)


def test_serve_on_cpus_shares_the_cores_among_the_replicas() -> None:
    assert plan_replicas(Settings(), 2, 0) == EnginePlan(count=1, cpus=2, gpus=0)
    assert plan_replicas(Settings(replicas=2), 2, 0) == EnginePlan(count=2, cpus=1, gpus=0)
    assert plan_replicas(Settings(device="cpu"), 16, 8) == EnginePlan(count=1, cpus=16, gpus=0)
    assert plan_replicas(Settings(replicas=3, ray_cpus_per_replica=2), 16, 0).cpus == 2


def test_data_actors_leave_the_cores_to_decoding() -> None:
    assert plan_actors(Settings(), 960, 80) == EnginePlan(count=80, cpus=2, gpus=1)
    assert plan_actors(Settings(), 2, 0) == EnginePlan(count=1, cpus=1, gpus=0)
    assert plan_actors(Settings(), 16, 0) == EnginePlan(count=1, cpus=15, gpus=0)


def test_a_gpu_asked_of_a_cluster_without_one_is_refused() -> None:
    with pytest.raises(InvalidOption, match="no GPU"):
        plan_replicas(Settings(device="cuda"), 8, 0)


def test_an_engine_copy_tunes_threads_for_its_share_of_the_cores() -> None:
    share = engine_settings(Settings(device="cpu"), cpus=1)
    assert (share.torch_threads, share.decode_workers) == (1, 1)
    assert engine_settings(Settings(device="cpu", torch_threads=3), cpus=1).torch_threads == 3
