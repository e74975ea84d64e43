"""Every error a client sees: an HTTP status and {"error": {"code", "message"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from preprocess.media import MediaError

log = logging.getLogger("gateway")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def from_media_error(error: MediaError) -> ApiError:
    return ApiError(error.status, error.code, str(error))


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


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
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Every method of every route on this path: Starlette's Allow has only the
            # first route's (GET /api/jobs/{id} hides DELETE /api/jobs/{id}).
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(ApiError(error.status_code, code, str(error.detail), headers))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return error_response(ApiError(422, "invalid_request", problems))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception(
            "unexpected error", extra={"request_id": getattr(request.state, "request_id", "")}
        )
        return error_response(ApiError(500, "internal_error", "unexpected error; see the logs"))
