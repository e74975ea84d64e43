"""The jobs' part of the app's lifespan: the queue the routes read, and the workers that run
inside this gateway (unless jobs_workers is 0)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from gateway.server.jobs.engine import ItemRunner, Jobs, WorkerPool
from gateway.server.metrics import JOBS_QUEUED
from gateway.server.settings import Settings


@contextlib.asynccontextmanager
async def running_jobs(app: FastAPI) -> AsyncIterator[None]:
    """The queue for the API and, unless jobs_workers is 0, workers on this gateway's Analyzer."""
    settings: Settings = app.state.settings
    if not settings.jobs_enabled:  # get_jobs answers jobs_disabled; no queue, no folder
        app.state.jobs = None
        yield
        return
    jobs = Jobs(settings)
    app.state.jobs = jobs
    JOBS_QUEUED.set_function(jobs.queued_gauge)
    pool = None
    if settings.jobs_workers > 0:
        runner = ItemRunner(jobs, app.state.analyzer, asyncio.get_running_loop())
        pool = WorkerPool(jobs, runner, settings.jobs_workers, embedded=True)
        pool.start()
    try:
        yield
    finally:
        if pool is not None:
            await asyncio.to_thread(pool.stop)
