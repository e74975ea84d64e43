"""Stream URLs read by the gateway itself: real sources on loopback, analysed through the
API. RTSP from GStreamer's RTSP server, RTMP from FFmpeg (`-listen 1`), HLS from a folder
served over HTTP; redirects checked hop by hop. The sources play a few seconds of a shared
fake clip.

The gateway may reach 127.0.0.2 only (GATEWAY_EGRESS_ALLOW_NETWORKS), and resolves names
with a stub DNS server (GATEWAY_EGRESS_DNS_SERVER) that can answer 127.0.0.2 first and
127.0.0.1 next: whatever listens on 127.0.0.1 stands for the pod's network and must hear
nothing (issue 24: findings 1, 2 and 9). "Public" addresses are never connected to.
"""

import contextlib
import http.server
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest

from model_repository.local_triton import TritonSettings
from tests.conftest import ROOT, Gateway, free_port, start_gateway
from tests.egress_support import Listener, StubDns, rtsp_redirecting
from tests.live_client import FAKE_CLIP, LiveSocket, make_clip
from tests.stack import serve_http

SECONDS = 5  # of the source clip
READ_S = 4  # the gateway reads this long
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi (the RTSP server)
SOURCE = "127.0.0.2"  # the one loopback address the gateway may reach


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(FAKE_CLIP, tmp_path_factory.mktemp("clip") / "fake.mp4", SECONDS)


@pytest.fixture(scope="module")
def dns() -> Iterator[StubDns]:
    """cam.test is 127.0.0.2; rebind.test is 127.0.0.2 once, then 127.0.0.1."""
    with StubDns({"cam.test": [SOURCE], "rebind.test": [SOURCE, "127.0.0.1"]}).serving() as stub:
        yield stub


@pytest.fixture(scope="module")
def streams(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory, dns: StubDns
) -> Iterator[Gateway]:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("streams"),
        egress_allow_networks=f"{SOURCE}/32",
        egress_dns_server=dns.server,
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
    server = [SYSTEM_PYTHON, str(ROOT / "tests/rtsp_server.py"), str(port), str(clip), SOURCE]
    with process(server, listening(port)):
        messages = ndjson(streams, {"url": f"rtsp://cam.test:{port}/clip", "duration_s": READ_S})
    check_judged(messages)


def test_rtmp_from_ffmpeg_on_the_socket(streams: Gateway, clip: Path) -> None:
    port = free_port()
    url = f"rtmp://{SOURCE}:{port}/live/s"
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
    """/ok -> the HLS playlist on 127.0.0.2 (allowed); /bad -> a listener on 127.0.0.1,
    an address the gateway is not allowed to reach."""

    target_port = 0
    bad_port = 0

    def do_GET(self) -> None:
        location = {
            "/ok": f"http://{SOURCE}:{self.target_port}/index.m3u8",
            "/bad": f"http://127.0.0.1:{self.bad_port}/index.m3u8",
        }.get(self.path)
        if location is None:
            self.send_error(404)
            return
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class Cloaking(Files):
    """Media for the gateway; for FFmpeg's own user agent (Lavf) a redirect to 127.0.0.1."""

    inside_port = 0

    def do_GET(self) -> None:
        if "Lavf" in self.headers.get("User-Agent", ""):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.inside_port}/index.m3u8")
            self.end_headers()
            return
        super().do_GET()


@contextlib.contextmanager
def serve(handler: object, port: int, host: str = SOURCE) -> Iterator[None]:
    with serve_http(handler, host, port):  # type: ignore[arg-type]
        yield


@pytest.fixture(scope="module")
def hls(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hls")
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "hls"),
            *("-hls_time", "1", "-hls_playlist_type", "vod", str(folder / "index.m3u8")),
        ],
        check=True,
        timeout=60,
    )
    return folder


def unreachable(messages: list[dict]) -> dict:
    """started, one stream_unreachable error, end: its error."""
    assert [m["event"] for m in messages] == ["started", "error", "end"], messages
    assert messages[1]["error"]["code"] == "stream_unreachable", messages[1]
    return messages[1]["error"]


def test_hls_over_http_with_redirects_checked(streams: Gateway, hls: Path) -> None:
    hls_port, redirect_port = free_port(), free_port()
    with (
        serve(partial(Files, directory=str(hls)), hls_port),
        serve(Redirects, redirect_port),
        Listener("127.0.0.1").serving() as inside,
    ):
        Redirects.target_port, Redirects.bad_port = hls_port, inside.port
        messages = ndjson(
            streams, {"url": f"http://cam.test:{hls_port}/index.m3u8", "duration_s": READ_S}
        )
        check_judged(messages)
        via = ndjson(streams, {"url": f"http://{SOURCE}:{redirect_port}/ok", "duration_s": 2})
        assert via[0]["event"] == "started" and any(m["event"] == "frame" for m in via)
        unreachable(ndjson(streams, {"url": f"http://{SOURCE}:{redirect_port}/bad"}))
    assert inside.received == []


def test_an_unreachable_source_is_an_error(streams: Gateway) -> None:
    """Nothing listens on the port: started, the one generic error, the end."""
    for url in (f"http://{SOURCE}:{free_port()}/none.m3u8", f"rtsp://{SOURCE}:{free_port()}/x"):
        unreachable(ndjson(streams, {"url": url}))


# --- issue 24: findings 1, 2 and 9, against the real gateway process ---------------------


def test_a_nul_byte_does_not_walk_past_the_url_check(streams: Gateway) -> None:
    """Finding 1: the check read the host after "@", FFmpeg stopped at the NUL and
    connected to 127.0.0.1. Now a bad URL (422) on POST and on the socket, and the
    listener hears nothing."""
    with Listener("127.0.0.1").serving() as inside:
        url = f"rtsp://127.0.0.1:{inside.port}\u0000@93.184.216.34/x"  # as the attacker sent
        answer = httpx.post(streams.url + "/api/live", json={"url": url}, timeout=30)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "bad_url"
        socket = LiveSocket.open(streams.url)
        error = socket.start(url=url)
        socket.close()
        assert error["event"] == "error" and error["error"]["code"] == "bad_url", error
        time.sleep(1)
    assert inside.received == []


def test_a_url_httpx_cannot_parse_is_a_4xx(streams: Gateway) -> None:
    """Finding 9: `http://93.184.216.34<NUL>/x` was a 500 (httpx.InvalidURL)."""
    url = "http://93.184.216.34" + chr(0) + "/x"
    answer = httpx.post(streams.url + "/api/live", json={"url": url}, timeout=30)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "bad_url"


@pytest.fixture(scope="module")
def permissive(lite_triton: TritonSettings, tmp_path_factory) -> Iterator[Gateway]:
    """Every address allowed (GATEWAY_LIVE_ALLOW_PRIVATE): the port scan of finding 1."""
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("permissive"),
        live_allow_private="true",
        live_stream_timeout_s=3,
    ) as gateway:
        yield gateway


def test_a_closed_and_an_open_port_read_the_same(permissive: Gateway) -> None:
    """Finding 1: `Connection refused` (closed) and `Invalid data found` (open, not RTSP)
    told a port scanner what it wanted; now one error, one message."""
    with Listener(SOURCE).serving() as open_port:
        opened = unreachable(ndjson(permissive, {"url": f"rtsp://{SOURCE}:{open_port.port}/x"}))
    closed = unreachable(ndjson(permissive, {"url": f"rtsp://{SOURCE}:{free_port()}/x"}))
    assert opened == closed


def test_hls_segments_on_another_host_are_checked(streams: Gateway, hls: Path) -> None:
    """Finding 2: the playlist is on 127.0.0.2, its segments on 127.0.0.1; FFmpeg fetched
    them unchecked. Now the gateway fetches the segments itself and refuses them."""
    port = free_port()
    with Listener("127.0.0.1").serving() as inside:
        lines = (hls / "index.m3u8").read_text().splitlines()
        moved = [f"http://127.0.0.1:{inside.port}/{x}" if x.endswith(".ts") else x for x in lines]
        folder = hls.parent / "moved"
        folder.mkdir(exist_ok=True)
        (folder / "index.m3u8").write_text("\n".join(moved) + "\n")
        with serve(partial(Files, directory=str(folder)), port):
            unreachable(ndjson(streams, {"url": f"http://cam.test:{port}/index.m3u8"}))
    assert inside.received == []


def test_a_redirect_served_to_ffmpeg_only_goes_nowhere(streams: Gateway, hls: Path) -> None:
    """Finding 2: a server redirecting only FFmpeg's user agent (Lavf) to 127.0.0.1. FFmpeg
    fetches nothing now: the stream is judged, the listener hears nothing."""
    port = free_port()
    with Listener("127.0.0.1").serving() as inside:
        Cloaking.inside_port = inside.port
        with serve(partial(Cloaking, directory=str(hls)), port):
            messages = ndjson(
                streams, {"url": f"http://cam.test:{port}/index.m3u8", "duration_s": 2}
            )
    assert messages[0]["event"] == "started" and any(m["event"] == "frame" for m in messages)
    assert inside.received == []


def test_an_rtsp_redirect_is_not_followed(streams: Gateway) -> None:
    """Finding 2: FFmpeg's RTSP client followed a 302 to any address by itself."""
    with Listener("127.0.0.1").serving() as inside:
        location = f"rtsp://127.0.0.1:{inside.port}/x"
        with rtsp_redirecting(location, host=SOURCE) as port:
            unreachable(ndjson(streams, {"url": f"rtsp://cam.test:{port}/cam"}))
    assert inside.received == []


def test_dns_rebinding_reaches_only_the_checked_address(
    streams: Gateway, dns: StubDns, hls: Path
) -> None:
    """Finding 2: the name was resolved three times (check, httpx, FFmpeg). rebind.test
    answers 127.0.0.2 (allowed) first and 127.0.0.1 next: the stream is read from
    127.0.0.2, and the same port on 127.0.0.1 hears nothing."""
    port = free_port()
    with (
        serve(partial(Files, directory=str(hls)), port),
        Listener("127.0.0.1", port).serving() as inside,
    ):
        messages = ndjson(
            streams, {"url": f"http://rebind.test:{port}/index.m3u8", "duration_s": 2}
        )
    assert messages[0]["event"] == "started" and any(m["event"] == "frame" for m in messages)
    assert dns.queries.count("rebind.test") == 1  # resolved once
    assert inside.received == []
