"""The gateway as a service: Triton down, admission control, the CLI, `make run`."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from export.repository import profile_members
from model_repository.local_triton import TritonSettings
from tests.conftest import MEDIA, REPOSITORY, ROOT, Gateway, free_port, start_gateway, wait_for
from tests.stack import LONG_CLIP, OBAMA, metric

# The full tier only (make test): gateway processes.
pytestmark = pytest.mark.stack


IN_FLIGHT = "gateway_requests_in_flight"
CLIP = MEDIA / "videos/fake/cvprw2019_demo_fake.mp4"


def test_without_triton_the_gateway_is_alive_not_ready_and_says_503(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with start_gateway(nowhere, tmp_path) as gateway:
        assert httpx.get(gateway.url + "/healthz").status_code == 200
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        response = httpx.post(
            gateway.url + "/api/detect", files={"file": ("o.jpg", OBAMA.read_bytes())}, timeout=60
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "triton_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert httpx.get(gateway.url + "/api").json()["status"] == "unavailable"
        assert list(gateway.uploads.iterdir()) == []
        metrics = httpx.get(gateway.url + "/metrics").text
        assert 'gateway_triton_errors_total{code="triton_unavailable"}' in metrics


async def trickle(url: str, seconds: float) -> int:
    """An upload that sends its body slowly."""

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(int(seconds / 0.1)):
            await asyncio.sleep(0.1)
            yield b"\xff"
        yield b"\r\n--b--\r\n"

    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            url + "/api/detect",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        return response.status_code


async def while_busy(url: str) -> tuple[int, httpx.Response, int]:
    """A long analysis holds the one slot: an ordinary request is refused meanwhile, while a
    trickled upload is received (receiving holds no slot)."""
    async with httpx.AsyncClient(timeout=120) as client:
        busy = asyncio.create_task(
            client.post(
                url + "/api/detect",
                files={"file": ("long.mp4", LONG_CLIP.read_bytes())},
                params={"frames": 300},
            )
        )
        while metric(url, IN_FLIGHT) < 1:
            await asyncio.sleep(0.05)
        slow = asyncio.create_task(trickle(url, 2.0))
        image = {"file": ("o.jpg", OBAMA.read_bytes())}
        refused = await client.post(url + "/api/detect", files=image)
        slow_status = await slow
        busy.cancel()  # the client goes away: its analysis stops, its slot is freed
        return slow_status, refused, (await asyncio.gather(busy, return_exceptions=True))[0]


def test_beyond_max_in_flight_requests_get_429(lite_triton: TritonSettings, tmp_path: Path) -> None:
    with start_gateway(lite_triton.grpc_url, tmp_path, max_in_flight=1) as gateway:
        slow_status, refused, _ = asyncio.run(while_busy(gateway.url))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert "retry-after" in refused.headers
        # Received and sniffed without a slot: answered on its own (a 1-byte-a-tick "image").
        assert slow_status == 415
        deadline = time.monotonic() + 30
        while metric(gateway.url, IN_FLIGHT) and time.monotonic() < deadline:
            time.sleep(0.05)
        ok = httpx.post(
            gateway.url + "/api/detect", files={"file": ("o.jpg", OBAMA.read_bytes())}, timeout=120
        )
        assert ok.status_code == 200, "the slot is free again"
        assert list(gateway.uploads.iterdir()) == []


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.programs.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_cli_through_the_gateway_and_straight_to_triton_agree(
    gateway: Gateway, triton: TritonSettings
) -> None:
    via_gateway = cli("detect", str(CLIP), "--url", gateway.url, "--frames", "8")
    assert via_gateway.returncode == 0, via_gateway.stderr
    assert "P(fake)" in via_gateway.stdout and "efficientnet_b7" in via_gateway.stdout
    assert "skipped: random weights" in via_gateway.stdout  # not run: it cannot vote
    as_json = cli("detect", str(CLIP), "--url", gateway.url, "--frames", "8", "--json")
    direct = cli("detect", str(CLIP), "--triton", triton.grpc_url, "--frames", "8", "--json")
    assert direct.returncode == 0, direct.stderr
    a, b = json.loads(as_json.stdout), json.loads(direct.stdout)
    assert a["verdict"] == b["verdict"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert [len(f["faces"]) for f in a["frames"]] == [len(f["faces"]) for f in b["frames"]]


def test_the_cli_reports_errors_plainly(gateway: Gateway, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nothing")
    result = cli("detect", str(bad), "--url", gateway.url)
    assert result.returncode == 1 and "unsupported_media" in result.stderr
    result = cli("detect", str(tmp_path / "missing.mp4"), "--url", gateway.url)
    assert result.returncode == 2 and "no such file" in result.stderr
    result = cli("detect", str(CLIP), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach" in result.stderr


def run_ports() -> dict[str, int]:
    return {name: free_port() for name in ("gateway", "http", "grpc", "metrics")}


def make_run(ports: dict[str, int], log: Path, *extra: str) -> subprocess.Popen:
    """`make run`'s launcher (lite) on `ports`, its output into `log`."""
    args = ["--profile", "lite", "--port", str(ports["gateway"]), *extra]
    for name in ("http", "grpc", "metrics"):
        args += [f"--triton-{name}-port", str(ports[name])]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.programs.local", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_make_run_serves_the_gateway_over_a_local_triton_and_ctrl_c_stops_both(
    exported: Path, tmp_path: Path
) -> None:
    ports = run_ports()
    port, grpc = ports["gateway"], ports["grpc"]
    log = tmp_path / "run.log"
    process = make_run(ports, log)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", process, log, timeout=300)
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/detect",
            files={"file": ("o.jpg", OBAMA.read_bytes())},
            timeout=120,
        )
        assert response.status_code == 200
        assert [m["name"] for m in response.json()["models"]] == profile_members(REPOSITORY, "lite")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "Ctrl-C stops both" in text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert subprocess.run(["pgrep", "-f", f"grpc-port={grpc}"], capture_output=True).returncode


@pytest.fixture
def exported_repository(request: pytest.FixtureRequest) -> Path:
    """This checkout's exported repository, or DEEPFAKE_EXPORTED_REPOSITORY: another
    checkout's, which Triton only reads (--triton-repository)."""
    elsewhere = os.environ.get("DEEPFAKE_EXPORTED_REPOSITORY")
    return Path(elsewhere) if elsewhere else request.getfixturevalue("exported")


def session_processes(session: int) -> list[str]:
    """The command lines of the processes in a session (Triton's and its stubs')."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == session:  # after ")": state, ppid, pgrp, session
            found.append(cmdline.decode(errors="replace"))
    return found


def port_is_free(port: int) -> bool:
    """Free for the next `make run`: bindable as servers bind (SO_REUSEADDR: the closed
    connections' TIME_WAIT does not count, a listener does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_make_run_stops_triton_on_sigterm_and_sighup(
    exported_repository: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """A supervisor's SIGTERM or a closed terminal's SIGHUP stops `make run` as Ctrl-C
    does: no tritonserver or backend stub of it left (they run in Triton's own session,
    out of the terminal's reach), and its ports free."""
    ports = run_ports()
    log = tmp_path / "run.log"
    process = make_run(ports, log, "--triton-repository", str(exported_repository))
    session = None
    try:
        wait_for(f"http://127.0.0.1:{ports['gateway']}/readyz", process, log, timeout=300)
        [triton] = subprocess.run(
            ["pgrep", "-f", f"grpc-port={ports['grpc']}"], capture_output=True, text=True
        ).stdout.split()
        session = os.getsid(int(triton))
        assert session != os.getsid(process.pid)  # out of the terminal's reach
        assert any("tritonserver" in c for c in session_processes(session))
        process.send_signal(stop)
        assert process.wait(90) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
        if session is not None and session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)  # leave nothing behind, then fail below
    assert session is not None and session_processes(session) == []
    assert all(port_is_free(port) for port in ports.values()), ports


def test_a_stalled_upload_times_out_with_408(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with start_gateway(nowhere, tmp_path, upload_timeout_s=1) as gateway:
        assert asyncio.run(trickle(gateway.url, 4.0)) == 408
        assert list(gateway.uploads.iterdir()) == []
        assert httpx.get(gateway.url + "/healthz").status_code == 200
