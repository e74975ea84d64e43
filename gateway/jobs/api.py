"""/api/jobs: many files or long videos, answered at once with a job id, analysed by workers.

Wired into the app by gateway/app.py: `app.include_router(router(settings))`
and `running_jobs(app)` inside its lifespan.
"""

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Gauge
from redis import RedisError

from gateway.deps import JobsDep
from gateway.errors import ApiError
from gateway.jobs.engine import ItemRunner, Jobs, WorkerPool
from gateway.jobs.spool import Caps, discard, spool_files
from gateway.jobs.views import JobAnswer, JobList, job_view
from gateway.jobs.webhook import check_callback_url
from gateway.openapi import errors_doc, upload_doc
from gateway.queries import DetectQuery
from gateway.security import key_id, presented_key
from gateway.settings import MB, Settings

log = logging.getLogger("gateway.jobs")
PUBLIC_OWNER = "public"  # without API keys every caller sees every job
EVENTS_POLL_S = 0.5
# The queue is shared: every gateway reports the same length, what the workers' HPA scales on.
QUEUED = Gauge("gateway_jobs_queued", "Job items waiting in the queue for a worker")

JOB_UPLOAD_DOC = upload_doc(many=True)
JOB_ERRORS = errors_doc(
    {
        404: "no such job for this API key",
        408: "upload too slow",
        409: "the same Idempotency-Key is still being submitted",
        413: "a file over the upload cap, or the job over its caps",
        422: "bad options or callback_url",
        429: "too many unfinished jobs for this API key (see Retry-After)",
        503: "the job queue's store is unreachable or full (see Retry-After)",
    }
)
STORE_RETRY_S = 30
T = TypeVar("T")


@dataclass
class JobQuery(DetectQuery):
    """The /api/detect options, for every file of the job, and where to call back."""

    callback_url: Annotated[
        str | None, Query(description="POSTed the finished job, signed (gateway/README.md, Jobs)")
    ] = None

    def options(self) -> dict[str, object]:
        return {k: v for k, v in super().options().items() if k != "callback_url"}


def owner_of(request: Request, settings: Settings) -> str:
    """The API key's non-reversible id (the access middleware has checked the key)."""
    key = presented_key(request.headers)
    return key_id(key) if settings.api_keys and key else PUBLIC_OWNER


async def in_store(call: Callable[..., T], *args: object) -> T:
    """`call(*args)` on a thread: the queue's store (Redis, SQLite) unreachable or full —
    Redis past its maxmemory refuses writes — is a 503 to retry, not a 500."""
    try:
        return await asyncio.to_thread(call, *args)
    except (RedisError, sqlite3.OperationalError) as exc:
        log.error("job store unavailable: %s", exc)  # a retry or an operator: both must see it
        raise ApiError(
            503,
            "jobs_unavailable",
            "the job queue cannot take or read jobs now; retry later",
            {"Retry-After": str(STORE_RETRY_S)},
        ) from exc


def not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id} for this API key")


def router(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/api/jobs", tags=["jobs"])
    caps = Caps(
        file_bytes=settings.max_upload_bytes,
        files=settings.jobs_max_files,
        total_bytes=settings.jobs_max_mb * MB,
    )

    async def owned_job(jobs: Jobs, request: Request, job_id: str) -> dict:
        job = await in_store(jobs.store.job, job_id)
        if job is None or job["owner"] != owner_of(request, settings):
            raise not_found(job_id)
        return job

    @api.post(
        "",
        status_code=202,
        response_model=JobAnswer,
        responses=JOB_ERRORS,
        openapi_extra=JOB_UPLOAD_DOC,
        description="Answers as soon as the files are on disk; poll links.self or links.events.",
    )
    async def submit(
        request: Request,
        query: Annotated[JobQuery, Depends()],
        jobs: JobsDep,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JSONResponse:
        owner = owner_of(request, settings)
        if query.callback_url is not None:
            if settings.jobs_webhook_secret is None:
                raise ApiError(
                    422, "invalid_callback_url", "webhooks need GATEWAY_JOBS_WEBHOOK_SECRET set"
                )
            await asyncio.to_thread(
                check_callback_url, query.callback_url, settings.jobs_allow_private_callbacks
            )
        job_id = uuid.uuid4().hex
        if idempotency_key:
            known = await in_store(jobs.store.remember_key, owner, idempotency_key, job_id)
            if known != job_id:
                return await replay(jobs, known)
        try:
            active = await in_store(jobs.store.unfinished_count, owner)
            if active >= settings.jobs_max_active_per_key:
                raise ApiError(
                    429,
                    "too_many_jobs",
                    f"{active} jobs of this API key are unfinished; retry when one ends",
                    {"Retry-After": "30"},
                )
            files = await spool_files(
                request.stream(),
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                caps,
                jobs.folder(job_id),
                settings.upload_timeout_s,
            )
        except BaseException:
            if idempotency_key:
                await in_store(jobs.store.forget_key, owner, idempotency_key)
            raise
        job = {
            "id": job_id,
            "owner": owner,
            "created": time.time(),
            "options": query.options(),
            "callback_url": query.callback_url,
        }
        items = [
            {
                "filename": f.filename,
                "path": str(f.path),
                "bytes": f.size,
                "sha256": f.sha256,
                "status": "queued",
                "attempts": 0,
                "heartbeat": 0.0,
            }
            for f in files
        ]
        try:
            await in_store(jobs.submit, job, items)
        except BaseException:
            discard(jobs.folder(job_id))
            raise
        log.info(
            "job submitted",
            extra={"job_id": job_id, "items": len(items), "request_id": request.state.request_id},
        )
        view = job_view(job | {"finished": None, "cancelled": False, "items": items})
        return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})

    async def replay(jobs: Jobs, job_id: str) -> JSONResponse:
        """The job an earlier request with the same Idempotency-Key created."""
        job = await in_store(jobs.store.job, job_id)
        if job is None:
            raise ApiError(
                409, "idempotency_conflict", "a job with this Idempotency-Key is being submitted"
            )
        view = job_view(job)
        headers = {"Location": view["links"]["self"], "Idempotent-Replayed": "true"}
        return JSONResponse(view, status_code=202, headers=headers)

    @api.get(
        "",
        response_model=JobList,
        description="This API key's jobs, newest first; items without their results "
        "(GET /api/jobs/{id} has them).",
    )
    async def list_jobs(
        request: Request,
        jobs: JobsDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict:
        store = jobs.store
        owner = owner_of(request, settings)
        ids, total = await in_store(store.owned, owner, offset, limit)
        found = [await in_store(store.job, i) for i in ids]
        views = [job_view(job, results=False) for job in found if job is not None]
        return {"jobs": views, "total": total, "offset": offset, "limit": limit}

    JobId = Annotated[str, Path(max_length=64)]

    @api.get("/{job_id}", response_model=JobAnswer, responses=JOB_ERRORS)
    async def get_job(request: Request, job_id: JobId, jobs: JobsDep) -> dict:
        return job_view(await owned_job(jobs, request, job_id))

    @api.delete(
        "/{job_id}",
        response_model=JobAnswer,
        responses=JOB_ERRORS,
        description="Cancel: queued files are dropped, running ones stop within seconds.",
    )
    async def cancel_job(request: Request, job_id: JobId, jobs: JobsDep) -> dict:
        await owned_job(jobs, request, job_id)
        await in_store(jobs.cancel, job_id)
        return job_view(await owned_job(jobs, request, job_id))

    @api.get(
        "/{job_id}/events",
        responses=JOB_ERRORS,
        response_class=StreamingResponse,
        description="Progress until the job ends: NDJSON, or server-sent events when the "
        "request accepts text/event-stream. Events: progress (the job without results), "
        "then end (the whole job).",
    )
    async def job_events(request: Request, job_id: JobId, jobs: JobsDep) -> StreamingResponse:
        await owned_job(jobs, request, job_id)
        sse = "text/event-stream" in request.headers.get("accept", "")
        events = progress_events(jobs, job_id, sse)
        media_type = "text/event-stream" if sse else "application/x-ndjson"
        return StreamingResponse(events, media_type=media_type)

    async def progress_events(jobs: Jobs, job_id: str, sse: bool) -> AsyncIterator[bytes]:
        store = jobs.store
        last = None
        while True:
            job = await asyncio.to_thread(store.job, job_id)
            if job is None:  # deleted at the end of its retention
                yield encode({"event": "error", **not_found(job_id).body()}, sse)
                return
            if job["finished"] is not None:
                yield encode({"event": "end", "job": job_view(job)}, sse)
                return
            view = job_view(job, results=False)
            if view != last:
                yield encode({"event": "progress", "job": view}, sse)
                last = view
            await asyncio.sleep(EVENTS_POLL_S)

    return api


def encode(event: dict, sse: bool) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    if sse:
        return f"event: {event['event']}\ndata: {data}\n\n".encode()
    return (data + "\n").encode()


@contextlib.asynccontextmanager
async def running_jobs(app: FastAPI) -> AsyncIterator[None]:
    """The queue for the API and, unless jobs_workers is 0, workers on this gateway's Analyzer."""
    settings: Settings = app.state.settings
    jobs = Jobs(settings)
    app.state.jobs = jobs
    QUEUED.set_function(jobs.queued)
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
