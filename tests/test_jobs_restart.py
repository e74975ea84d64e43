"""Jobs survive their processes: the gateway (SQLite queue, embedded workers) or the gateway
and a separate worker (Redis queue) killed with SIGKILL mid-job and started again. Nothing
is lost: queued items run after the restart, the item that was running is retried once,
and no item is finished twice (counted from the processes' own "item ended" log lines)."""

import signal
from collections import Counter
from pathlib import Path

import httpx

from model_repository.local_triton import TritonSettings
from tests.conftest import start_gateway
from tests.jobs_support import (
    CLIPS,
    ended_items,
    redis_server,
    submit,
    wait_job,
    wait_running,
    worker_process,
)

RECOVERY = {"jobs_heartbeat_s": 0.5, "jobs_stale_s": 3}  # a dead worker noticed in seconds
CLIP_FILES = [(f"{n}-{p.name}", p.read_bytes()) for n in range(2) for p in CLIPS]


def assert_recovered(job: dict, logs: list[Path]) -> None:
    assert job["status"] == "done", job["progress"]
    assert [i["status"] for i in job["items"]] == ["done"] * len(CLIP_FILES)
    attempts = [i["attempts"] for i in job["items"]]
    assert max(attempts) == 2, attempts  # the item the kill interrupted ran again, once
    ends = Counter(item for job_id, item in ended_items(*logs) if job_id == job["id"])
    assert ends == Counter(range(len(CLIP_FILES))), ends  # each item finished exactly once


def test_a_gateway_killed_mid_job_finishes_it_after_a_restart(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    settings = RECOVERY | {"jobs_dir": tmp_path / "jobs", "jobs_workers": 1}
    with start_gateway(lite_triton.grpc_url, tmp_path, **settings) as first:
        job = submit(first.url, CLIP_FILES, frames=16).json()
        wait_running(first.url, job["id"])
        first.process.kill()
        first.process.wait(10)
    with start_gateway(lite_triton.grpc_url, tmp_path, **settings) as second:
        finished = wait_job(second.url, job["id"], timeout=300)
    assert_recovered(finished, [first.log, second.log])
    assert not (tmp_path / "jobs/uploads" / job["id"]).exists()


def test_a_worker_and_the_gateway_killed_mid_job_lose_nothing_on_redis(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as redis_url:
        shared = RECOVERY | {"jobs_dir": tmp_path / "jobs", "jobs_redis_url": redis_url}
        gateway_settings = shared | {"jobs_workers": 0}  # as in Kubernetes: workers apart
        with (
            start_gateway(lite_triton.grpc_url, tmp_path, **gateway_settings) as gw,
            worker_process(lite_triton.grpc_url, tmp_path, **shared) as worker,
        ):
            job = submit(gw.url, CLIP_FILES, frames=16).json()
            wait_running(gw.url, job["id"], timeout=180)
            worker.process.kill()
            gw.process.kill()
            worker.process.wait(10)
            gw.process.wait(10)
        with (
            start_gateway(lite_triton.grpc_url, tmp_path, **gateway_settings) as gw2,
            worker_process(lite_triton.grpc_url, tmp_path, **shared) as worker2,
        ):
            finished = wait_job(gw2.url, job["id"], timeout=300)
            # The queue is empty again: nothing left behind for a later worker.
            metrics = httpx.get(gw2.url + "/metrics", timeout=10).text
            assert "\ngateway_jobs_queued 0.0\n" in metrics
    assert_recovered(finished, [worker.log, worker2.log])


def test_a_worker_stopped_with_sigterm_gives_its_item_back_uncounted(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    """A rolling update, not a crash: the item in hand gets the shutdown timeout, then goes
    back to the queue without using up an attempt (here on the embedded SQLite queue,
    shared by a gateway that only queues and two worker processes in turn)."""
    shared = RECOVERY | {"jobs_dir": tmp_path / "jobs", "shutdown_timeout_s": 1}
    with start_gateway(lite_triton.grpc_url, tmp_path, **shared, jobs_workers=0) as gw:
        with worker_process(lite_triton.grpc_url, tmp_path, **shared) as first:
            job = submit(gw.url, CLIP_FILES[:2], frames=64).json()  # seconds each
            wait_running(gw.url, job["id"], timeout=180)
            first.process.send_signal(signal.SIGTERM)
            assert first.process.wait(30) == 0
        stopped = httpx.get(f"{gw.url}/api/jobs/{job['id']}", timeout=10).json()
        with worker_process(lite_triton.grpc_url, tmp_path, **shared) as second:
            finished = wait_job(gw.url, job["id"], timeout=300)
    assert [i["status"] for i in finished["items"]] == ["done", "done"]
    assert [i["attempts"] for i in finished["items"]] == [1, 1], (stopped, finished)
    assert '"message": "item given back"' in first.log.read_text()
    ends = Counter(item for _, item in ended_items(first.log, second.log))
    assert ends == Counter(range(2)), ends
