"""POST /api/detect (one answer) and POST /api/detect/stream (NDJSON progress, then the answer):
an upload received, sniffed, admitted and analysed."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.server import schemas
from gateway.server.admission import UploadSlots
from gateway.server.analysis.analysis import Analyzer
from gateway.server.analysis.queries import DetectQuery
from gateway.server.deps import (
    AdmissionDep,
    AnalyzerDep,
    HeldUntilReturn,
    HeldUntilSent,
    SettingsDep,
    UploadsDep,
    get_owner,
)
from gateway.server.errors import ApiError, error_response, from_media_error
from gateway.server.media_urls import MediaUrl, media_policy, receive_media
from gateway.server.ndjson import line
from gateway.server.openapi import ANALYSIS_ERRORS, UPLOAD_ERRORS, errors_doc, upload_doc
from gateway.server.options import Options, options_for
from gateway.server.settings import Settings
from gateway.server.uploads import Form, Pace, TempFiles, Upload
from preprocess.media import MediaError, sniff

log = logging.getLogger("gateway")
router = APIRouter()
UPLOAD_DOC = upload_doc(MediaUrl)
ERRORS_DOC = errors_doc(*UPLOAD_ERRORS, *ANALYSIS_ERRORS)


async def accept_upload(request: Request, settings: Settings, uploads: UploadSlots) -> Upload:
    """The upload (or the file its JSON body's URL names, fetched) on disk, its content
    sniffed: only real media goes further. Receiving holds an upload slot, never an analysis
    slot: a slow client, or a slow source, cannot hold up the analyses."""
    async with uploads.held():
        (upload,) = await receive_media(
            request.stream(),
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            Form(settings.max_upload_bytes),
            TempFiles(settings.tmp_dir),
            Pace(
                settings.upload_timeout_s, settings.upload_min_bytes_per_s, settings.upload_grace_s
            ),
            MediaUrl,
            media_policy(settings),
        )
    try:
        await asyncio.get_running_loop().run_in_executor(None, sniff, upload.path)
    except MediaError as exc:
        upload.path.unlink(missing_ok=True)
        raise from_media_error(exc) from None
    return upload


def options(request: Request, upload: Upload, query: DetectQuery, settings: Settings) -> Options:
    """The analysis's options: the query's, the upload's facts, the request id."""
    return options_for(
        settings,
        **query.options(),
        filename=upload.filename,
        size=upload.size,
        sha256=upload.sha256,
        request_id=request.state.request_id,
        upload_ms=upload.seconds * 1000,
        owner=get_owner(request, settings),
    )


@router.post(
    "/api/detect",
    response_model=schemas.DetectAnswer,
    responses=ERRORS_DOC,
    openapi_extra=UPLOAD_DOC,
)
async def detect(
    request: Request,
    query: Annotated[DetectQuery, Depends()],
    analyzer: AnalyzerDep,
    admission: AdmissionDep,
    uploads: UploadsDep,
    settings: SettingsDep,
    held: HeldUntilReturn,
) -> schemas.DetectAnswer | Response:
    upload = await accept_upload(request, settings, uploads)
    held.later(lambda: upload.path.unlink(missing_ok=True))
    await held.take(admission)  # given back as the route returns: its threads have returned
    opts = options(request, upload, query, settings)
    analysis = asyncio.create_task(analyzer.analyze(upload.path, opts))
    async with cancelled_on_disconnect(request, analysis) as watch:
        try:
            answer = await analysis
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            # Nobody reads it: the status is for the log and the metrics.
            return error_response(CLIENT_GONE)
    return answer


@router.post(
    "/api/detect/stream",
    responses=ERRORS_DOC,
    openapi_extra=UPLOAD_DOC,
    response_class=StreamingResponse,
    description="NDJSON events: accepted, decoded, faces, inference (progress), then "
    "result (the /api/detect answer) or error.",
)
async def detect_stream(
    request: Request,
    query: Annotated[DetectQuery, Depends()],
    analyzer: AnalyzerDep,
    admission: AdmissionDep,
    uploads: UploadsDep,
    settings: SettingsDep,
    held: HeldUntilSent,
) -> StreamingResponse:
    upload = await accept_upload(request, settings, uploads)
    held.later(lambda: upload.path.unlink(missing_ok=True))
    # Given back once the whole stream is sent, after AnalysisStream has seen the analysis's
    # threads return.
    await held.take(admission)
    opts = options(request, upload, query, settings)
    events = stream_analysis(analyzer, upload, opts)
    return AnalysisStream(events, media_type="application/x-ndjson")


CLIENT_GONE = ApiError("client_closed_request", "the client went away")


class DisconnectWatch:
    """Set once the client is gone; cancels the analysis then."""

    def __init__(self) -> None:
        self.gone = False


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(
    request: Request, task: asyncio.Task
) -> AsyncIterator[DisconnectWatch]:
    """Cancels `task` if the client disconnects meanwhile: FastAPI would let an answer
    nobody waits for run to its end, holding a slot and the CPU."""
    watch = DisconnectWatch()

    async def listen() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # what is left of the body after the file (other form fields)
        watch.gone = True
        task.cancel()

    listener = asyncio.create_task(listen())
    try:
        yield watch
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


class AnalysisStream(StreamingResponse):
    """The NDJSON stream, whose cleanup runs even if its generator never started (the
    client gone right after the upload): a generator's own `finally` would not. Its slot
    and file are the route's `held`, given back after this returns."""

    def __init__(self, events: AsyncIterator[bytes], **kwargs: object) -> None:
        super().__init__(events, **kwargs)  # type: ignore[arg-type]
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                # Runs the generator's cleanup (its analysis stopped, threads finished), if
                # it started; only then the slot is free.
                await self.events.aclose()  # type: ignore[attr-defined]


async def stream_analysis(
    analyzer: Analyzer, upload: Upload, options: Options
) -> AsyncIterator[bytes]:
    """The analysis as NDJSON lines; errors after the stream began are events."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue()

    async def emit(event: dict) -> None:
        await queue.put(event)

    async def run() -> None:
        try:
            answer = await analyzer.analyze(upload.path, options, emit)
            await queue.put({"event": "result", "result": answer.model_dump()})
        except (ApiError, MediaError) as exc:
            error = from_media_error(exc) if isinstance(exc, MediaError) else exc
            await queue.put({"event": "error", "status": error.status, **error.body()})
        except Exception:
            log.exception("analysis failed", extra={"request_id": options.request_id})
            await queue.put(
                {
                    "event": "error",
                    "status": 500,
                    "error": {"code": "internal_error", "message": "the analysis failed"},
                }
            )
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    try:
        yield line(
            {
                "event": "accepted",
                "request_id": options.request_id,
                "filename": options.filename,
                "bytes": upload.size,
            }
        )
        while (event := await queue.get()) is not None:
            yield line(event)
    finally:
        task.cancel()
        # Shielded: the client is gone and this scope cancelled, but the analysis's threads
        # must have returned before its slot is released.
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await task
