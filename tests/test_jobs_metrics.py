"""The job workers' own metrics: a real `python -m gateway.programs.worker` (over the fake
model server of tests/fake_triton.py, a gateway that only queues, the SQLite queue they
share) serves Prometheus' /metrics on GATEWAY_JOBS_METRICS_PORT, and after a job its
items are counted by outcome and timed, the queue is empty and the worker is up: what
deploy/k8s/components/jobs' ServiceMonitor scrapes and its alerts read."""

import math
import socket
from pathlib import Path

import httpx
import pytest

from gateway.server.jobs.engine import Jobs
from gateway.server.metrics import JOB_OUTCOMES
from tests.conftest import gateway_settings
from tests.jobs_support import BAD, IMAGES, submit, wait_job, worker_process
from tests.stack import free_port, gateway_process, metric, wait_until


def test_an_unreachable_queue_is_nan_not_a_failed_scrape(tmp_path: Path) -> None:
    """The queue's gauge reads Redis at each scrape: Redis down loses that value only, so
    the target stays up and the workers-down alert means the workers."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = gateway_settings("127.0.0.1:1", tmp_path, jobs_redis_url=dead)
    assert math.isnan(Jobs(settings).queued_gauge())
    local = Jobs(gateway_settings("127.0.0.1:1", tmp_path, jobs_dir=tmp_path / "jobs"))
    assert local.queued_gauge() == 0.0


@pytest.mark.stack
def test_a_worker_whose_metrics_port_is_taken_stops_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = {"jobs_dir": tmp_path / "jobs", "jobs_metrics_port": port}
        with worker_process("127.0.0.1:1", tmp_path, **settings) as worker:
            assert worker.process.wait(60) == 2
    assert "GATEWAY_JOBS_METRICS_PORT" in worker.log.read_text()


@pytest.mark.stack  # a gateway and a worker process
def test_a_worker_serves_its_metrics_after_a_job(tmp_path: Path) -> None:
    from tests.fake_triton import fake_triton

    shared = {"jobs_dir": tmp_path / "jobs"}
    files = [(p.name, p.read_bytes()) for p in IMAGES[:2]] + [("notes.mp4", BAD["notes.mp4"])]
    with (
        fake_triton("lite") as triton,
        gateway_process(triton.url, tmp_path, jobs_workers=0, **shared) as gw,
        worker_process(triton.url, tmp_path, jobs_workers=2, **shared) as worker,
    ):
        wait_until(lambda: up(worker.metrics_url), 120, "the worker never said it was up")
        assert metric(worker.metrics_url, "gateway_jobs_worker_threads") == 2
        # Before any item: every outcome's series, at 0 (what the stalled alert's increase() reads).
        fresh = httpx.get(worker.metrics_url, timeout=10).text
        for outcome in JOB_OUTCOMES:
            assert f'gateway_jobs_items_total{{outcome="{outcome}"}} 0.0' in fresh, outcome
        job = wait_job(gw.url, submit(gw.url, files, frames=4).json()["id"], timeout=180)
        assert [i["status"] for i in job["items"]] == ["done", "done", "failed"], job
        url = worker.metrics_url
        assert metric(url, "gateway_jobs_items_total", outcome="done") == 2
        assert metric(url, "gateway_jobs_items_total", outcome="failed") == 1
        assert metric(url, "gateway_jobs_item_seconds_count", outcome="done") == 2
        assert metric(url, "gateway_jobs_item_seconds_sum", outcome="done") > 0
        assert metric(url, "gateway_jobs_items_running") == 0
        assert metric(url, "gateway_jobs_queued") == 0
        assert metric(url, "gateway_jobs_worker_up") == 1
        # The gateway only queues: it analysed nothing, and says the same queue length.
        assert metric(gw.url, "gateway_jobs_items_total", outcome="done") == 0
        assert httpx.get(gw.url + "/metrics", timeout=10).text.count("\ngateway_jobs_queued 0.0")
    assert worker.process.returncode == 0


def up(metrics_url: str) -> bool:
    try:
        return metric(metrics_url, "gateway_jobs_worker_up") == 1
    except httpx.TransportError:  # not serving yet
        return False
