"""What the live tests share: JPEG frames cut from the shared clips, a WebSocket client
for /api/live, and short media made from the clips with FFmpeg."""

import contextlib
import json
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import websocket
from fastapi.testclient import TestClient

from tests.stack import FAKE_CLIP, MEDIA, REAL_CLIP  # noqa: F401 — the live tests take them from here

OPCODE_CLOSE = 0x8


def jpeg_frames(clip: Path, count: int, step: int = 3, long_side: int = 640) -> list[bytes]:
    """`count` frames of `clip`, every `step`-th, downscaled as a browser would send them."""
    capture = cv2.VideoCapture(str(clip))
    frames: list[bytes] = []
    index = 0
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        if index % step == 0:
            scale = long_side / max(image.shape[:2])
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frames.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        index += 1
    capture.release()
    assert len(frames) == count, f"{clip} has fewer than {count * step} frames"
    return frames


def live_session(
    client: TestClient, start: dict, frames: list[bytes], headers: dict | None = None
) -> tuple[dict, list[dict]]:
    """One live session in process (FastAPI's TestClient): started with `start`, each frame
    sent and answered in turn, stopped. The start's answer and the frames' answers."""
    with client.websocket_connect("/api/live", headers=headers or {}) as ws:
        ws.send_text(json.dumps({"start": start}))
        started = ws.receive_json()
        answers = []
        for jpeg in frames:
            ws.send_bytes(jpeg)
            answers.append(ws.receive_json())
        ws.send_text(json.dumps({"stop": True}))
        assert ws.receive_json()["reason"] == "stopped"
    return started, answers


def blank_jpeg(width: int, height: int) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))[1].tobytes()


def ws_url(http_url: str, query: str = "") -> str:
    return http_url.replace("http://", "ws://", 1) + "/api/live" + (f"?{query}" if query else "")


@dataclass
class LiveSocket:
    """One /api/live session, synchronous: send frames and control, read JSON answers."""

    ws: websocket.WebSocket
    messages: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, http_url: str, query: str = "", **kwargs: object) -> "LiveSocket":
        return cls(websocket.create_connection(ws_url(http_url, query), timeout=60, **kwargs))

    def start(self, **options: object) -> dict:
        self.ws.send(json.dumps({"start": options}))
        return self.next("started", "error")

    def frame(self, jpeg: bytes) -> None:
        self.ws.send_binary(jpeg)

    def next(self, *events: str) -> dict:
        """The next answer (of one of `events`, skipping others)."""
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == OPCODE_CLOSE:
                raise ConnectionError(f"closed: {close_reason(data)}")
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            message = json.loads(data)
            self.messages.append(message)
            if not events or message["event"] in events:
                return message

    def answers_until(self, frame: int) -> Iterator[dict]:
        """Every frame answer up to the one for `frame`."""
        while True:
            message = self.next("frame")
            yield message
            if message["frame"] >= frame:
                return

    def close_code(self) -> tuple[int, str]:
        """Read until the server closes; its close code and reason."""
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == OPCODE_CLOSE:
                return close_reason(data)

    def close(self) -> None:
        self.ws.close()


def close_reason(data: bytes) -> tuple[int, str]:
    if len(data) < 2:
        return 1005, ""
    return struct.unpack("!H", data[:2])[0], data[2:].decode(errors="replace")


def judge(socket: LiveSocket, frames: list[bytes]) -> list[dict]:
    """Frames sent one at a time, each answer awaited: nothing is dropped."""
    answers = []
    for n, jpeg in enumerate(frames):
        socket.frame(jpeg)
        answer = socket.next("frame", "error")
        assert answer["event"] == "frame", answer
        assert answer["frame"] == n
        answers.append(answer)
    return answers


@dataclass
class SilentServer:
    """A TCP server on loopback that accepts and never answers: a stream source that holds
    its reader in opening until the reader's timeout (or until the server closes)."""

    listener: socket.socket
    port: int
    connections: list[socket.socket] = field(default_factory=list)

    def url(self, scheme: str = "rtsp") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/cam"

    @property
    def accepted(self) -> int:
        """Connections opened to it so far: one per reader that got to connect."""
        return len(self.connections)

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections.append(connection)

    def close(self) -> None:
        """The source goes: the readers it held fail at once."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        for connection in self.connections:
            connection.close()


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    """Closing it (its connections too) ends every reader held by it at once."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    server = SilentServer(listener, listener.getsockname()[1])
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(5)


def make_clip(source: Path, out: Path, seconds: float, *args: str) -> Path:
    """A short piece of `source` re-encoded by FFmpeg (H.264, small GOP) with extra args."""
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-t", str(seconds), "-i", str(source)),
            *("-an", "-c:v", "libx264", "-preset", "veryfast", "-g", "10", "-pix_fmt", "yuv420p"),
            *args,
            str(out),
        ],
        check=True,
        timeout=120,
    )
    return out
