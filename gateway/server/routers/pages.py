"""The pages: /, /live and /review, their files under /static/, the API docs at /docs, all
served by the gateway itself (no front-end server, no CDN)."""

from pathlib import Path

import swagger_ui
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent.parent / "static"
# Swagger UI's own files, as the swagger-ui-py package ships them (gateway/requirements.txt).
SWAGGER_UI_DIR = Path(swagger_ui.__file__).parent / "static"

# The page needs nothing beyond its own origin: the browser enforces that, so a
# stray CDN link or an injected script fails loudly instead of phoning out.
# Inline style attributes are allowed (the bars' widths); face thumbnails are data:
# URLs and the JSON download a blob: URL.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebFiles(StaticFiles):
    """StaticFiles with the page's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/live")
async def live_page() -> FileResponse:
    """Live mode: a camera or a shared tab judged over the WebSocket /api/live."""
    return FileResponse(STATIC_DIR / "live.html", headers=PAGE_HEADERS)


@router.get("/review")
async def review_page() -> FileResponse:
    """The review queue: answers waiting for a person's label (/api/review-queue)."""
    return FileResponse(STATIC_DIR / "review.html", headers=PAGE_HEADERS)


@router.get("/docs")
async def docs_page() -> FileResponse:
    """The API's documentation: Swagger UI from the gateway's own files (its assets under
    /docs/assets, the start-up script in static/docs.js), so it works offline and under the
    page's CSP, which allows no CDN and no inline script."""
    return FileResponse(STATIC_DIR / "docs.html", headers=PAGE_HEADERS)


def mount_files(app: FastAPI) -> None:
    """The pages' files under /static/ and Swagger UI's under /docs/assets. Not one mount at
    "/": a catch-all mount would answer GET /api/detect with 404 where the API says 405."""
    app.mount("/static", WebFiles(directory=STATIC_DIR), name="web")
    app.mount("/docs/assets", WebFiles(directory=SWAGGER_UI_DIR), name="docs-assets")
