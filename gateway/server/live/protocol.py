"""Live analysis's protocol: the messages a client sends and is answered, whatever carries
them (a WebSocket, or POST /api/live's NDJSON).

WebSocket /api/live: binary messages are JPEG frames (numbered 0, 1, 2… in arrival order: the
client's sequence numbers), text messages JSON control (`{"start": {...}}`, `{"stop": true}`).
POST /api/live reads a stream URL and answers the same messages as NDJSON. Every judged frame
answers its faces, each person's (track's) score over a sliding window of their last frames
and a running verdict (gateway/server/verdict/judge.py, as for files).
"""

import io
from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.server.errors import ApiError, from_media_error
from preprocess.media import MediaError, MediaLimits
from preprocess.video import Frame

JPEG_MAGIC = b"\xff\xd8\xff"

# WebSocket close codes (4000-4999 are the application's; the last three digits echo HTTP).
CLOSE_NORMAL = 1000  # after {"stop": true}, the stream's end or the session time limit
CLOSE_SLOW_CLIENT = 1008  # answers unread for live_send_timeout_s
# 1009 (message too big): sent by uvicorn itself, as soon as a message's header announces
# more than Settings.live_max_message_bytes; the message is never buffered.
# 1011 (keepalive ping timeout): sent by uvicorn itself when a client does not answer a
# ping within Settings.live_ping_timeout_s.
CLOSE_GONE = 1006  # no close frame: the connection was lost (the session's record only)
CLOSE_UNAUTHORIZED = 4401  # missing or wrong API key: closed before any frame is read
CLOSE_FORBIDDEN_ORIGIN = 4403  # a browser page of another origin (not in cors_origins)
CLOSE_IDLE = 4408  # no message (and no stream being read) for live_idle_timeout_s
CLOSE_BUSY = 4429  # too many live sessions, in all or for this key


class StartOptions(BaseModel):
    """`{"start": {...}}`, or the body of POST /api/live (where `url` is required)."""

    model_config = ConfigDict(extra="forbid")

    models: Annotated[
        list[str] | str | None, Field(description="members to call; default the ensemble")
    ] = None
    threshold: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    window: Annotated[int | None, Field(ge=1, le=300, description="frames per track")] = None
    url: Annotated[str | None, Field(max_length=2048, description="rtsp, rtmp, HLS, http")] = None
    fps: Annotated[float | None, Field(gt=0, le=30, description="stream URLs: frames/s")] = None
    duration_s: Annotated[float | None, Field(gt=0, description="stream URLs: how long")] = None


class UrlOptions(StartOptions):
    """The body of POST /api/live: the same options, the URL required (so documented)."""

    url: Annotated[str, Field(max_length=2048, description="rtsp, rtmp, HLS, http")]


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: StartOptions | None = None
    stop: bool = False


def error_message(code: str, message: str, frame: int | None = None) -> dict:
    event = {"event": "error", "error": {"code": code, "message": message}}
    return event if frame is None else event | {"frame": frame}


class SlowClient(Exception):
    """The client did not take an answer within live_send_timeout_s."""


def check_jpeg(data: bytes, max_bytes: int, limits: MediaLimits) -> None:
    """Raises ApiError unless `data` is a JPEG within the caps; reads only its header."""
    if len(data) > max_bytes:
        raise ApiError(
            "frame_too_large", f"frame of {len(data)} bytes is over the cap of {max_bytes}"
        )
    if not data.startswith(JPEG_MAGIC):
        raise ApiError("not_jpeg", "binary messages must be JPEG frames")
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
    except Image.DecompressionBombError as exc:
        raise ApiError("media_limit_exceeded", f"frame too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError("undecodable_frame", f"could not read the JPEG: {exc}") from None
    try:
        limits.check_size(*size)
    except MediaError as exc:
        raise from_media_error(exc) from None


def decode_jpeg(frame: int, data: bytes) -> Frame:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Frame(frame, 0.0, np.array(image.convert("RGB")))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError("undecodable_frame", f"could not decode the JPEG: {exc}") from None


def control_problem(exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )
    return 'control messages are JSON: {"start": {...}} or {"stop": true}; ' + problems
