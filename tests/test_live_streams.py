"""Stream URLs read by the gateway itself: real sources on loopback, analysed through the
API. RTSP from GStreamer's RTSP server, RTMP from FFmpeg (`-listen 1`), HLS from a folder
served over HTTP; redirects checked hop by hop. The sources play a few seconds of a shared
fake clip; the gateway (lite Triton) is allowed loopback for these tests only."""

import contextlib
import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest

from model_repository.local_triton import TritonSettings
from tests.conftest import ROOT, Gateway, free_port, start_gateway
from tests.live_client import FAKE_CLIP, LiveSocket, make_clip

SECONDS = 5  # of the source clip
READ_S = 4  # the gateway reads this long
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi (the RTSP server)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(FAKE_CLIP, tmp_path_factory.mktemp("clip") / "fake.mp4", SECONDS)


@pytest.fixture(scope="module")
def streams(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("streams"),
        live_allow_private="true",
        live_url_hosts="127.0.0.1",
        live_fps=3,
        live_stream_timeout_s=5,
    ) as gateway:
        yield gateway


@contextlib.contextmanager
def process(args: list[str], ready: Callable[[subprocess.Popen], bool]) -> Iterator[None]:
    """A source process, until `ready`; always stopped."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start: {proc.communicate(timeout=5)}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def listening(port: int) -> Callable[[subprocess.Popen], bool]:
    def ready(_: subprocess.Popen) -> bool:
        return any(
            c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
            for c in psutil.net_connections("tcp")
        )

    return ready


def ndjson(gateway: Gateway, body: dict) -> list[dict]:
    with httpx.stream("POST", gateway.url + "/api/live", json=body, timeout=60) as answer:
        assert answer.status_code == 200, answer.read()
        return [json.loads(line) for line in answer.iter_lines() if line]


def check_judged(messages: list[dict]) -> None:
    """Started, frames judged in stream order with faces and a fake verdict, then the end."""
    assert messages[0]["event"] == "started" and messages[0]["source"] == "url", messages[0]
    frames = [m for m in messages if m["event"] == "frame"]
    errors = [m for m in messages if m["event"] == "error"]
    assert not errors, errors
    assert messages[-1] == {
        "event": "end",
        "reason": "stream_ended",
        "frames": messages[-1]["frames"],
    }
    # ~3 frames/s for ~4 s: paced by the stream clock, not read as fast as it downloads
    assert 5 <= len(frames) <= 16, len(frames)
    numbers = [m["frame"] for m in frames]
    assert numbers == sorted(set(numbers))
    stamps = [m["timestamp_s"] for m in frames]
    assert stamps == sorted(stamps) and stamps[-1] <= SECONDS
    assert all(m["faces"] for m in frames)
    assert frames[-1]["verdict"] == "fake", frames[-1]["score"]


def test_rtsp_from_gstreamer(streams: Gateway, clip: Path) -> None:
    port = free_port()
    server = [SYSTEM_PYTHON, str(ROOT / "tests/rtsp_server.py"), str(port), str(clip)]
    with process(server, listening(port)):
        messages = ndjson(streams, {"url": f"rtsp://127.0.0.1:{port}/clip", "duration_s": READ_S})
    check_judged(messages)


def test_rtmp_from_ffmpeg_on_the_socket(streams: Gateway, clip: Path) -> None:
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/s"
    source = ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv"]
    with process([*source, "-listen", "1", url], listening(port)):
        socket = LiveSocket.open(streams.url)
        started = socket.start(url=url, duration_s=READ_S)
        messages = [started]
        with contextlib.suppress(ConnectionError):
            while True:
                messages.append(socket.next())
        socket.close()
    check_judged(messages)


class Redirects(http.server.BaseHTTPRequestHandler):
    """/ok -> the HLS playlist on 127.0.0.1 (allowed); /bad -> the same on "localhost",
    a host the gateway is not allowed to reach."""

    target_port = 0

    def do_GET(self) -> None:
        host = {"/ok": "127.0.0.1", "/bad": "localhost"}.get(self.path)
        if host is None:
            self.send_error(404)
            return
        self.send_response(302)
        self.send_header("Location", f"http://{host}:{self.target_port}/index.m3u8")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(handler: type, port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_hls_over_http_with_redirects_checked(streams: Gateway, clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hls"
    folder.mkdir()
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "hls"),
            *("-hls_time", "1", "-hls_playlist_type", "vod", str(folder / "index.m3u8")),
        ],
        check=True,
        timeout=60,
    )
    hls_port, redirect_port = free_port(), free_port()
    files = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    Redirects.target_port = hls_port
    with serve(files, hls_port), serve(Redirects, redirect_port):
        messages = ndjson(
            streams, {"url": f"http://127.0.0.1:{hls_port}/index.m3u8", "duration_s": READ_S}
        )
        check_judged(messages)
        via = ndjson(streams, {"url": f"http://127.0.0.1:{redirect_port}/ok", "duration_s": 2})
        assert via[0]["event"] == "started" and any(m["event"] == "frame" for m in via)
        refused = httpx.post(
            streams.url + "/api/live", json={"url": f"http://127.0.0.1:{redirect_port}/bad"}
        )
        assert refused.status_code == 403
        assert "localhost" in refused.json()["error"]["message"]
    shutil.rmtree(folder)


def test_an_unreachable_source_is_an_error(streams: Gateway) -> None:
    """Nothing listens on the port: 502 before the answer begins, no session left open."""
    answer = httpx.post(
        streams.url + "/api/live",
        json={"url": f"http://127.0.0.1:{free_port()}/none.m3u8"},
        timeout=30,
    )
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "stream_unavailable"
    rtsp = ndjson(streams, {"url": f"rtsp://127.0.0.1:{free_port()}/none"})
    assert [m["event"] for m in rtsp] == ["started", "error", "end"]
    assert rtsp[1]["error"]["code"] == "stream_unavailable"
