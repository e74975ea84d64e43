"""GET /healthz (alive), /readyz (Triton and the ensemble ready), /metrics (Prometheus)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.server.deps import ServerDep, SettingsDep
from gateway.server.errors import ApiError, error_response
from gateway.server.openapi import errors_doc

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get(
    "/readyz",
    responses=errors_doc("not_ready"),
)
async def readyz(server: ServerDep, settings: SettingsDep) -> JSONResponse:
    ready = await server.ready()
    if not ready:
        error = ApiError(
            "not_ready", f"Triton or {settings.ensemble} is not ready", {"Retry-After": "5"}
        )
        return error_response(error)
    return JSONResponse({"status": "ready"})


@router.get(
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
