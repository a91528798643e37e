"""What routes receive from the app: the ``Service`` and ``Metrics`` kept in its state by ``create_app``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..metrics import Metrics
from ..service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServiceDep = Annotated[Service, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
