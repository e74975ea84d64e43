"""One request cannot take the gateway down, nor a few slow clients lock it: against a real
gateway process over the lite Triton, with real uploads over real sockets.

- memory: a 4K clip at 300 frames, and four 4K uploads at once, stay far under the pod's
  3 GiB limit (frames are reduced as decoded, crops dropped once scored);
- CPU: a deadline ends an analysis with 504; a client that goes away (plain or streaming
  route, before or during the analysis) stops it: Triton stops counting inferences, the
  threads go idle, then the slot and the temp file are released;
- slow clients: uploads trickling a byte a second neither hold analysis slots nor slow the
  others down, and are dropped with 408 below the minimum rate.

The figures go to results/reliability.json under "bounds" (tests/RELIABILITY.md quotes them).
"""

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import psutil
import pytest

from model_repository.local_triton import TritonSettings
from tests.conftest import Gateway, start_gateway, write_results
from tests.stack import (
    LONG_CLIP,
    OBAMA,
    TIMEOUT,
    TWO_PEOPLE,
    detect_at_once,
    metric,
    wait_until,
)

POD_LIMIT_MB = 3 * 1024  # deploy/k8s/base/gateway/deployment.yaml
FIGURES: dict[str, object] = {}
FRAMES = 300  # a long analysis: far more than a client gone early may cost


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    write_results("bounds", FIGURES)


def black_4k_clip(path: Path, seconds: int) -> Path:
    """The issue's clip: black 3840x2160 at 30 fps, a few KB of H.264."""
    source = ("-f", "lavfi", "-i", "color=black:s=3840x2160:r=30", "-t", str(seconds))
    encoder = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    subprocess.run(["ffmpeg", "-loglevel", "error", *source, *encoder, str(path)], check=True)
    return path


class PeakRss:
    """The gateway process's resident memory, sampled every 20 ms while inside."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.baseline = process.memory_info().rss
        self.peak = self.baseline
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()

    def figures(self) -> dict[str, int]:
        return {"rss_baseline_mb": self.baseline >> 20, "rss_peak_mb": self.peak >> 20}


def triton_inferences(triton: TritonSettings) -> float:
    text = httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_count{") and 'model="deepfake_ensemble"' in line
    )


def open_upload(url: str, route: str, path: Path, body_rate: float | None = None, **params):
    """A raw socket that posted `path` as multipart to `route` (all at once, unless trickled
    by the caller): the test decides when the client goes away, by closing it."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    boundary = "bounds0123456789"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    target = route + ("?" + urlencode(params) if params else "")
    request = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    conn = socket.create_connection((host, port))
    conn.sendall(request if body_rate else request + body)
    return conn, body


def logged(gateway: Gateway, route: str) -> int:
    """Requests to `route` the gateway has logged as ended."""
    lines = gateway.log.read_text().splitlines()
    return sum(f'"route": "{route}"' in line and '"message": "request"' in line for line in lines)


def triton_pending(triton: TritonSettings) -> float:
    """Requests received by any of Triton's models and not yet executing."""
    text = httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_pending_request_count{")
    )


def triton_idle(triton: TritonSettings, seconds: float) -> bool:
    """Nothing queued in Triton, and no inference completed over `seconds`: the batches a
    gone client had already sent are done (a gRPC call cannot be taken back)."""
    before = triton_inferences(triton)
    time.sleep(seconds)
    return triton_pending(triton) == 0 and triton_inferences(triton) == before


def busy_cpu_s(process: psutil.Process, seconds: float = 1.0) -> float:
    """CPU seconds the gateway spends over `seconds` of wall time."""
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return (after.user + after.system) - (before.user + before.system)


@pytest.fixture(scope="module")
def gateway(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with start_gateway(
        lite_triton.grpc_url, tmp_path_factory.mktemp("bounds"), max_in_flight=4
    ) as gw:
        assert gw.client.detect_response(OBAMA).status_code == 200  # models loaded, warm
        yield gw


# --- memory -------------------------------------------------------------------------------------


def test_a_4k_clip_at_300_frames_stays_far_under_the_pod_limit(
    gateway: Gateway, tmp_path: Path
) -> None:
    clip = black_4k_clip(tmp_path / "black-4k.mp4", 10)
    with PeakRss(gateway.process) as rss:
        response = gateway.client.detect_response(clip, frames=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["verdict"] == "no_face" and len(answer["frames"]) == 300
    FIGURES["4k_black_10s_300_frames"] = rss.figures() | {
        "upload_kb": clip.stat().st_size >> 10,
        "seconds": round(answer["timings_ms"]["total"] / 1000, 1),
    }
    assert rss.peak >> 20 < POD_LIMIT_MB // 2, FIGURES


def test_four_4k_uploads_at_once_stay_far_under_the_pod_limit(
    gateway: Gateway, tmp_path: Path
) -> None:
    clip = black_4k_clip(tmp_path / "black-4k.mp4", 2)
    data = clip.read_bytes()

    with PeakRss(gateway.process) as rss:
        responses = detect_at_once(gateway.url, data, 4, TIMEOUT, frames=32)
    assert [r.status_code for r in responses] == [200] * 4
    FIGURES["4k_black_x4_32_frames"] = rss.figures()
    assert rss.peak >> 20 < POD_LIMIT_MB // 2, FIGURES


def test_the_request_budgets_refuse_what_is_beyond_them(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    """Decoded pixels are counted frame by frame as decoded, faces as found: 422 past either."""
    with start_gateway(
        lite_triton.grpc_url, tmp_path, max_decoded_megapixels=100, max_request_faces=1
    ) as gateway:
        clip = black_4k_clip(tmp_path / "black-4k.mp4", 1)  # 30 frames of 8.3 megapixels
        for path, params in ((clip, {"frames": 30}), (TWO_PEOPLE, {})):
            response = gateway.client.detect_response(path, **params)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "media_limit_exceeded"
        assert gateway.client.detect_response(OBAMA).status_code == 200, (
            "one face is within the budget"
        )
        assert list(gateway.uploads.iterdir()) == []


# --- CPU time -----------------------------------------------------------------------------------


def test_the_deadline_ends_an_analysis_with_504_and_frees_its_slot(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    with start_gateway(
        lite_triton.grpc_url, tmp_path, analysis_timeout_s=1, max_in_flight=1
    ) as gateway:
        response = gateway.client.detect_response(LONG_CLIP, frames=300)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "analysis_timeout"
        assert metric(gateway.url, "gateway_requests_in_flight") == 0
        assert list(gateway.uploads.iterdir()) == []


@pytest.mark.parametrize("route", ["/api/detect", "/api/detect/stream"])
def test_a_client_gone_mid_analysis_stops_it_then_frees_its_slot(
    gateway: Gateway, lite_triton: TritonSettings, route: str
) -> None:
    before = triton_inferences(lite_triton)
    conn, _ = open_upload(gateway.url, route, LONG_CLIP, frames=FRAMES)
    try:
        wait_until(lambda: triton_inferences(lite_triton) > before, what="no inference began")
    finally:
        conn.close()
    closed = time.monotonic()
    wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight") == 0, what="slot held")
    released_s = time.monotonic() - closed
    wait_until(lambda: not list(gateway.uploads.iterdir()), timeout=1, what="temp file left")
    # Batches already sent are in Triton's queue and still finish; nothing new may follow:
    # once Triton's queues are empty, the count must stay still.
    drained_s = wait_until(lambda: triton_idle(lite_triton, 0.5), what="Triton kept scoring")
    stopped = triton_inferences(lite_triton)
    idle_cpu_s = busy_cpu_s(gateway.process)
    assert triton_inferences(lite_triton) == stopped, "Triton still scores the gone client's faces"
    # Counted, not timed: an analysis that ran on to its end would score ~300 faces (one a
    # frame); a stopped one, those in flight when the client went.
    scored = stopped - before
    assert scored < FRAMES // 2, f"{scored} faces scored for a client gone early"
    # A whole analysis keeps both cores busy (about 2 CPU-s a second); stopped, the gateway idles.
    assert idle_cpu_s < 0.3, idle_cpu_s
    FIGURES[f"gone_mid_analysis{route.replace('/', '_')}"] = {
        "slot_released_s": round(released_s, 2),
        "triton_queue_drained_s": round(drained_s, 2),
        "cpu_s_in_the_next_second": round(idle_cpu_s, 2),
        "faces_scored_of_300": scored,
    }
    assert gateway.client.detect_response(OBAMA).status_code == 200


@pytest.mark.parametrize("route", ["/api/detect", "/api/detect/stream"])
def test_a_client_gone_right_after_its_upload_frees_its_slot(gateway: Gateway, route: str) -> None:
    answered = logged(gateway, route)
    conn, _ = open_upload(gateway.url, route, LONG_CLIP, frames=300)
    conn.shutdown(socket.SHUT_RDWR)
    conn.close()
    closed = time.monotonic()
    # The upload is read from the socket's buffer: the request runs, then ends.
    wait_until(lambda: logged(gateway, route) > answered, what="the request never ended")
    wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight") == 0, what="slot held")
    wait_until(lambda: not list(gateway.uploads.iterdir()), timeout=1, what="temp file left")
    FIGURES[f"gone_after_upload{route.replace('/', '_')}"] = {
        "slot_released_s": round(time.monotonic() - closed, 2)
    }
    assert busy_cpu_s(gateway.process) < 0.3


# --- slow clients -------------------------------------------------------------------------------


def test_slow_uploads_hold_no_slot_and_the_others_are_served(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    slots, trickling = 2, 6
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path,
        max_in_flight=slots,
        upload_min_bytes_per_s=1024,
        upload_grace_s=4,
    ) as gateway:
        start = time.monotonic()
        ordinary = gateway.client.detect_response(OBAMA)
        alone_s = time.monotonic() - start
        assert ordinary.status_code == 200
        slow = [open_upload(gateway.url, "/api/detect", OBAMA, body_rate=1) for _ in range(6)]
        for conn, body in slow:
            conn.sendall(body[:1])
        beside_s = []
        for _ in range(3):
            start = time.monotonic()
            response = gateway.client.detect_response(OBAMA)
            beside_s.append(round(time.monotonic() - start, 2))
            assert response.status_code == 200, response.text
        assert metric(gateway.url, "gateway_uploads_receiving") == trickling
        statuses = []
        for conn, _ in slow:
            conn.settimeout(30)
            statuses.append(int(conn.recv(4096).split(b" ", 2)[1]))  # 408 after the grace
            conn.close()
        assert statuses == [408] * trickling
        wait_until(lambda: not list(gateway.uploads.iterdir()), timeout=1, what="temp file left")
        FIGURES["slow_uploads"] = {
            "slots": slots,
            "trickling_uploads": trickling,
            "ordinary_alone_s": round(alone_s, 2),
            "ordinary_beside_them_s": beside_s,
        }
