"""POST /api/report: a detect answer as an HTML or PDF report (gateway/server/report.py
renders it)."""

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from gateway import VERSION
from gateway.server import schemas
from gateway.server.deps import (
    AdmissionDep,
    ExecutorDep,
    HeldUntilReturn,
    PdfPrinterDep,
    SettingsDep,
)
from gateway.server.errors import ApiError
from gateway.server.openapi import errors_doc
from gateway.server.report import (
    AnswerError,
    PdfPrinter,
    ReportError,
    ReportLimits,
    check_answer,
    check_size,
    print_pdf,
    render_html,
)

router = APIRouter()

REPORT_ERRORS_DOC = errors_doc(
    "report_too_large",
    "invalid_request",
    "invalid_answer",
    "invalid_report",
    "report_over_limits",
    "too_many_requests",
    "pdf_unavailable",
    "pdf_failed",
)


@router.post(
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
    "HTML report, or a PDF printed by headless Chromium where the gateway has one "
    "(`pdf_reports` in GET /api; elsewhere a PDF is refused at once, 406 pdf_unavailable).",
)
async def report(
    request: Request,
    admission: AdmissionDep,
    executor: ExecutorDep,
    settings: SettingsDep,
    held: HeldUntilReturn,
    printer: PdfPrinterDep,
    format: Annotated[Literal["html", "pdf"], Query(description="html or pdf")] = "html",
) -> Response:
    if format == "pdf" and not printer.available:
        # Known since start-up: refused before a byte is read or a slot taken.
        raise ApiError(
            "pdf_unavailable",
            "this gateway has no Chromium to print PDFs (GATEWAY_CHROMIUM); "
            "ask for the HTML report (format=html) and print it",
        )
    body = await read_body(request, settings.report_max_mb << 20)
    limits = ReportLimits(
        settings.report_max_values, int(settings.report_max_image_mpx * 1_000_000)
    )
    # Parsing, checking, rendering and printing: CPU work on a worker thread (never the
    # event loop), bounded like an analysis by the same admission.
    await held.take(admission)  # given back as the route returns
    future = asyncio.get_running_loop().run_in_executor(
        executor, make_report, body, format, limits, printer
    )
    try:
        name, content = await asyncio.shield(future)
    finally:
        # The client gone: the slot is free only once the thread has returned.
        with anyio.CancelScope(shield=True):
            await asyncio.wait({future})
    media_type = "text/html; charset=utf-8" if format == "html" else "application/pdf"
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}.{format}"'},
    )


async def read_body(request: Request, cap: int) -> bytes:
    """The posted answer's bytes, read no further than the cap."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ApiError("report_too_large", f"the answer is larger than {cap >> 20} MB")
    return bytes(body)


def parse_answer(body: bytes) -> schemas.DetectAnswer:
    """The answer checked against the schema."""
    try:
        # Strict: numbers as numbers, as /api/detect wrote them (the schema says so).
        return schemas.DetectAnswer.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise ApiError(
            "invalid_answer",
            f"not a detect answer: {exc.error_count()} error(s), "
            f"first: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}",
        ) from None


def make_report(
    body: bytes, format: str, limits: ReportLimits, printer: PdfPrinter
) -> tuple[str, str | bytes]:
    """The report's file name and its HTML or PDF (on a worker thread: it is CPU work)."""
    try:
        check_size(body, limits)
        answer = parse_answer(body)
        check_answer(answer, limits)
    except AnswerError as exc:
        raise ApiError(exc.code, str(exc)) from None
    html = render_html(answer, VERSION, datetime.now(UTC))
    if format == "html":
        return report_name(answer.filename), html
    try:
        return report_name(answer.filename), print_pdf(html, printer.chromium)
    except ReportError as exc:
        # The Chromium found at start-up failed: the server's fault, a 5xx.
        raise ApiError("pdf_failed", str(exc)) from None


def report_name(filename: str) -> str:
    """The download's name: the file's stem, in characters any header and disk take."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem)[:100].strip("._")
    return f"{stem or 'upload'}.deepfake-report"
