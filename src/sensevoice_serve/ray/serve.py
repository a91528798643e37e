"""The HTTP server as a Ray Serve application: each replica is what ``sensevoice serve`` runs in one process
(the app of ``create_app``: one engine, its scheduler, its decode processes), behind Ray's proxy.

Cross-request batching stays inside each replica, in its scheduler; Ray routes requests to replicas,
restarts a replica that dies and scales their number (``autoscaling_config`` in a Serve config). A replica
gets requests only once its model is warm: Serve's first health check, which a new replica must pass
before it is routed to, waits for that.

``serve run sensevoice_serve.ray:app`` (settings from SENSEVOICE_* variables) or a Serve config's
``import_path: sensevoice_serve.ray:build_app`` with ``args`` (settings by name) deploy it on a cluster;
``sensevoice serve --ray`` does both for you.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from ..server.app import create_app
from ..server.service import Service, State
from ..settings import Settings, load_settings
from .resources import EnginePlan, engine_settings, plan_replicas

APP_NAME = "sensevoice"
DEPLOYMENT_NAME = "SenseVoice"
LOAD_POLL_SECONDS = 0.2
# A model that does not load fails the same way each time: a few tries, not Serve's default of 20.
CONSTRUCTOR_RETRIES = 3


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class SenseVoiceReplica:
    """One engine and its scheduler, serving the same HTTP API as ``sensevoice serve``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        _log_to_stderr()  # Ray passes a replica's stderr on to the driver: the operator sees it become ready
        _bind_replica_server_to_node_address()
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        # The lifespan (which Serve runs after __serve_build_asgi_app__) loads the model in the background.
        self._app = create_app(engine_settings(Settings(**settings), cpus))
        self._service: Service = self._app.state.service

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    async def check_health(self) -> None:
        """Serve's health check. A new replica is routed to only after passing it, so it waits for the model
        to be warm; a model that failed to load fails it (and Serve tries another replica)."""
        while self._service.state is State.LOADING:
            await asyncio.sleep(LOAD_POLL_SECONDS)
        if self._service.state is State.FAILED:
            raise RuntimeError(f"the model failed to load: {self._service.load_error}")


def _bind_replica_server_to_node_address() -> None:
    """Ray Serve 2.60 binds each replica's inter-deployment gRPC server, which takes requests into the
    replica, to every interface ("[::]:0", written into ``ray.serve._private.replica``), though its callers
    reach it at the node's address. Bound to that address instead: loopback on a local cluster, so nothing
    of it faces the network. Runs in the replica's constructor, before Serve starts that server."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def bind_to_node(server: Any, address: str) -> int:
        return bind(server, address.replace("[::]", host, 1) if address.startswith("[::]:") else address)

    replica.add_port_to_grpc_server = bind_to_node


def _log_to_stderr() -> None:
    package = logging.getLogger("sensevoice_serve")
    package.setLevel(logging.INFO)
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        package.addHandler(handler)


def application(settings: Settings, plan: EnginePlan) -> Application:
    """The Serve application for ``settings``, with ``plan``'s replicas."""
    return SenseVoiceReplica.options(
        num_replicas=plan.count,
        ray_actor_options={"num_cpus": plan.cpus, "num_gpus": plan.gpus},
        # The replica's own admission (max_queue, 503 + Retry-After) decides; Ray's router queues no more
        # than that many either, so a full cluster answers 503 instead of queueing without bound.
        max_ongoing_requests=settings.max_queue,
        max_queued_requests=settings.max_queue,
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        # A replica being replaced finishes what it was given, as a drained server does.
        graceful_shutdown_timeout_s=settings.request_timeout_seconds,
    ).bind(settings.model_dump())


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: settings from ``args`` (by name, as in Settings) over SENSEVOICE_*
    variables; replicas from the cluster's GPUs and cores when connected, else this machine's."""
    settings = load_settings(**args)
    cpus, gpus = _visible_resources()
    return application(settings, plan_replicas(settings, cpus, gpus))


def _visible_resources() -> tuple[float, float]:
    if ray.is_initialized():
        resources = ray.cluster_resources()
        return resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    import torch

    return float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count())
