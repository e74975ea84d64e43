"""The request context middleware: a request id for every request (the client's if sane),
bound for the logs and Triton calls, echoed in X-Request-ID; each request counted and logged
(never the file name, the temp path or the body)."""

import logging
import time

from fastapi import FastAPI, Request

from gateway.server import metrics
from gateway.server.options import new_request_id
from gateway.server.security import peer
from gateway.server.tracing import bind_request

log = logging.getLogger("gateway")


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
