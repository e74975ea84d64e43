"""Every error a client sees: the catalogue of codes (each with its HTTP status and what it
means), and {"error": {"code", "message"}}, the body each is answered with.

Raises name a code, never a status: `ApiError("file_too_large", message)`. The OpenAPI
document's error texts are built from the same table (gateway/server/openapi.py's
`errors_doc`), and preprocess's `MediaError`s carry only a code, mapped here once. The
table is gateway/README.md's "Errors" table too (tests/test_errors.py keeps them equal)."""

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from preprocess.media import MediaError

log = logging.getLogger("gateway")
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    status: int
    description: str


# code -> its status and what it means, grouped by who raises it.
CATALOGUE: dict[str, Entry] = {
    # the request itself (FastAPI's validation, gateway/server/uploads.py)
    "invalid_request": Entry(422, "a bad query value, header or body field"),
    "malformed_upload": Entry(400, "a malformed multipart body or Content-Length"),
    "unsupported_content_type": Entry(
        415, "the upload is not multipart/form-data (nor JSON media URLs)"
    ),
    "missing_file": Entry(422, "no file in the form (a field named 'file')"),
    "file_too_large": Entry(413, "a file over the upload cap (GATEWAY_MAX_UPLOAD_MB)"),
    "upload_timeout": Entry(408, "the upload passed its deadline"),
    "upload_too_slow": Entry(408, "the upload is below the minimum rate after the grace"),
    "too_many_uploads": Entry(429, "too many uploads being received (see Retry-After)"),
    "too_many_requests": Entry(429, "too many analyses in flight (see Retry-After)"),
    "client_closed_request": Entry(499, "the client went away (for the log and metrics)"),
    # the media (preprocess's MediaError codes)
    "media_error": Entry(400, "a problem with the media"),
    "unsupported_media": Entry(415, "not a supported video or image"),
    "undecodable_media": Entry(422, "media that cannot be decoded"),
    "media_limit_exceeded": Entry(422, "media over the limits (size, decoded pixels, faces)"),
    "bad_url": Entry(422, "not a URL (media, stream) this service reads"),
    "url_refused": Entry(403, "a media or stream URL refused (scheme, host or private address)"),
    "stream_unreachable": Entry(502, "a media or stream URL could not be reached or read"),
    # the analysis
    "unknown_model": Entry(422, "a model this server does not have"),
    "no_voting_model": Entry(422, "none of the models asked for votes"),
    "analysis_timeout": Entry(504, "the analysis passed its deadline"),
    # Triton (gateway/server/model_server.py)
    "triton_unavailable": Entry(503, "Triton unavailable (see Retry-After)"),
    "model_unavailable": Entry(503, "the ensemble not ready (see Retry-After)"),
    "triton_timeout": Entry(504, "Triton did not answer in time"),
    "triton_error": Entry(502, "Triton failed"),
    # access (gateway/server/security.py)
    "unauthorized": Entry(
        401,
        "a valid API key is required (when GATEWAY_API_KEYS is set): X-API-Key or "
        "Authorization: Bearer",
    ),
    "rate_limited": Entry(
        429,
        "over the rate limit of this key or address (GATEWAY_RATE_LIMIT_PER_MINUTE, "
        "see Retry-After)",
    ),
    # jobs
    "job_too_large": Entry(413, "the job over its caps (files, MB in all)"),
    "job_not_found": Entry(404, "no such job for this API key (or deleted)"),
    "too_many_jobs": Entry(429, "too many unfinished jobs for this key or in all"),
    "invalid_callback_url": Entry(422, "a callback_url refused"),
    "idempotency_conflict": Entry(409, "the same Idempotency-Key is still being submitted"),
    "jobs_unavailable": Entry(503, "the job store unreachable or full (see Retry-After)"),
    "jobs_disabled": Entry(404, "jobs are off on this server (GATEWAY_JOBS_ENABLED=false)"),
    # reviews (gateway/server/reviews/)
    "answer_not_found": Entry(404, "no reviewable answer of this id for this key (or purged)"),
    "already_reviewed": Entry(409, "this answer has a review already"),
    "review_not_found": Entry(404, "no such review for this API key (or deleted)"),
    "reviews_unavailable": Entry(503, "the review store unreachable (see Retry-After)"),
    "reviews_disabled": Entry(404, "reviews are off on this server (GATEWAY_REVIEWS_ENABLED)"),
    # reports
    "report_too_large": Entry(413, "the answer over GATEWAY_REPORT_MAX_MB"),
    "invalid_answer": Entry(422, "not a detect answer"),
    "invalid_report": Entry(422, "references the answer lacks"),
    "report_over_limits": Entry(422, "over the report's limits"),
    # 406, not 503: the PDF is a representation this gateway never makes (no Chromium at
    # start-up, `pdf_reports` false in GET /api), as a format it lacks, not an outage; a
    # 5xx would feed the error-rate alert at each click. The HTML report is there.
    "pdf_unavailable": Entry(
        406, "no Chromium here to print PDFs (`pdf_reports` false in GET /api): ask for HTML"
    ),
    "pdf_failed": Entry(500, "the gateway's Chromium failed to print the PDF (see the logs)"),
    # live
    "frame_too_large": Entry(413, "a frame over the cap"),
    "not_jpeg": Entry(415, "a binary message that is not a JPEG frame"),
    "undecodable_frame": Entry(422, "a JPEG frame that cannot be decoded"),
    "bad_control": Entry(422, "a control message the session cannot read"),
    "too_many_sessions": Entry(429, "too many live sessions (see Retry-After)"),
    "stream_busy": Entry(503, "every stream reader is busy (see Retry-After)"),
    # the framework and the service
    "not_found": Entry(404, "no such route"),
    "method_not_allowed": Entry(405, "a method the route does not answer (see Allow)"),
    "http_error": Entry(
        400, "a body the framework cannot parse, or another of its errors (its own status)"
    ),
    "not_ready": Entry(503, "Triton or the ensemble is not ready (see Retry-After)"),
    "internal_error": Entry(500, "an unexpected error (see the logs)"),
}


def status_of(code: str) -> int:
    return CATALOGUE[code].status


class ApiError(Exception):
    """An error for the client, raised by its code: the catalogue gives its status."""

    def __init__(self, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status_of(code)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Store:
    """A store the routes call on a thread (the job queue's, the reviews'): its failures
    (`failures`: unreachable, full) are the catalogue's `code`, a 503 to retry, not a 500."""

    name: str  # for the operator's log line
    failures: tuple[type[Exception], ...]
    code: str
    message: str
    retry_after_s: int = 30

    async def call(self, call: Callable[..., T], *args: object) -> T:
        """`call(*args)` on a thread, its store's failure raised as this store's ApiError."""
        try:
            return await asyncio.to_thread(call, *args)
        except self.failures as exc:
            log.error("%s unavailable: %s", self.name, exc)  # a retry or an operator: both see it
            raise ApiError(
                self.code, self.message, {"Retry-After": str(self.retry_after_s)}
            ) from exc


def from_media_error(error: MediaError) -> ApiError:
    """preprocess's errors carry a code only: its status is the catalogue's."""
    return ApiError(error.code, str(error))


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


FRAMEWORK_CODES = {404: "not_found", 405: "method_not_allowed"}
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """The methods the routes matching this path answer (RFC 9110's Allow). Each method is
    asked of the routes' public `matches`: routes included from routers are nested
    (FastAPI's included routers), so their `methods` are not on the app's route list."""
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def install_handlers(app: FastAPI) -> None:
    """Framework errors (404, 405, bad query values) get the same JSON shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(MediaError)
    async def media_error(request: Request, error: MediaError) -> JSONResponse:
        return error_response(from_media_error(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = FRAMEWORK_CODES.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Every method of every route on this path: Starlette's Allow has only the
            # first route's (GET /api/jobs/{id} hides DELETE /api/jobs/{id}).
            headers["Allow"] = ", ".join(allowed_methods(request))
        refused = ApiError(code, str(error.detail), headers)
        refused.status = error.status_code  # http_error: whatever the framework's status was
        return error_response(refused)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return error_response(ApiError("invalid_request", problems))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception(
            "unexpected error", extra={"request_id": getattr(request.state, "request_id", "")}
        )
        return error_response(ApiError("internal_error", "unexpected error; see the logs"))
