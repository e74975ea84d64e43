"""Shared by the job tests: a real redis-server, a real `python -m gateway.programs.worker`, a
signature-checking webhook receiver, and small helpers over the /api/jobs routes."""

import contextlib
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from gateway.server.jobs.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import MEDIA
from tests.stack import ROOT, free_port, serve_http, stop

TIMEOUT = httpx.Timeout(120.0)
IMAGES = [
    *sorted((MEDIA / "images/real").glob("*.jpg")),
    MEDIA / "images/fake/dfdc_mqzvfufzoq_fr0.jpg",
]
CLIPS = [MEDIA / "videos/real/cvprw2019_demo.mp4", MEDIA / "videos/fake/dfdc_brtujopkby.mp4"]
BAD = {
    "notes.mp4": b"this is not a video\n" * 100,  # unsupported_media (415)
    "empty.jpg": b"",
    "cut.mp4": CLIPS[0].read_bytes()[:4096],  # undecodable_media (422)
}
SECRET = "test-webhook-secret"
REDIS_PASSWORD = "test-redis-password"  # redis_server's requirepass, in the URLs it yields


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A real redis-server (Debian's) on a free port, nothing persisted, killed after; with
    a password (as in Kubernetes), given in the URL: redis://:PASSWORD@127.0.0.1:port/0."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp), "--protected-mode", "yes",
         "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"],
                capture_output=True,
                text=True,
                env=os.environ | {"REDISCLI_AUTH": REDIS_PASSWORD},
            ).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline and process.poll() is None, "redis-server not up"
            time.sleep(0.1)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class WorkerRun:
    process: subprocess.Popen
    log: Path
    metrics_url: str  # its Prometheus endpoint (GATEWAY_JOBS_METRICS_PORT on loopback)


@contextlib.contextmanager
def worker_process(triton_url: str, work_dir: Path, **settings: object) -> Iterator[WorkerRun]:
    """`python -m gateway.programs.worker`, configured only by `settings`; SIGTERM after.
    Its /metrics on a free loopback port unless `settings` names one (two at once, or
    another test's, must not meet on the default)."""
    settings = {"jobs_metrics_port": free_port()} | settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_TRITON_URL": triton_url, "GATEWAY_TRITON_RETRIES": "1"}
    env |= {f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}
    log_path = work_dir / f"worker-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.programs.worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        yield WorkerRun(process, log_path, f"http://127.0.0.1:{settings['jobs_metrics_port']}")
    finally:
        stop(process)


def submit(
    url: str,
    files: list[tuple[str, bytes]],
    headers: dict | None = None,
    **params: object,
) -> httpx.Response:
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(
        url + "/api/jobs", files=parts, params=params, headers=headers or {}, timeout=TIMEOUT
    )


def open_upload(
    url: str, route: str, files: list[tuple[str, bytes]], headers: dict | None = None
) -> tuple[socket.socket, bytes]:
    """A raw connection that has sent a multipart POST's request line and headers: the
    body (returned) is the caller's to send, all at once, in halves or trickled."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    lines = [
        f"POST {route} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    conn = socket.create_connection((host, port))
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return conn, body


def send_rest(conn: socket.socket, data: bytes) -> None:
    """Send, unless the gateway has answered and closed already (a refusal before the body
    is read): its answer is still there to read."""
    with contextlib.suppress(OSError):
        conn.sendall(data)


def answered(conn: socket.socket) -> bool:
    return bool(select.select([conn], [], [], 0)[0])


def read_answer(conn: socket.socket, timeout: float = 60) -> tuple[int, dict]:
    """The status and JSON body the gateway answered on a raw connection."""
    conn.settimeout(timeout)
    response = http.client.HTTPResponse(conn)
    try:
        response.begin()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body) if body else {}


def wait_job(url: str, job_id: str, headers: dict | None = None, timeout: float = 300) -> dict:
    """The job once finished (polling, as a client without the events stream would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{job_id}", headers=headers or {}, timeout=30).json()
        if job["finished"] is not None:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not finished after {timeout}s: {job['progress']}")


def wait_running(url: str, job_id: str, headers: dict | None = None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{job_id}", headers=headers or {}, timeout=30).json()
        if job["progress"]["running"]:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"no item of job {job_id} started")


def ended_items(*logs: Path) -> list[tuple[str, int]]:
    """(job, item) of every "item ended" line: an item finished twice shows up twice."""
    ended = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("message") == "item ended":
                    ended.append((event["job_id"], event["item"]))
    return ended


@dataclass
class Receiver:
    """A webhook receiver: the first `fail_first` deliveries get a 500 (to see retries).
    Each delivery: whether it verifies with `secret`, the body, and what was signed
    (timestamp, signature header, raw body) for checks under other secrets."""

    fail_first: int = 0
    secret: str = SECRET  # the receiving tenant's (gateway/server/jobs/engine.py: webhook_secrets)
    deliveries: list[dict] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    @contextlib.contextmanager
    def serving(self) -> Iterator["Receiver"]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp, signed = self.headers[TIMESTAMP_HEADER], self.headers[SIGNATURE_HEADER]
                valid = verify(receiver.secret, stamp, body, signed, tolerance_s=300)
                receiver.deliveries.append(
                    {"valid": valid, "body": json.loads(body), "signed": (stamp, signed, body)}
                )
                ok = len(receiver.deliveries) > receiver.fail_first
                self.send_response(200 if ok else 500)
                self.end_headers()
                if ok:
                    receiver.received.set()

            def log_message(self, *args: object) -> None:
                return None

        with serve_http(Handler) as port:
            self.url = f"http://127.0.0.1:{port}/hook"
            yield self
