"""The FastAPI application, wired: state, middlewares, routers, lifespan. Nothing else lives
here: each route is in gateway/server/routers/, what it needs comes through deps.py.

python -m gateway            (settings from GATEWAY_* environment variables)
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from gateway import VERSION
from gateway.server.admission import Admission, LiveSessions, UploadSlots
from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import install_handlers
from gateway.server.jobs.running import running_jobs
from gateway.server.live.readers import StreamReaders
from gateway.server.openapi import install_openapi
from gateway.server.report import PdfPrinter
from gateway.server.requests import add_request_middleware
from gateway.server.reviews.keeper import purge_forever
from gateway.server.routers import (
    detect,
    health,
    jobs,
    live,
    models,
    pages,
    report,
    review_queue,
    reviews,
)
from gateway.server.security import install_access, install_cors
from gateway.server.settings import Settings
from gateway.server.tracing import install_tracing

# In the order they were always added: the OpenAPI document lists them so.
ROUTERS = (models, detect, report, health, live, jobs, reviews, review_queue, pages)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="preprocess")
    analyzer = Analyzer.from_settings(settings, executor)
    # Read by the routes through gateway/server/deps.py's typed dependencies.
    app.state.analyzer = analyzer
    app.state.executor = executor
    keeper = analyzer.keeper  # reviews on: the store, and its purge every interval
    purge = (
        None
        if keeper is None
        else asyncio.create_task(purge_forever(keeper.store, settings.reviews_purge_interval_s))
    )
    try:
        async with running_jobs(app):
            yield
    finally:
        if purge is not None:
            purge.cancel()
        if analyzer.shadow is not None:
            await analyzer.shadow.close()
        await analyzer.server.close()
        if keeper is not None:
            keeper.store.close()
        executor.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Deepfake detection gateway",
        version=VERSION,
        lifespan=lifespan,
        description="Upload a video or image; four detectors served by Triton vote on it.",
        # Served by routers/pages.py from the gateway's own files: no CDN, the page's CSP.
        docs_url=None,
        redoc_url=None,
    )
    add_state(app, settings)
    install_handlers(app)
    # Middlewares, innermost first: keys and rate limits see the request id;
    # CORS is outermost so preflights and refusals carry its headers.
    install_access(app, settings)
    add_request_middleware(app)
    install_cors(app, settings)
    for room in ROUTERS:
        app.include_router(room.router)
    pages.mount_files(app)
    install_openapi(app)
    install_tracing(app, settings)
    return app


def add_state(app: FastAPI, settings: Settings) -> None:
    """What lives as long as the app (the lifespan adds the Analyzer and the jobs)."""
    app.state.settings = settings
    # Looked for once: GET /api states it, the page hides its PDF button without it.
    app.state.pdf_printer = PdfPrinter.find(settings.chromium)
    app.state.admission = Admission(
        settings.max_in_flight, settings.max_queue, settings.queue_timeout_s
    )
    app.state.uploads = UploadSlots(settings.max_uploads)
    app.state.live_sessions = LiveSessions(
        settings.live_max_sessions, settings.live_max_sessions_per_client
    )
    app.state.stream_readers = StreamReaders(
        settings.live_stream_readers, settings.live_stream_timeout_s
    )
