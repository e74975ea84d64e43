"""Faults and overload against real processes: two lite Triton replicas this module starts
(and kills, pauses, restarts), real gateways over them, real uploads.

- a Triton killed during a request: 503 with Retry-After, the gateway alive; restarted: served
  again without restarting the gateway;
- a paused (SIGSTOP) Triton: 504 after the deadline, slot and temp file released;
- two replicas: requests spread over both; one killed under load: no request lost;
- SIGTERM: the in-flight request finishes, new ones are refused, the process exits in bound;
- a burst beyond the admission queue: 429 with Retry-After, the gateway's RSS bounded.

The figures go to results/reliability.json (tests/RELIABILITY.md quotes them).
"""

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.server.model_server import channel_args
from gateway.server.targets import grpc_target
from model_repository.local_triton import LocalTriton
from tests.conftest import Gateway, free_port, start_gateway, write_results
from tests.stack import (
    BIG_CLIP,
    OBAMA,
    TIMEOUT,
    detect_at_once,
    metric,
    triton_process,
    wait_until,
)

CLIP = BIG_CLIP
FIGURES: dict[str, object] = {}


class Replica:
    """A lite Triton this module owns: it may kill, pause and restart it on the same ports."""

    def __init__(self, server: LocalTriton) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.settings.grpc_url

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs (its own process group)."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.server.process is not None
        self.server.process.wait(30)

    def pause(self) -> None:
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def ensure_up(self) -> None:
        process = self.server.process
        if process is None or process.poll() is not None:
            self.server.start()
            self.server.wait_ready()

    def inferences(self) -> float:
        """Successful ensemble requests, from this Triton's own Prometheus metrics."""
        port = self.server.settings.metrics_port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nv_inference_request_success")
            and 'model="deepfake_ensemble"' in line
        )


@pytest.fixture(scope="module")
def replicas(
    exported: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Replica, Replica]]:
    a = triton_process("lite", tmp_path_factory.mktemp("replica-a"))
    b = triton_process("lite", tmp_path_factory.mktemp("replica-b"))
    try:
        for server in (a, b):
            server.start()
        for server in (a, b):
            server.wait_ready()
        yield Replica(a), Replica(b)
    finally:
        for server in (a, b):
            if server.process is not None and server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGCONT)  # a paused one must hear SIGTERM
            server.stop()
        write_results("faults", FIGURES)


@pytest.fixture
def replica(replicas: tuple[Replica, Replica]) -> Replica:
    """Replica A, running and not paused, whatever an earlier test did to it."""
    a = replicas[0]
    a.ensure_up()
    a.resume()
    return a


def in_background(call) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()
    return thread, result


def test_a_triton_killed_mid_request_is_503_and_served_again_after_its_restart(
    replica: Replica, tmp_path: Path
) -> None:
    with start_gateway(replica.url, tmp_path) as gateway:
        assert gateway.client.detect_response(OBAMA).status_code == 200
        # Paused first, so the request is surely at Triton (or on its way) when it dies.
        replica.pause()
        thread, result = in_background(lambda: gateway.client.detect_response(OBAMA))
        wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight") == 1, what="in flight")
        time.sleep(1.0)  # decoding and face detection done: the gateway waits on Triton
        replica.kill()
        thread.join(60)
        response: httpx.Response = result["value"]
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "triton_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert httpx.get(gateway.url + "/healthz").status_code == 200, "the gateway is alive"
        assert list(gateway.uploads.iterdir()) == []

        replica.ensure_up()  # the same ports; the gateway is not touched
        started = time.monotonic()
        wait_until(
            lambda: httpx.get(gateway.url + "/readyz").status_code == 200,
            timeout=60,
            what="the gateway never saw Triton come back",
        )
        again = gateway.client.detect_response(OBAMA)
        assert again.status_code == 200, again.text
        assert gateway.process.is_running(), "served again by the same gateway process"
        FIGURES["killed_mid_request"] = {
            "status": response.status_code,
            "served_again_s_after_triton_ready": round(time.monotonic() - started, 1),
        }


def test_a_paused_triton_hits_the_deadline_504_and_the_slot_is_released(
    replica: Replica, tmp_path: Path
) -> None:
    with start_gateway(replica.url, tmp_path, triton_timeout_s=2, max_in_flight=1) as gateway:
        assert gateway.client.detect_response(OBAMA).status_code == 200
        replica.pause()
        try:
            started = time.monotonic()
            response = gateway.client.detect_response(OBAMA)
            waited = time.monotonic() - started
            assert response.status_code == 504, response.text
            assert response.json()["error"]["code"] == "triton_timeout"
            assert list(gateway.uploads.iterdir()) == []
            assert metric(gateway.url, "gateway_requests_in_flight") == 0
            assert httpx.get(gateway.url + "/readyz").status_code == 503
        finally:
            replica.resume()
        # max_in_flight=1: this is answered only if the timed-out request gave its slot back.
        again = gateway.client.detect_response(OBAMA)
        assert again.status_code == 200, again.text
        FIGURES["paused_triton"] = {"status": 504, "answered_after_s": round(waited, 1)}


async def load(url: str, total: int, concurrency: int, on_done) -> list[int]:
    """`total` detections, `concurrency` at a time; on_done(n) after each answer."""
    statuses: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    data = OBAMA.read_bytes()

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            try:
                response = await client.post(
                    url + "/api/detect", files={"file": ("o.jpg", data)}, timeout=TIMEOUT
                )
                statuses.append(response.status_code)
            except httpx.HTTPError:
                statuses.append(0)  # no answer at all: lost as much as a 5xx
            await asyncio.to_thread(on_done, len(statuses))

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def test_two_replicas_share_the_load_and_killing_one_loses_no_request(
    replicas: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = replicas
    for replica in (a, b):
        replica.ensure_up()
        replica.resume()
    urls = f"{a.url},{b.url}"
    with start_gateway(urls, tmp_path, max_in_flight=4, triton_retries=1) as gateway:
        before = [a.inferences(), b.inferences()]
        for _ in range(8):
            assert gateway.client.detect_response(OBAMA).status_code == 200
        served = [a.inferences() - before[0], b.inferences() - before[1]]
        assert min(served) >= 2, f"round robin over both replicas: {served}"

        total, kill_after = 40, 8

        def maybe_kill(done: int) -> None:
            # Paused a moment before it dies, so calls are surely in flight on it when it
            # goes: those must be retried on A, not lost.
            if done == kill_after:
                b.pause()
                time.sleep(1.5)
                b.kill()

        statuses = asyncio.run(load(gateway.url, total, concurrency=4, on_done=maybe_kill))
        assert b.server.process is not None and b.server.process.poll() is not None
        lost = sum(s != 200 for s in statuses)
        retries = int(metric(gateway.url, "gateway_triton_retries_total"))
        logged = sum(
            json.loads(line).get("message") == "triton unavailable; retrying"
            for line in gateway.log.read_text().splitlines()
            if line.startswith("{")
        )
        assert logged == retries  # each retry is both counted and logged
        FIGURES["replica_killed_under_load"] = {
            "requests": total,
            "killed_after": kill_after,
            "concurrency": 4,
            "lost": lost,
            "statuses": dict(Counter(statuses)),
            "retried_calls": retries,
            "spread_before_kill": served,
        }
        assert lost == 0, Counter(statuses)
        assert list(gateway.uploads.iterdir()) == []


def test_sigterm_drains_the_request_in_flight_and_refuses_new_ones(
    replica: Replica, tmp_path: Path
) -> None:
    bound = 60
    with start_gateway(replica.url, tmp_path, shutdown_timeout_s=bound) as gateway:
        thread, result = in_background(lambda: gateway.client.detect_response(CLIP, frames=32))
        wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight") == 1, what="in flight")
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not listening(gateway), timeout=10, what="still accepting")
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/healthz", timeout=5)
        thread.join(bound + 30)
        response: httpx.Response = result["value"]
        assert response.status_code == 200, response.text
        assert len(response.json()["frames"]) == 32, "the whole analysis, not cut short"
        code = gateway.process.wait(bound + 10)
        FIGURES["sigterm"] = {
            "in_flight_request": response.status_code,
            "exit_code": code,
            "exited_after_s": round(time.monotonic() - started, 1),
            "bound_s": bound,
        }
        # uvicorn drains, then ends by the signal it got (-15): a clean stop, not a crash.
        assert code in (0, -signal.SIGTERM)
        assert list(gateway.uploads.iterdir()) == []


def listening(gateway: Gateway) -> bool:
    port = int(gateway.url.rsplit(":", 1)[1])
    return any(
        c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in gateway.process.net_connections()
    )


def test_a_burst_beyond_the_queue_is_refused_with_429_and_memory_stays_bounded(
    replica: Replica, tmp_path: Path
) -> None:
    burst, limit, queue = 24, 2, 2
    # Every upload is received (max_uploads): admission alone decides.
    with start_gateway(
        replica.url, tmp_path, max_in_flight=limit, max_queue=queue, max_uploads=burst
    ) as gateway:
        warm = gateway.client.detect_response(CLIP, frames=4)  # models loaded, warm
        assert warm.status_code == 200
        baseline = gateway.process.memory_info().rss
        peak = baseline
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, gateway.process.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        data = CLIP.read_bytes()

        try:
            responses = detect_at_once(gateway.url, data, burst, TIMEOUT, frames=4)
        finally:
            sampling = False
            sampler.join()
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[200] >= limit + queue, "the queued requests were served, not refused"
        assert statuses[429] >= 1
        for refused in (r for r in responses if r.status_code == 429):
            assert refused.json()["error"]["code"] == "too_many_requests"
            assert int(refused.headers["retry-after"]) > 0
        assert list(gateway.uploads.iterdir()) == []
        assert gateway.client.detect_response(OBAMA).status_code == 200, (
            "served normally after the burst"
        )
        growth_mb = (peak - baseline) / 2**20
        FIGURES["burst"] = {
            "requests": burst,
            "upload_mb_each": round(len(data) / 2**20, 1),
            "max_in_flight": limit,
            "max_queue": queue,
            "statuses": dict(statuses),
            "rss_baseline_mb": round(baseline / 2**20),
            "rss_peak_mb": round(peak / 2**20),
        }
        # Uploads are spooled to disk and admission caps the analyses: the burst costs
        # a few analyses' frames, not 24 uploads' worth.
        assert growth_mb < 512, FIGURES["burst"]


def test_a_list_with_a_name_in_it_is_refused_at_start(tmp_path: Path) -> None:
    """gRPC resolves a replica list only from IP literals: a name is a start-up error."""
    with (
        pytest.raises(RuntimeError, match="ip:port"),
        start_gateway(f"127.0.0.1:{free_port()},triton-b:8001", tmp_path),
    ):
        pass


def test_replica_lists_become_one_balanced_grpc_target() -> None:
    assert grpc_target("10.0.0.1:8001, 10.0.0.2:8001") == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert grpc_target("[::1]:8001,[::2]:8001") == "ipv6:[::1]:8001,[::2]:8001"
    assert grpc_target("triton:8001") == "triton:8001"
    assert grpc_target("dns:///triton.ns.svc:8001") == "dns:///triton.ns.svc:8001"
    assert ("grpc.lb_policy_name", "round_robin") in channel_args("10.0.0.1:1,10.0.0.2:1")
    for bad in ("10.0.0.1:1,[::1]:1", "10.0.0.1:1,10.0.0.2", ","):
        with pytest.raises(ValueError):
            grpc_target(bad)
