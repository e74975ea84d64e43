"""WebSocket /api/live and POST /api/live: HTTP in and out of a live session
(gateway/server/live/: protocol.py its messages, session.py the session, carriers.py the
WebSocket and the NDJSON answer that carry it)."""

import contextlib

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect

from gateway.server.deps import (
    AnalyzerDep,
    HeldUntilReturn,
    HeldUntilSent,
    LiveSessionsDep,
    SettingsDep,
    StreamReadersDep,
    get_owner,
)
from gateway.server.errors import ApiError
from gateway.server.live.carriers import serve_socket, socket_client, socket_owner, start_ndjson
from gateway.server.live.protocol import (
    CLOSE_BUSY,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_UNAUTHORIZED,
    UrlOptions,
)
from gateway.server.live.session import SocketQuota
from gateway.server.openapi import errors_doc
from gateway.server.security import RateLimiter, origin_allowed

router = APIRouter()


@router.websocket("/api/live")
async def live_socket(
    websocket: WebSocket,
    analyzer: AnalyzerDep,
    settings: SettingsDep,
    sessions: LiveSessionsDep,
    readers: StreamReadersDep,
    held: HeldUntilReturn,
) -> None:
    # Accepted, then closed with a code a browser's page can read (a refused handshake
    # reads as 1006), before any message is read.
    await websocket.accept()
    if not origin_allowed(Headers(scope=websocket.scope), settings.cors_origins):
        await websocket.close(CLOSE_FORBIDDEN_ORIGIN, "origin not allowed")
        return
    client = socket_client(websocket, settings.api_keys)
    if client is None:
        await websocket.close(CLOSE_UNAUTHORIZED, "a valid API key is required")
        return
    try:
        place = await held.take(sessions, client)
    except ApiError:  # too_many_sessions: a socket reads it as its close code
        await websocket.close(CLOSE_BUSY, "too many live sessions")
        return
    quota = SocketQuota(
        client,
        getattr(websocket.app.state, "rate_limiter", None),  # gateway/server/security.py's
        RateLimiter(settings.live_control_per_minute, settings.live_control_burst),
    )
    owner = socket_owner(client, settings.api_keys)
    code, reason = await serve_socket(websocket, analyzer, settings, readers, quota, owner)
    place.give()  # before the close: a client reconnecting at once finds its place free
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code, reason)


@router.post(
    "/api/live",
    response_class=StreamingResponse,
    responses=errors_doc(
        "http_error",
        "invalid_request",
        "bad_url",
        "url_refused",
        "unknown_model",
        "no_voting_model",
        "too_many_sessions",
        "stream_unreachable",
        "stream_busy",
    ),
    description="Read a stream URL (RTSP, RTMP, HLS, HTTP) for a bounded time; NDJSON: "
    "started, then one frame message per judged frame (as on the WebSocket), then end.",
)
async def live_url(
    request: Request,
    options: UrlOptions,
    analyzer: AnalyzerDep,
    settings: SettingsDep,
    sessions: LiveSessionsDep,
    readers: StreamReadersDep,
    held: HeldUntilSent,
) -> StreamingResponse:
    client = request.scope.get("state", {}).get("client") or (
        "ip:" + (request.client.host if request.client else "unknown")
    )
    # Given back when the stream ends (or its client stops reading): start_ndjson's
    # `release`; if it never starts, as this request ends.
    place = await held.take(sessions, client)
    owner = get_owner(request, settings)
    events = await start_ndjson(analyzer, settings, readers, options, place.give, owner)
    return StreamingResponse(events, media_type="application/x-ndjson")
