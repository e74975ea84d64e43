"""python -m gateway.programs.worker: job workers apart from the gateway (Kubernetes' jobs-worker).

The same Analyzer as the gateway, on an event loop of its own; huey worker
threads take item ids from the queue (Redis, or the local SQLite file) and
run them on it. SIGTERM: the items in hand get shutdown_timeout_s to finish,
then go back to the queue; SIGINT stops at once (the sweep requeues them).
Settings: the gateway's GATEWAY_* variables; jobs_workers is the thread count.
While the analysis loop answers, the worker touches ALIVE_FILE in its temp
dir: Kubernetes' probes (deploy/k8s/components/jobs/worker.yaml) read its age.
Prometheus' /metrics at GATEWAY_HOST:GATEWAY_JOBS_METRICS_PORT: items by outcome and their
time, the queue's length, whether the analysis loop answers (gateway_jobs_*).
A Redis that refuses the worker's password stops it at once (exit 2).

python -m gateway.programs.worker webhook-secret < keys.txt: the webhook secret of each API key
(one a line on stdin, never on the command line), under each GATEWAY_JOBS_WEBHOOK_SECRET
and GATEWAY_JOBS_WEBHOOK_PREVIOUS_SECRET: what the operator hands each key's holder.
"""

import asyncio
import contextlib
import logging
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import prometheus_client
from redis import AuthenticationError, RedisError

from gateway.server import (
    Analyzer,
    ItemRunner,
    Jobs,
    Settings,
    WorkerPool,
    configure_logging,
    key_id,
    metrics,
    webhook_secret_for_key,
)

ALIVE_FILE = "jobs-worker-alive"
ALIVE_INTERVAL_S = 10.0

log = logging.getLogger("gateway.programs.worker")


def alive_file(settings: Settings) -> Path:
    return Path(settings.tmp_dir or tempfile.gettempdir()) / ALIVE_FILE


def keep_alive(
    path: Path, loop: asyncio.AbstractEventLoop, stop: threading.Event, interval_s: float
) -> None:
    """Touch `path` each time a callback gets through the analysis loop in time: a
    loop that is blocked or gone (every item would stall there) stops the touches,
    and the liveness probe restarts the pod."""
    while True:
        answered = threading.Event()
        with contextlib.suppress(RuntimeError):  # a closed loop never answers
            loop.call_soon_threadsafe(answered.set)
        if answered.wait(interval_s):
            path.touch()
            metrics.JOB_WORKER_UP.set(1)
        else:
            metrics.JOB_WORKER_UP.set(0)
            log.warning("analysis loop did not answer within %.0f s", interval_s)
        if stop.wait(interval_s):
            return


def check_queue(jobs: Jobs) -> None:
    """Refused credentials stop the worker with the reason (no restart will fix them); an
    unreachable Redis is waited for, as huey's consumer does."""
    try:
        jobs.queued()
    except AuthenticationError as exc:
        log.critical(
            "the job queue's Redis refused this worker (%s): set GATEWAY_JOBS_REDIS_PASSWORD",
            exc,
        )
        raise SystemExit(2) from None
    except RedisError as exc:
        log.warning("the job queue's Redis does not answer yet: %s", exc)


def serve_metrics(settings: Settings, jobs: Jobs) -> None:
    """/metrics for Prometheus (deploy/k8s/components/jobs: the jobs-worker ServiceMonitor),
    on a thread of prometheus_client's; a port taken stops the worker with the reason."""
    if settings.jobs_metrics_port == 0:
        return
    metrics.JOBS_QUEUED.set_function(jobs.queued_gauge)
    try:
        prometheus_client.start_http_server(settings.jobs_metrics_port, addr=settings.host)
    except OSError as exc:
        log.critical(
            "cannot serve /metrics on %s:%d (%s): set GATEWAY_JOBS_METRICS_PORT, 0 for none",
            settings.host,
            settings.jobs_metrics_port,
            exc,
        )
        raise SystemExit(2) from None
    log.info("metrics at http://%s:%d/metrics", settings.host, settings.jobs_metrics_port)


def print_webhook_secrets(settings: Settings, keys: list[str]) -> None:
    masters = {
        "GATEWAY_JOBS_WEBHOOK_SECRET": settings.jobs_webhook_secret,
        "GATEWAY_JOBS_WEBHOOK_PREVIOUS_SECRET": settings.jobs_webhook_previous_secret,
    }
    if not any(masters.values()):
        raise SystemExit("no GATEWAY_JOBS_WEBHOOK_SECRET: webhooks are off")
    for key in keys:
        for name, master in masters.items():
            if master is not None:
                secret = webhook_secret_for_key(master.get_secret_value(), key)
                print(f"{key_id(key)}\t{name}\t{secret}")


def main() -> None:
    settings = Settings()
    if sys.argv[1:] == ["webhook-secret"]:
        keys = [line.strip() for line in sys.stdin if line.strip()]
        print_webhook_secrets(settings, keys)
        return
    configure_logging(settings.log_level)
    # A previous container's file (the temp dir outlives it) must not pass the startup probe.
    alive_file(settings).unlink(missing_ok=True)
    jobs = Jobs(settings)
    check_queue(jobs)  # before the analyser is built: a refused password stops at once
    serve_metrics(settings, jobs)  # from here on: a worker still starting reads as not up
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="analysis-loop", daemon=True)
    thread.start()
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="preprocess")
    # The gRPC aio channel belongs to the loop it is made on: build it there.
    analyzer = asyncio.run_coroutine_threadsafe(_build(settings, executor), loop).result()
    pool = WorkerPool(
        jobs, ItemRunner(jobs, analyzer, loop), max(1, settings.jobs_workers), embedded=False
    )
    stop = threading.Event()
    toucher = threading.Thread(
        target=keep_alive,
        args=(alive_file(settings), loop, stop, ALIVE_INTERVAL_S),
        name="keep-alive",
        daemon=True,
    )
    toucher.start()
    try:
        pool.run()
    finally:
        stop.set()
        toucher.join(timeout=ALIVE_INTERVAL_S + 1)
        metrics.JOB_WORKER_UP.set(0)
        alive_file(settings).unlink(missing_ok=True)  # no litter in a shared temp dir
        asyncio.run_coroutine_threadsafe(analyzer.server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        executor.shutdown(wait=False, cancel_futures=True)


async def _build(settings: Settings, executor: ThreadPoolExecutor) -> Analyzer:
    return Analyzer.from_settings(settings, executor)


if __name__ == "__main__":
    main()
