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
from typing import Literal

import httpx

from gateway import VERSION
from gateway.server import (
    Analyzer,
    ApiError,
    ReportError,
    Settings,
    find_chromium,
    from_media_error,
    new_request_id,
    options_for,
    print_pdf,
    render_html,
    schemas,
)
from preprocess.media import MediaError

TIMEOUT = httpx.Timeout(600.0, connect=10.0)
ReportFormat = Literal["html", "pdf"]
URL_SCHEMES = ("https://", "http://")
Source = Path | str  # a local file, or a media URL the gateway fetches itself


def media_source(text: str) -> Source:
    """A command line's argument: a URL (https://…, a presigned object-store URL) stays a
    string, for the gateway to fetch; anything else is a local path."""
    return text if text.lower().startswith(URL_SCHEMES) else Path(text)


def source_name(source: Source) -> str:
    """How a source is shown: a file's path; a URL without its query (a presigned URL's
    query is its signature)."""
    return str(source).split("?", 1)[0]


class ClientError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def query(
    models: str | None, frames: int | None, threshold: float | None, explain: bool = False
) -> dict[str, object]:
    """The query options of a detect request: only those given."""
    values = {"models": models, "frames": frames, "threshold": threshold}
    params: dict[str, object] = {k: v for k, v in values.items() if v is not None}
    if explain:
        params["explain"] = "true"
    return params


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "http_error", "message": response.text[:200]}
    raise ClientError(response.status_code, error["code"], error["message"])


class GatewayClient:
    """The service over HTTP. `http` is any httpx.Client to send through instead of one of its
    own (the tests pass FastAPI's TestClient, or one that keeps no connection alive)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        timeout: httpx.Timeout = TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(
        self,
        source: Source,
        models: str | None = None,
        frames: int | None = None,
        threshold: float | None = None,
        explain: bool = False,
        **params: object,
    ) -> dict:
        """The answer to one file, or to the media a URL names (the gateway fetches it); a
        ClientError where the gateway refused it. `params` are further query options
        (thumbnails="true"...)."""
        options = query(models, frames, threshold, explain) | params
        if isinstance(source, str):
            response = self.detect_url_response(source, **options)
        else:
            response = self.detect_response(source, **options)
        raise_for_error(response)
        return response.json()

    def detect_response(self, path: Path, **params: object) -> httpx.Response:
        """POST /api/detect of one file, `params` as its query, the response whatever its
        status: the one place a detect upload is built (tests read the refusals too)."""
        with path.open("rb") as f:
            return self.http.post("/api/detect", files={"file": (path.name, f)}, params=params)

    def detect_url_response(self, url: str, **params: object) -> httpx.Response:
        """POST /api/detect of a media URL (a JSON body: nothing is uploaded, the gateway
        fetches it), the response whatever its status."""
        return self.http.post("/api/detect", json={"url": url}, params=params)

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
                "POST",
                "/api/detect/stream",
                files={"file": (path.name, f)},
                params=query(models, frames, threshold),
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
            error = ApiError("pdf_unavailable", str(exc))  # the gateway's code and status
            raise ClientError(error.status, error.code, error.message) from None

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
