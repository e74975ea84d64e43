"""Typed FastAPI dependencies for what the app's lifespan and create_app build
once (app.state): routes declare `analyzer: AnalyzerDep` or `settings: SettingsDep` instead
of reading untyped `request.app.state.*` or closing over them, so the routers are plain
module-level objects. HTTPConnection, so WebSocket routes use them too."""

from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Annotated

from fastapi import Depends, Query
from starlette.requests import HTTPConnection

from gateway.server.admission import Admission, Holding, LiveSessions, UploadSlots
from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError
from gateway.server.jobs.engine import Jobs
from gateway.server.live.readers import StreamReaders
from gateway.server.model_server import ModelServer
from gateway.server.report import PdfPrinter
from gateway.server.reviews.store import ReviewStore
from gateway.server.security import tenant_of
from gateway.server.settings import Settings


def get_settings(connection: HTTPConnection) -> Settings:
    return connection.app.state.settings


def get_analyzer(connection: HTTPConnection) -> Analyzer:
    return connection.app.state.analyzer


def get_server(connection: HTTPConnection) -> ModelServer:
    return connection.app.state.analyzer.server


def get_executor(connection: HTTPConnection) -> Executor:
    return connection.app.state.executor


def get_admission(connection: HTTPConnection) -> Admission:
    return connection.app.state.admission


def get_uploads(connection: HTTPConnection) -> UploadSlots:
    return connection.app.state.uploads


def get_jobs(connection: HTTPConnection) -> Jobs:
    jobs = connection.app.state.jobs
    if jobs is None:  # GATEWAY_JOBS_ENABLED=false: the lifespan built no queue
        raise ApiError("jobs_disabled", "jobs are off on this server (GATEWAY_JOBS_ENABLED)")
    return jobs


def get_pdf_printer(connection: HTTPConnection) -> PdfPrinter:
    return connection.app.state.pdf_printer


def get_reviews(connection: HTTPConnection) -> ReviewStore:
    keeper = connection.app.state.analyzer.keeper
    if keeper is None:  # GATEWAY_REVIEWS_ENABLED=false: no store was opened
        raise ApiError(
            "reviews_disabled", "reviews are off on this server (GATEWAY_REVIEWS_ENABLED)"
        )
    return keeper.store


def get_live_sessions(connection: HTTPConnection) -> LiveSessions:
    return connection.app.state.live_sessions


def get_stream_readers(connection: HTTPConnection) -> StreamReaders:
    return connection.app.state.stream_readers


async def holding() -> AsyncIterator[Holding]:
    """A request's places and files, given back when this dependency ends. Async: a bound's
    `leave` runs on the event loop (the admission's semaphore is not thread-safe)."""
    held = Holding()
    try:
        yield held
    finally:
        held.give_back()


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_owner(connection: HTTPConnection, settings: SettingsDep) -> str:
    """Whose jobs and reviews the request reaches: its key's non-reversible id, or one tenant
    for all without keys (security.tenant_of)."""
    return tenant_of(connection.headers, settings.api_keys)


OwnerDep = Annotated[str, Depends(get_owner)]
# A page of a caller's jobs or reviews: SQLite, PostgreSQL and Redis take 64-bit offsets, so
# a larger one is a 422, not a 500. The route gives the defaults (offset 0, limit 20).
MAX_OFFSET = 10**9
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
PageLimit = Annotated[int, Query(ge=1, le=100)]
AnalyzerDep = Annotated[Analyzer, Depends(get_analyzer)]
ServerDep = Annotated[ModelServer, Depends(get_server)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
UploadsDep = Annotated[UploadSlots, Depends(get_uploads)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
PdfPrinterDep = Annotated[PdfPrinter, Depends(get_pdf_printer)]
ReviewsDep = Annotated[ReviewStore, Depends(get_reviews)]
LiveSessionsDep = Annotated[LiveSessions, Depends(get_live_sessions)]
StreamReadersDep = Annotated[StreamReaders, Depends(get_stream_readers)]
# Given back as the route returns (before the answer is sent: the next request of the same
# client finds the place free), or, for a streamed answer, once all of it is sent (FastAPI
# runs a yield dependency's exit after the response unless its scope is "function").
HeldUntilReturn = Annotated[Holding, Depends(holding, scope="function")]
HeldUntilSent = Annotated[Holding, Depends(holding)]
