"""What carries a live session: a WebSocket (serve_socket: frames and control in, answers
out) or POST /api/live's NDJSON answer (start_ndjson: a stream URL's frames, answers as
lines). routers/live.py admits the client and hands over.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.websockets import WebSocketDisconnect

from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError, from_media_error
from gateway.server.live.protocol import (
    CLOSE_GONE,
    CLOSE_IDLE,
    CLOSE_NORMAL,
    CLOSE_SLOW_CLIENT,
    Control,
    SlowClient,
    StartOptions,
    control_problem,
    error_message,
)
from gateway.server.live.readers import StreamReaders
from gateway.server.live.session import LiveSession, SocketQuota
from gateway.server.ndjson import compact, line
from gateway.server.security import OPEN_TENANT, key_id, key_matches, presented_key
from gateway.server.settings import Settings
from preprocess.media import MediaError

log = logging.getLogger("gateway")


def socket_owner(client: str, keys: list[str]) -> str:
    """Whose reviews a socket's verdicts go to: its key's id (socket_client's), or the one
    tenant of a gateway without keys (security.tenant_of)."""
    return client if keys else OPEN_TENANT


def socket_client(websocket: WebSocket, keys: list[str]) -> str | None:
    """Who is calling, or None for a missing or wrong key. Browsers cannot set headers on
    a WebSocket, so the key may also come as the `api_key` query parameter."""
    key = presented_key(Headers(scope=websocket.scope)) or websocket.query_params.get("api_key")
    if keys:
        if key is None or not key_matches(key, keys):
            return None
        return key_id(key)
    return "ip:" + (websocket.client.host if websocket.client else "unknown")


async def serve_socket(
    websocket: WebSocket,
    analyzer: Analyzer,
    settings: Settings,
    readers: StreamReaders,
    quota: SocketQuota,
    owner: str,
) -> tuple[int, str]:
    """Run one session on an accepted socket (`owner`'s, whose running verdict may be
    reviewed); the close code and reason to end it with."""

    async def send(message: dict) -> None:
        try:
            async with asyncio.timeout(settings.live_send_timeout_s):
                await websocket.send_text(compact(message))
        except TimeoutError:
            raise SlowClient from None
        except RuntimeError:
            # uvicorn closed the socket itself (the client missed the keepalive's pong) and
            # refuses any later send: the client is gone, as after a disconnect.
            raise WebSocketDisconnect(CLOSE_GONE) from None

    session = LiveSession(analyzer, settings, send, readers, owner)
    scorer = asyncio.create_task(session.score_forever())
    receiver = asyncio.create_task(receive(websocket, session, settings, quota))
    ended = asyncio.create_task(session.ended.wait())
    try:
        done, _ = await asyncio.wait(
            {scorer, receiver, ended},
            timeout=settings.live_max_session_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not done:
            await send({"event": "end", "reason": "session_time_limit"})
            return CLOSE_NORMAL, "session time limit"
        if ended in done:
            return CLOSE_NORMAL, "stream ended"
        task = scorer if scorer in done else receiver
        if isinstance(task.exception(), SlowClient):
            return CLOSE_SLOW_CLIENT, "answers not read in time"
        if task.exception() is not None:
            if not isinstance(task.exception(), WebSocketDisconnect):
                log.error("live session failed", exc_info=task.exception())
            return 1011, "internal error"
        return task.result()
    except SlowClient:
        return CLOSE_SLOW_CLIENT, "answers not read in time"
    finally:
        for task in (scorer, receiver, ended):
            task.cancel()
        await asyncio.gather(scorer, receiver, ended, return_exceptions=True)
        await session.close()


async def receive(
    websocket: WebSocket, session: LiveSession, settings: Settings, quota: SocketQuota
) -> tuple[int, str]:
    """Read the client's messages until it stops, leaves or falls idle. A message over a
    rate limit is answered with a rate_limited error (a frame's numbered) and not acted on."""
    while True:
        try:
            async with asyncio.timeout(settings.live_idle_timeout_s):
                message = await websocket.receive()
        except TimeoutError:
            if session.reading:
                continue  # a stream URL is being read: the client only listens
            return CLOSE_IDLE, "idle"
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("bytes") is not None:
            refused = quota.refusal(control=False)
            if (error := session.add_jpeg(message["bytes"], refused)) is not None:
                await session.send(error)
            continue
        try:
            control, problem = Control.model_validate_json(message.get("text") or ""), ""
        except ValidationError as exc:
            control, problem = None, control_problem(exc)
        stopping = control is not None and control.stop  # a stop is never refused
        if not stopping and (refused := quota.refusal(control=True)) is not None:
            await session.send(error_message(refused.code, refused.message))
            continue
        if control is None:
            await session.send(error_message("bad_control", problem))
            continue
        if control.stop:
            await session.keep_for_review()  # reviewable once the client reads `end`
            await session.send(
                {"event": "end", "reason": "stopped", "dropped": session.latest.dropped}
            )
            return CLOSE_NORMAL, "stopped"
        if control.start is not None:
            try:
                await session.start(control.start)
            except (ApiError, MediaError) as exc:
                error = from_media_error(exc) if isinstance(exc, MediaError) else exc
                await session.send(error_message(error.code, error.message))


async def start_ndjson(
    analyzer: Analyzer,
    settings: Settings,
    readers: StreamReaders,
    options: StartOptions,
    release: Callable[[], None],
    owner: str,
) -> AsyncIterator[bytes]:
    """POST /api/live: the session started (bad options and URLs raise here, before the
    answer begins), then its messages as NDJSON lines until the stream ends. The session
    (its slot, its reader thread) ends with the stream, or when a client leaves answers
    unread for live_send_timeout_s, whether or not the client ever reads again."""
    queue: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=4)

    async def send(message: dict) -> None:
        try:
            async with asyncio.timeout(settings.live_send_timeout_s):
                await queue.put(message)
        except TimeoutError:
            raise SlowClient from None

    session = LiveSession(analyzer, settings, send, readers, owner)
    scorer = asyncio.create_task(session.score_forever())
    try:
        await session.start(options)
    except BaseException:
        scorer.cancel()
        await session.close()
        raise
    assert session.stream is not None

    async def run() -> None:
        ended = asyncio.create_task(session.ended.wait())
        try:
            await asyncio.wait({ended, scorer, session.stream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ended, scorer):
                task.cancel()
            await session.close()
            release()
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    runner = asyncio.create_task(run())

    async def lines() -> AsyncIterator[bytes]:
        try:
            while (message := await queue.get()) is not None:
                yield line(message)
                if runner.done() and queue.empty():
                    break
        finally:
            runner.cancel()
            await asyncio.gather(runner, scorer, return_exceptions=True)

    return lines()
