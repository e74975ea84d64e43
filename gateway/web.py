"""The web page: static files served by the gateway itself, no front-end server."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def install_web(app: FastAPI) -> None:
    """Serve gateway/static at "/" (index.html for "/"); mounted after the API
    routes, so /api, /healthz, /metrics and /docs keep precedence."""
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
