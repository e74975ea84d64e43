"""Real processes for tests, benchmarks and load tests: free ports and `python -m gateway`."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class GatewayRun:
    url: str
    uploads: Path  # its temporary upload folder: empty between requests
    log: Path
    pid: int


@contextlib.contextmanager
def gateway_process(
    triton_url: str, work_dir: Path, ready: str = "/healthz", **settings: object
) -> Iterator[GatewayRun]:
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
        yield GatewayRun(url, uploads, log_path, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
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
