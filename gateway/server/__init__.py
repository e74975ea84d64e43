"""The service: everything `python -m gateway` runs, and nothing else. Rooms, top to bottom
(pyproject.toml [tool.importlinter]): app, routers, deps, live | jobs | report, analysis,
verdict, then the parts every room uses (settings, errors, schemas, metrics, tracing...)."""

# What the programs and the clients use of the server, imported from here (gateway.server), so
# that a move inside the server changes this list and nothing outside it.
from gateway.server import metrics, schemas
from gateway.server.analysis.analysis import Analyzer
from gateway.server.app import create_app
from gateway.server.errors import ApiError, from_media_error
from gateway.server.jobs.engine import ItemRunner, Jobs, WorkerPool, webhook_secret_for_key
from gateway.server.options import new_request_id, options_for
from gateway.server.report import ReportError, find_chromium, print_pdf, render_html
from gateway.server.security import key_id
from gateway.server.serve import check_access, configure_logging
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import Strategy, TrackScore, decisive_track, vote

__all__ = [
    "Analyzer",
    "ApiError",
    "ItemRunner",
    "Jobs",
    "ReportError",
    "Settings",
    "Strategy",
    "TrackScore",
    "WorkerPool",
    "check_access",
    "configure_logging",
    "create_app",
    "decisive_track",
    "find_chromium",
    "from_media_error",
    "key_id",
    "metrics",
    "new_request_id",
    "options_for",
    "print_pdf",
    "render_html",
    "schemas",
    "vote",
    "webhook_secret_for_key",
]
