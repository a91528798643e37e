"""Probes and descriptions: ``/health``, ``/ready``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .dependencies import MetricsDep, ServiceDep

MODEL_NAME = "sensevoice-small"

router = APIRouter()


@router.get("/health")
async def health(service: ServiceDep) -> dict:
    """The process is alive (200 while the model is still loading, too)."""
    return {"status": "ok", "warm": service.warm}


@router.get("/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    """200 once warm; 503 while loading, while every admission place is taken, and while draining."""
    if service.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": service.not_ready_reason()}, status_code=503)


@router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "sensevoice-serve"}]}
