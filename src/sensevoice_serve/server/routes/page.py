"""``GET /``: the web page, one self-contained HTML file (it must work with no internet)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

SERVER_PACKAGE = __package__.rpartition(".")[0]
PAGE_HTML = (resources.files(SERVER_PACKAGE) / "static" / "index.html").read_text(encoding="utf-8")

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE_HTML
