"""GET /api (what this service is) and GET /api/models (the ensemble Triton serves)."""

import contextlib

from fastapi import APIRouter

from gateway import VERSION
from gateway.server import schemas
from gateway.server.deps import PdfPrinterDep, ServerDep, SettingsDep
from gateway.server.errors import ApiError
from gateway.server.openapi import MODEL_SERVER_ERRORS, errors_doc
from preprocess.calibration import Calibration
from preprocess.media import FORMATS

router = APIRouter()


@router.get("/api", response_model=schemas.ServiceInfo)
async def info(
    server: ServerDep, settings: SettingsDep, printer: PdfPrinterDep
) -> schemas.ServiceInfo:
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
        pdf_reports=printer.available,
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


@router.get(
    "/api/models",
    response_model=schemas.ModelsAnswer,
    responses=errors_doc(*MODEL_SERVER_ERRORS),
)
async def models(server: ServerDep) -> schemas.ModelsAnswer:
    ensemble = await server.ensemble(fresh=True)
    return schemas.ModelsAnswer(
        ensemble=ensemble.name,
        profile=ensemble.profile,
        vote_rule=ensemble.rule,
        ready=ensemble.ready,
        models=[
            schemas.ModelListing.model_validate(m, from_attributes=True) for m in ensemble.members
        ],
        calibration=calibration_info(ensemble.calibration),
    )


def calibration_info(calibration: Calibration | None) -> schemas.CalibrationInfo | None:
    if calibration is None:
        return None
    return schemas.CalibrationInfo(
        method=calibration.method,
        parameters={"a": calibration.a, "b": calibration.b},
        vote=calibration.vote,
        versions=calibration.versions,
        uncertain_band=calibration.uncertain_band,
        provenance=calibration.provenance,
        figures=calibration.figures,
        caveat=calibration.caveat,
    )
