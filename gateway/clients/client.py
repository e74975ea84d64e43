"""Python clients: over HTTP to the gateway, or straight to Triton over gRPC.

`DirectClient` runs preprocess here and calls the ensemble over gRPC itself,
with the gateway's own Analyzer: the path for gRPC clients, same answer.
"""

import asyncio
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

import httpx

from gateway import VERSION
from gateway.server import schemas
from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError, from_media_error
from gateway.server.options import new_request_id, options_for
from gateway.server.report import ReportError, find_chromium, print_pdf, render_html
from gateway.server.settings import Settings
from preprocess.media import MediaError

TIMEOUT = httpx.Timeout(600.0, connect=10.0)
ReportFormat = Literal["html", "pdf"]


class ClientError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def upload(
    path: Path,
    file: BinaryIO,
    models: str | None,
    frames: int | None,
    threshold: float | None,
    explain: bool = False,
) -> dict:
    """The file and the query options of a detect request, as httpx takes them."""
    values = {"models": models, "frames": frames, "threshold": threshold}
    params: dict[str, object] = {k: v for k, v in values.items() if v is not None}
    if explain:
        params["explain"] = "true"
    return {"files": {"file": (path.name, file)}, "params": params}


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "http_error", "message": response.text[:200]}
    raise ClientError(response.status_code, error["code"], error["message"])


class GatewayClient:
    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: httpx.Timeout = TIMEOUT):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def detect(
        self,
        path: Path,
        models: str | None = None,
        frames: int | None = None,
        threshold: float | None = None,
        explain: bool = False,
    ) -> dict:
        with path.open("rb") as f:
            response = self.http.post(
                "/api/detect", **upload(path, f, models, frames, threshold, explain)
            )
        raise_for_error(response)
        return response.json()

    def report(self, answer: dict, format: ReportFormat = "html") -> bytes:
        """The gateway's report of an answer (POST /api/report)."""
        response = self.http.post("/api/report", params={"format": format}, json=answer)
        raise_for_error(response)
        return response.content

    def stream(
        self,
        path: Path,
        models: str | None = None,
        frames: int | None = None,
        threshold: float | None = None,
    ) -> Iterator[dict]:
        """The streaming detect's events, as they arrive."""
        with (
            path.open("rb") as f,
            self.http.stream(
                "POST", "/api/detect/stream", **upload(path, f, models, frames, threshold)
            ) as response,
        ):
            if not response.is_success:
                response.read()
                raise_for_error(response)
            for text in response.iter_lines():
                if text.strip():
                    yield json.loads(text)

    def models(self) -> dict:
        response = self.http.get("/api/models")
        raise_for_error(response)
        return response.json()

    def close(self) -> None:
        self.http.close()


class DirectClient:
    """Preprocess here, the ensemble over gRPC: no gateway in between."""

    def __init__(self, triton_url: str, settings: Settings | None = None) -> None:
        self.settings = (settings or Settings()).model_copy(update={"triton_url": triton_url})

    def detect(
        self,
        path: Path,
        models: str | None = None,
        frames: int | None = None,
        threshold: float | None = None,
        explain: bool = False,
    ) -> dict:
        return asyncio.run(self._detect(path, models, frames, threshold, explain))

    def report(self, answer: dict, format: ReportFormat = "html") -> bytes:
        """The report rendered here, by the gateway's own code (no gateway to ask)."""
        html = render_html(schemas.DetectAnswer.model_validate(answer), VERSION, datetime.now(UTC))
        if format == "html":
            return html.encode()
        try:
            return print_pdf(html, find_chromium(self.settings.chromium))
        except ReportError as exc:
            raise ClientError(503, "pdf_unavailable", str(exc)) from None

    async def _detect(
        self,
        path: Path,
        models: str | None,
        frames: int | None,
        threshold: float | None,
        explain: bool,
    ) -> dict:
        s = self.settings
        with ThreadPoolExecutor(s.workers) as executor:
            analyzer = Analyzer.from_settings(s, executor)
            with path.open("rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
            options = options_for(
                s,
                models,
                frames,
                threshold,
                explain=explain,
                filename=path.name,
                size=path.stat().st_size,
                sha256=sha256,
                request_id=new_request_id(),
            )
            try:
                answer = await analyzer.analyze(path, options)
            except (ApiError, MediaError) as exc:
                error = from_media_error(exc) if isinstance(exc, MediaError) else exc
                raise ClientError(error.status, error.code, error.message) from None
            finally:
                await analyzer.server.close()
        return answer.model_dump()
