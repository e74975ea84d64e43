"""python -m gateway.worker: job workers apart from the gateway (Kubernetes' jobs-worker).

The same Analyzer as the gateway, on an event loop of its own; huey worker
threads take item ids from the queue (Redis, or the local SQLite file) and
run them on it. SIGTERM: the items in hand get shutdown_timeout_s to finish,
then go back to the queue; SIGINT stops at once (the sweep requeues them).
Settings: the gateway's GATEWAY_* variables; jobs_workers is the thread count.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from gateway.__main__ import configure_logging
from gateway.analysis import Analyzer
from gateway.jobs.engine import ItemRunner, Jobs, WorkerPool
from gateway.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="analysis-loop", daemon=True)
    thread.start()
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="preprocess")
    # The gRPC aio channel belongs to the loop it is made on: build it there.
    analyzer = asyncio.run_coroutine_threadsafe(_build(settings, executor), loop).result()
    jobs = Jobs(settings)
    pool = WorkerPool(
        jobs, ItemRunner(jobs, analyzer, loop), max(1, settings.jobs_workers), embedded=False
    )
    try:
        pool.run()
    finally:
        asyncio.run_coroutine_threadsafe(analyzer.server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        executor.shutdown(wait=False, cancel_futures=True)


async def _build(settings: Settings, executor: ThreadPoolExecutor) -> Analyzer:
    return Analyzer.from_settings(settings, executor)


if __name__ == "__main__":
    main()
