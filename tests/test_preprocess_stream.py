"""preprocess.stream read through preprocess/egress.py, in process, with real FFmpeg
(PyAV) and real sources on loopback: HLS whose segments sit on a refused host, an HTTP
server that redirects FFmpeg's user agent only, an RTSP server answering 302. The policy
may reach 127.0.0.2 only (the allowed test network); what sits on 127.0.0.1 must hear
nothing."""

import contextlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from preprocess.egress import BadUrl, Unreachable, networks
from preprocess.stream import StreamPolicy, StreamRead, read_stream
from tests.egress_support import Listener, rtsp_redirecting
from tests.stack import serve_http

ALLOWED = networks(["127.0.0.2/32"])
READ = StreamRead(fps=2, max_s=3, timeout_s=5)


@pytest.fixture(scope="module")
def hls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-s VOD playlist of 1-s MPEG-TS segments (index.m3u8, index0.ts, ...)."""
    folder = tmp_path_factory.mktemp("hls")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
         "-t", "3", "-c:v", "libx264", "-g", "10", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", str(folder / "index.m3u8")],
        check=True,
        timeout=60,
    )  # fmt: skip
    return folder


@contextlib.contextmanager
def serve(handler: object, host: str = "127.0.0.2") -> Iterator[int]:
    with serve_http(handler, host) as port:  # type: ignore[arg-type]
        yield port


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def files(folder: Path) -> object:
    return partial(Quiet, directory=str(folder))


def read(url: str, policy: StreamPolicy | None = None) -> int:
    policy = policy or StreamPolicy(allowed_networks=ALLOWED)
    return read_stream(policy.resolve(url), policy, READ, lambda frame: None, threading.Event())


def test_hls_is_fetched_by_the_module_and_read(hls: Path) -> None:
    with serve(files(hls)) as port:
        assert read(f"http://127.0.0.2:{port}/index.m3u8") >= 4  # ~2 frames/s for 3 s


def test_hls_segments_on_a_refused_host_are_not_fetched(hls: Path, tmp_path: Path) -> None:
    """The playlist is on 127.0.0.2 (allowed), its segments on 127.0.0.1 (not): FFmpeg
    used to fetch them unchecked; now no request reaches 127.0.0.1."""
    with Listener("127.0.0.1").serving() as loopback:
        lines = (hls / "index.m3u8").read_text().splitlines()
        moved = [f"http://127.0.0.1:{loopback.port}/{x}" if x.endswith(".ts") else x for x in lines]
        (tmp_path / "index.m3u8").write_text("\n".join(moved) + "\n")
        with serve(files(tmp_path)) as port, pytest.raises(Unreachable):
            read(f"http://127.0.0.2:{port}/index.m3u8")
    assert loopback.received == []


def test_a_redirect_for_ffmpeg_only_is_never_followed(hls: Path) -> None:
    """The server answers the checker's user agent with media and FFmpeg's (Lavf) with a
    redirect to 127.0.0.1: the module is the only one fetching, so nothing goes there."""
    with Listener("127.0.0.1").serving() as loopback:

        class Cloaking(Quiet):
            def do_GET(self) -> None:
                if "Lavf" in self.headers.get("User-Agent", ""):
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{loopback.port}/x.m3u8")
                    self.end_headers()
                    return
                super().do_GET()

        with serve(partial(Cloaking, directory=str(hls))) as port:
            assert read(f"http://127.0.0.2:{port}/index.m3u8") >= 4
    assert loopback.received == []


def test_an_rtsp_redirect_is_refused() -> None:
    """FFmpeg's RTSP client follows a 302 by itself: through the relay it never sees one."""
    with Listener("127.0.0.1").serving() as loopback:
        location = f"rtsp://127.0.0.1:{loopback.port}/x"
        with rtsp_redirecting(location, host="127.0.0.2") as port, pytest.raises(Unreachable):
            read(f"rtsp://127.0.0.2:{port}/cam")
    assert loopback.received == []


def test_closed_port_and_not_media_read_the_same() -> None:
    with Listener("127.0.0.2").serving() as open_port, pytest.raises(Unreachable) as not_media:
        read(f"rtsp://127.0.0.2:{open_port.port}/x")
    closed = Listener("127.0.0.2")
    with closed.serving():
        pass  # now closed
    with pytest.raises(Unreachable) as refused:
        read(f"rtsp://127.0.0.2:{closed.port}/x")
    assert (not_media.value.code, not_media.value.message) == (
        refused.value.code,
        refused.value.message,
    )


def test_a_nul_byte_is_a_bad_url() -> None:
    with Listener("127.0.0.1", 0).serving() as loopback, pytest.raises(BadUrl):
        read(f"rtsp://127.0.0.1:{loopback.port}\x00@93.184.216.34/x")
    assert loopback.received == []
