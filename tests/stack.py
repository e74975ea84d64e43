"""The one home of the tests', benchmarks' and load tests' helpers for real processes and
shared media: where ../shared is, the images and clips they share, how long a request may take,
the gateway's client, free ports, a local Triton and `python -m gateway` as processes."""

import contextlib
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from gateway.clients.client import GatewayClient
from model_repository.local_triton import LocalTriton, TritonSettings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
ASSETS = SHARED / "assets"
# The shared clips the tests name (the rest go by globbing MEDIA/videos).
FAKE_CLIP = MEDIA / "videos/fake/ffpp_c23_Deepfakes_519_515.mp4"  # 640x480; lite: 0.95
REAL_CLIP = MEDIA / "videos/real/ffpp_c23_original_004.mp4"  # 180 KB, moov last; lite: 0.06
BIG_CLIP = MEDIA / "videos/real/cvprw2019_demo.mp4"  # about 2 MB, 1280x720
LONG_CLIP = MEDIA / "videos/real/ffpp_c23_original_519.mp4"  # 30 s, 751 frames
OBAMA = MEDIA / "images/real/face_recognition_obama.jpg"  # one face
TWO_PEOPLE = MEDIA / "images/real/face_recognition_two_people.jpg"
# How long a test waits on the real gateway's answer: a request that takes longer has hung.
TIMEOUT = httpx.Timeout(300.0)
# No connection kept alive: each request opens its own, as httpx.post does, so a test that
# stops or pauses a process, or fills the gateway's connections, never meets an idle one.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_free_ports(**fields: Any) -> TritonSettings:
    """A local Triton's settings (`fields`) with its three ports free on this machine."""
    return TritonSettings(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **fields
    )


def triton_process(profile: str, work_dir: Path, config_name: str = "cpu") -> LocalTriton:
    """A local Triton for `profile` on free ports, not started yet (`with` starts it);
    `config_name` cpu, or cpu_fast (export/runtimes.py)."""
    settings = on_free_ports(
        profile=profile,
        config_name=config_name,
        # Our own backend folder: other Tritons on the machine may be assembling theirs.
        work_dir=work_dir / f"triton-{profile}",
    )
    return LocalTriton(settings)


@contextlib.contextmanager
def local_triton(profile: str, work_dir: Path, config_name: str = "cpu") -> Iterator[LocalTriton]:
    """A real tritonserver serving `profile` on free ports, stopped at the end."""
    with triton_process(profile, work_dir, config_name) as server:
        yield server


@dataclass(frozen=True)
class Gateway:
    """A running `python -m gateway`."""

    url: str
    uploads: Path  # its temporary upload folder: empty between requests
    log: Path
    pid: int

    @cached_property
    def process(self) -> "psutil.Process":  # noqa: F821 — imported where it is used
        """For signals, memory and CPU readings."""
        import psutil

        return psutil.Process(self.pid)

    @cached_property
    def client(self) -> GatewayClient:
        """The gateway's Python client (gateway_client): `detect_response` for any answer."""
        return gateway_client(self.url)


def gateway_client(url: str, timeout: httpx.Timeout = TIMEOUT) -> GatewayClient:
    """A GatewayClient of the gateway at `url` for the tests: no connection kept alive."""
    return GatewayClient(http=httpx.Client(base_url=url, timeout=timeout, limits=NO_KEEPALIVE))


def ok_answer(response: httpx.Response) -> dict:
    """The answer of a request that must succeed: 200, or the test fails with the gateway's
    own words."""
    assert response.status_code == 200, response.text
    return response.json()


@contextlib.contextmanager
def gateway_process(
    triton_url: str, work_dir: Path, ready: str = "/healthz", **settings: object
) -> Iterator[Gateway]:
    """`python -m gateway` on a free port, configured only by `settings` (GATEWAY_*
    variables of the caller's environment are dropped: an API key set in a shell must not
    change what a test or a benchmark sees); stopped with SIGTERM, as Kubernetes does."""
    port = free_port()
    uploads = work_dir / f"uploads-{port}"
    uploads.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_PORT": str(port), "GATEWAY_TRITON_URL": triton_url}
    env |= {"GATEWAY_TMP_DIR": str(uploads), "GATEWAY_JOBS_DIR": str(work_dir / f"jobs-{port}")}
    env |= {f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}
    log_path = work_dir / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + ready, process, log_path)
        yield Gateway(url, uploads, log_path, process.pid)
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, as Kubernetes stops a pod; SIGKILL if it is still there after `timeout_s`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until `url` answers 200; the log's tail if the process dies or it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout}s: {log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def measured_gateway(triton_url: str, work_dir: Path, **settings: object) -> Iterator[Gateway]:
    """gateway_process for `make bench`, `make loadtest` and the golden record: ready only
    once Triton is, and no access line per request (it would cost the clients)."""
    settings = {"log_level": "warning"} | settings
    with gateway_process(triton_url, work_dir, ready="/readyz", **settings) as gateway:
        yield gateway


def metric(gateway_url: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics, by its full name (`..._total`, `..._count`)
    and labels; 0 when it has none yet. Tests compare it before and after what they do."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(gateway_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def wait_until(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> float:
    """Seconds it took for `condition` to hold; TimeoutError(`what`) past `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(0.02)
    return time.monotonic() - start


# Debian's chromium: Playwright's own browser download does not work on these machines.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HEADLESS = ("--headless", "--no-sandbox", "--disable-gpu")


@contextlib.contextmanager
def chromium(*args: str) -> Iterator["Browser"]:  # noqa: F821 — imported where it is used
    """A headless Chromium driven by Playwright, with extra command-line `args`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*HEADLESS, *args])
        try:
            yield browser
        finally:
            browser.close()


def detect_at_once(
    url: str, data: bytes, count: int, timeout: float = 600, **params: object
) -> list[httpx.Response]:
    """`count` uploads of `data` to /api/detect, all sent at the same moment."""
    import asyncio

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            upload = {"file": ("clip.mp4", data)}
            sends = (
                client.post(url + "/api/detect", files=upload, params=params) for _ in range(count)
            )
            return await asyncio.gather(*sends)

    return asyncio.run(burst())


@contextlib.contextmanager
def serve_http(
    handler: Callable[..., http.server.BaseHTTPRequestHandler],
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[int]:
    """A threaded HTTP server with `handler` on loopback while the block runs (HTTPS with
    `tls`, a server context: tests/egress_support.py `TestCa`); its port."""
    server = http.server.ThreadingHTTPServer((host, port), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
