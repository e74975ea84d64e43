"""The FastAPI application: HTTP in, Triton out.

python -m gateway            (settings from GATEWAY_* environment variables)
"""

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from gateway.server import metrics, schemas
from gateway.server.admission import Admission
from gateway.server.analysis.analysis import Analyzer
from gateway.server.analysis.queries import DetectQuery
from gateway.server.deps import AdmissionDep, AnalyzerDep, ExecutorDep, ServerDep, UploadsDep
from gateway.server.errors import ApiError, error_response, from_media_error, install_handlers
from gateway.server.jobs.api import router as jobs_router
from gateway.server.jobs.api import running_jobs
from gateway.server.live.session import live_router
from gateway.server.openapi import errors_doc, install_openapi, upload_doc
from gateway.server.options import Options, new_request_id, options_for
from gateway.server.report import (
    AnswerError,
    ReportError,
    ReportLimits,
    check_answer,
    check_size,
    find_chromium,
    print_pdf,
    render_html,
)
from gateway.server.security import install_access, install_cors, peer
from gateway.server.settings import Settings
from gateway.server.tracing import bind_request, install_tracing
from gateway.server.uploads import Upload, UploadSlots, receive_upload
from gateway.server.verdict.selection import model_summary
from gateway.server.web import install_docs, install_web
from preprocess.media import FORMATS, MediaError, sniff

VERSION = "0.3.0"
log = logging.getLogger("gateway")

UPLOAD_DOC = upload_doc()


MODEL_SERVER_ERRORS = {
    502: "Triton failed",
    503: "Triton or the ensemble unavailable (see Retry-After)",
    504: "Triton did not answer in time",
}
ERRORS_DOC = errors_doc(
    {
        400: "a malformed multipart body or Content-Length",
        408: "upload too slow (below the minimum rate, or past the deadline)",
        413: "file over the upload cap",
        415: "not a supported video or image",
        422: "undecodable media, bad options or media over the limits (size, decoded "
        "pixels, faces)",
        429: "too many requests in flight, or uploads being received (see Retry-After)",
    }
    | MODEL_SERVER_ERRORS
    | {504: "Triton did not answer in time, or the analysis passed its deadline"}
)
REPORT_ERRORS_DOC = errors_doc(
    {
        413: "the answer over GATEWAY_REPORT_MAX_MB",
        422: "not a detect answer, a bad format, references the answer lacks "
        "(invalid_report), or over the report's limits (report_over_limits)",
        429: "too many reports or analyses at once (see Retry-After)",
        503: "no Chromium to print the PDF",
    }
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="preprocess")
        analyzer = Analyzer.from_settings(settings, executor)
        # Read by the routes through gateway/server/deps.py's typed dependencies.
        app.state.analyzer = analyzer
        app.state.executor = executor
        try:
            async with running_jobs(app):
                yield
        finally:
            await analyzer.server.close()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="Deepfake detection gateway",
        version=VERSION,
        lifespan=lifespan,
        description="Upload a video or image; four detectors served by Triton vote on it.",
        # Served by install_docs from the gateway's own files: no CDN, the page's CSP.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.admission = Admission(
        settings.max_in_flight, settings.max_queue, settings.queue_timeout_s
    )
    app.state.uploads = UploadSlots(settings.max_uploads)
    install_handlers(app)
    # Middlewares, innermost first: keys and rate limits see the request id;
    # CORS is outermost so preflights and refusals carry its headers.
    install_access(app, settings)
    add_request_middleware(app)
    install_cors(app, settings)
    add_routes(app, settings)
    app.include_router(live_router(settings))
    app.include_router(jobs_router(settings))
    install_web(app)
    install_docs(app)
    install_openapi(app)
    install_tracing(app, settings)
    return app


def add_request_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_context(request: Request, call_next):
        request_id = request.headers.get("x-request-id", "")
        if not (request_id.isalnum() and len(request_id) <= 64):
            request_id = new_request_id()
        request.state.request_id = request_id
        bind_request(request_id)
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = metrics.method_label(request.method)
        metrics.REQUESTS.labels(path, method, str(response.status_code)).inc()
        # Never the file name, the temp path or the body: only what identifies the request.
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": method,
                "route": path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - start) * 1000, 1),
                # The key's name, else the peer (X-Forwarded-For's only from a trusted proxy).
                "client": request.scope.get("state", {}).get("client") or peer(request.scope),
            },
        )
        return response


async def accept_upload(request: Request, settings: Settings, uploads: UploadSlots) -> Upload:
    """The upload on disk, its content sniffed: only real media goes further. Receiving holds
    an upload slot, never an analysis slot: a slow client cannot hold up the analyses."""
    async with uploads.held():
        upload = await receive_upload(
            request.stream(),
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            settings.max_upload_bytes,
            settings.tmp_dir,
            settings.upload_timeout_s,
            settings.upload_min_bytes_per_s,
            settings.upload_grace_s,
        )
    try:
        await asyncio.get_running_loop().run_in_executor(None, sniff, upload.path)
    except MediaError as exc:
        upload.path.unlink(missing_ok=True)
        raise from_media_error(exc) from None
    return upload


def add_routes(app: FastAPI, settings: Settings) -> None:
    def options(request: Request, upload: Upload, query: DetectQuery) -> Options:
        return options_for(
            settings,
            **query.options(),
            filename=upload.filename,
            size=upload.size,
            sha256=upload.sha256,
            request_id=request.state.request_id,
            upload_ms=upload.seconds * 1000,
        )

    @app.get("/api", response_model=schemas.ServiceInfo)
    async def info(server: ServerDep) -> schemas.ServiceInfo:
        ready = await server.ready()
        profile = None
        if ready:
            with contextlib.suppress(ApiError):
                profile = (await server.ensemble()).profile
        return schemas.ServiceInfo(
            service="deepfake-detection gateway",
            version=VERSION,
            status="ready" if ready else "unavailable",
            triton_url=settings.triton_url,
            ensemble=settings.ensemble,
            profile=profile,
            detector=settings.detector,
            frames=settings.frames,
            threshold=settings.threshold,
            max_upload_mb=settings.max_upload_mb,
            formats=list(FORMATS),
            endpoints={
                "detect": "POST /api/detect",
                "stream": "POST /api/detect/stream",
                "jobs": "POST /api/jobs",
                "models": "GET /api/models",
                "live": "WebSocket /api/live, POST /api/live",
                "report": "POST /api/report",
                "health": "GET /healthz",
                "ready": "GET /readyz",
                "metrics": "GET /metrics",
                "docs": "GET /docs",
            },
        )

    @app.get(
        "/api/models",
        response_model=schemas.ModelsAnswer,
        responses=errors_doc(MODEL_SERVER_ERRORS),
    )
    async def models(server: ServerDep) -> schemas.ModelsAnswer:
        ensemble = await server.ensemble(fresh=True)
        return schemas.ModelsAnswer(
            ensemble=ensemble.name,
            profile=ensemble.profile,
            vote_rule=ensemble.rule,
            ready=ensemble.ready,
            models=[model_summary(m) for m in ensemble.members],
        )

    @app.post(
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
    ) -> schemas.DetectAnswer | Response:
        upload = await accept_upload(request, settings, uploads)
        try:
            await admission.enter()
            try:
                opts = options(request, upload, query)
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
            finally:
                admission.leave()  # only now: the analysis's threads have all returned
        finally:
            upload.path.unlink(missing_ok=True)

    @app.post(
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
    ) -> StreamingResponse:
        upload = await accept_upload(request, settings, uploads)
        try:
            await admission.enter()
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        release = Release(upload, admission)
        opts = options(request, upload, query)
        events = stream_analysis(analyzer, upload, opts)
        return AnalysisStream(events, release, media_type="application/x-ndjson")

    @app.post(
        "/api/report",
        responses=REPORT_ERRORS_DOC,
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DetectAnswer"}}
                },
            }
        },
        description="A detect answer (JSON, as /api/detect returned it) as a self-contained "
        "HTML report, or a PDF printed by headless Chromium where the gateway has one.",
    )
    async def report(
        request: Request,
        admission: AdmissionDep,
        executor: ExecutorDep,
        format: Annotated[Literal["html", "pdf"], Query(description="html or pdf")] = "html",
    ) -> Response:
        body = await read_body(request, settings.report_max_mb << 20)
        limits = ReportLimits(
            settings.report_max_values, int(settings.report_max_image_mpx * 1_000_000)
        )
        chromium = find_chromium(settings.chromium) if format == "pdf" else None
        # Parsing, checking, rendering and printing: CPU work on a worker thread (never the
        # event loop), bounded like an analysis by the same admission.
        await admission.enter()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                executor, make_report, body, format, limits, chromium
            )
            try:
                name, content = await asyncio.shield(future)
            finally:
                # The client gone: the slot is free only once the thread has returned.
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({future})
        finally:
            admission.leave()
        media_type = "text/html; charset=utf-8" if format == "html" else "application/pdf"
        return Response(
            content,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}.{format}"'},
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        responses=errors_doc({503: "Triton or the ensemble is not ready (see Retry-After)"}),
    )
    async def readyz(server: ServerDep) -> JSONResponse:
        ready = await server.ready()
        if not ready:
            error = ApiError(503, "not_ready", f"Triton or {settings.ensemble} is not ready")
            return JSONResponse(error.body(), status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


CLIENT_GONE = ApiError(499, "client_closed_request", "the client went away")


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


@dataclass
class Release:
    """A streamed request's slot and temp file, released once, whichever way it ends."""

    upload: Upload
    admission: Admission
    done: bool = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            Path(self.upload.path).unlink(missing_ok=True)
            self.admission.leave()


class AnalysisStream(StreamingResponse):
    """The NDJSON stream, whose cleanup runs even if its generator never started (the
    client gone right after the upload): a generator's own `finally` would not."""

    def __init__(self, events: AsyncIterator[bytes], release: Release, **kwargs: object) -> None:
        super().__init__(events, **kwargs)  # type: ignore[arg-type]
        self.events = events
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                # Runs the generator's cleanup (its analysis stopped, threads finished), if
                # it started; only then the slot is free.
                await self.events.aclose()  # type: ignore[attr-defined]
                self.release()


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


async def read_body(request: Request, cap: int) -> bytes:
    """The posted answer's bytes, read no further than the cap."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError(413, "report_too_large", f"the answer is larger than {cap >> 20} MB")
    return bytes(body)


def parse_answer(body: bytes) -> schemas.DetectAnswer:
    """The answer checked against the schema."""
    try:
        # Strict: numbers as numbers, as /api/detect wrote them (the schema says so).
        return schemas.DetectAnswer.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise ApiError(
            422,
            "invalid_answer",
            f"not a detect answer: {exc.error_count()} error(s), "
            f"first: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}",
        ) from None


def make_report(
    body: bytes, format: str, limits: ReportLimits, chromium: str | None
) -> tuple[str, str | bytes]:
    """The report's file name and its HTML or PDF (on a worker thread: it is CPU work)."""
    try:
        check_size(body, limits)
        answer = parse_answer(body)
        check_answer(answer, limits)
    except AnswerError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    html = render_html(answer, VERSION, datetime.now(UTC))
    if format == "html":
        return report_name(answer.filename), html
    try:
        return report_name(answer.filename), print_pdf(html, chromium)
    except ReportError as exc:
        raise ApiError(503, "pdf_unavailable", str(exc)) from None


def report_name(filename: str) -> str:
    """The download's name: the file's stem, in characters any header and disk take."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem)[:100].strip("._")
    return f"{stem or 'upload'}.deepfake-report"


def line(event: dict) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()
