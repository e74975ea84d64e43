"""/api/jobs: many files or long videos, answered at once with a job id, analysed by workers.

Wired into the app by gateway/server/app.py: `app.include_router(router)`; the queue and the
workers start in its lifespan (gateway/server/jobs/running.py).
"""

import asyncio
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis import RedisError

from gateway.server import ndjson
from gateway.server.analysis.queries import DetectQuery
from gateway.server.deps import (
    JobsDep,
    OwnerDep,
    PageLimit,
    PageOffset,
    SettingsDep,
    UploadsDep,
    get_owner,
)
from gateway.server.errors import ApiError, Store
from gateway.server.jobs.engine import Jobs
from gateway.server.jobs.spool import JobFolder, discard, job_form
from gateway.server.jobs.views import JobAnswer, JobList, job_view
from gateway.server.jobs.webhook import callback_policy, check_callback_url
from gateway.server.media_urls import MediaUrls, media_policy, receive_media
from gateway.server.openapi import UPLOAD_ERRORS, errors_doc, upload_doc
from gateway.server.settings import MB, Settings
from gateway.server.uploads import Form, Pace, Upload

log = logging.getLogger("gateway.jobs")
EVENTS_POLL_S = 0.5

JOB_UPLOAD_DOC = upload_doc(MediaUrls, many=True)
# Every code each route answers besides its success (the access middleware's 401 and 429
# are added to every /api operation by gateway/server/openapi.py).
SUBMIT_ERRORS = errors_doc(
    *UPLOAD_ERRORS,
    "invalid_request",
    "invalid_callback_url",
    "idempotency_conflict",
    "job_too_large",
    "too_many_jobs",
    "jobs_unavailable",
)
LIST_ERRORS = errors_doc("invalid_request", "jobs_unavailable")
JOB_ERRORS = errors_doc("job_not_found", "invalid_request", "jobs_unavailable")
# The queue's store (Redis, SQLite) unreachable or full (Redis past its maxmemory refuses
# writes) is a 503 to retry, not a 500.
STORE = Store(
    "job store",
    (RedisError, sqlite3.OperationalError),
    "jobs_unavailable",
    "the job queue cannot take or read jobs now; retry later",
)
in_store = STORE.call


@dataclass
class JobQuery(DetectQuery):
    """The /api/detect options, for every file of the job, and where to call back."""

    callback_url: Annotated[
        str | None, Query(description="POSTed the finished job, signed (gateway/README.md, Jobs)")
    ] = None

    def options(self) -> dict[str, object]:
        return {k: v for k, v in super().options().items() if k != "callback_url"}


def not_found(job_id: str) -> ApiError:
    return ApiError("job_not_found", f"no job {job_id} for this API key")


def too_many_jobs(full: str, settings: Settings) -> ApiError:
    whose = (
        f"this API key has {settings.jobs_max_active_per_key}"
        if full == "owner"
        else f"the service has {settings.jobs_max_active}"
    )
    return ApiError(
        "too_many_jobs",
        f"{whose} unfinished jobs; retry when one ends",
        {"Retry-After": "30"},
    )


def remove(jobs: Jobs, job_id: str) -> None:
    """Cancel the job if it runs (a worker drops its item at its next heartbeat), then its
    record, results and files go."""
    jobs.cancel(job_id)
    jobs.store.delete(job_id)
    shutil.rmtree(jobs.folder(job_id), ignore_errors=True)


router = APIRouter(prefix="/api/jobs", tags=["jobs"])
JobId = Annotated[str, Path(max_length=64)]


def form_for(settings: Settings) -> Form:
    return job_form(settings.max_upload_bytes, settings.jobs_max_files, settings.jobs_max_mb * MB)


def pace_for(settings: Settings) -> Pace:
    """/api/detect's minimum rate, a job's own deadline (it carries up to jobs_max_mb)."""
    return Pace(
        settings.jobs_upload_timeout_s, settings.upload_min_bytes_per_s, settings.upload_grace_s
    )


def reservation_ttl_s(settings: Settings) -> float:
    """A place held by a gateway that died mid-upload lapses once no upload can still arrive."""
    return 2 * settings.jobs_upload_timeout_s


async def owned_job(jobs: Jobs, request: Request, job_id: str, settings: Settings) -> dict:
    job = await in_store(jobs.store.job, job_id)
    if job is None or job["owner"] != get_owner(request, settings):
        raise not_found(job_id)
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobAnswer,
    responses=SUBMIT_ERRORS,
    openapi_extra=JOB_UPLOAD_DOC,
    description="Answers as soon as the files are on disk (uploaded, or fetched from the "
    "JSON body's `urls`); poll links.self or links.events. The job's place under the caps "
    "of unfinished jobs is taken before the upload is read or a URL fetched.",
)
async def submit(
    request: Request,
    query: Annotated[JobQuery, Depends()],
    jobs: JobsDep,
    uploads: UploadsDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    owner = get_owner(request, settings)
    if query.callback_url is not None:
        await check_callback(query.callback_url, settings)
    job_id = uuid.uuid4().hex
    if idempotency_key:
        known = await in_store(jobs.store.remember_key, owner, idempotency_key, job_id)
        if known != job_id:
            return await replay(jobs, known)
    reserved = False
    try:
        # An upload slot (as /api/detect's), then the job's place, both before the body
        # is read: a refused upload costs neither a byte on disk nor a place.
        async with uploads.held():
            full = await in_store(
                jobs.store.reserve,
                job_id,
                owner,
                settings.jobs_max_active_per_key,
                settings.jobs_max_active,
                reservation_ttl_s(settings),
            )
            if full is not None:
                raise too_many_jobs(full, settings)
            reserved = True
            files = await receive_media(
                request.stream(),
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                form_for(settings),
                JobFolder(jobs.folder(job_id)),
                pace_for(settings),
                MediaUrls,
                media_policy(settings),
            )
    except BaseException:
        await release(jobs, job_id, owner, reserved, idempotency_key)
        raise
    job, items = new_job(job_id, owner, query, idempotency_key, files)
    try:
        await in_store(jobs.submit, job, items)
    except BaseException:
        discard(jobs.folder(job_id))
        await release(jobs, job_id, owner, True, idempotency_key)
        raise
    log.info(
        "job submitted",
        extra={"job_id": job_id, "items": len(items), "request_id": request.state.request_id},
    )
    view = job_view(job | {"finished": None, "cancelled": False, "items": items})
    return JSONResponse(view, status_code=202, headers={"Location": view["links"]["self"]})


async def check_callback(callback_url: str, settings: Settings) -> None:
    """A callback URL is refused (422) before any byte of the upload is read."""
    if settings.jobs_webhook_secret is None:
        raise ApiError("invalid_callback_url", "webhooks need GATEWAY_JOBS_WEBHOOK_SECRET set")
    await asyncio.to_thread(
        check_callback_url,
        callback_url,
        settings.jobs_allow_private_callbacks,
        egress=callback_policy(settings),
    )


def new_job(
    job_id: str,
    owner: str,
    query: JobQuery,
    idempotency_key: str | None,
    files: list[Upload],
) -> tuple[dict, list[dict]]:
    """The job's record and its items, each file queued."""
    job = {
        "id": job_id,
        "owner": owner,
        "created": time.time(),
        "options": query.options(),
        "callback_url": query.callback_url,
        "idempotency_key": idempotency_key,  # DELETE forgets it with the job
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
    return job, items


async def release(
    jobs: Jobs, job_id: str, owner: str, reserved: bool, idempotency_key: str | None
) -> None:
    """What a submission that failed held: its place, its Idempotency-Key. Shielded: a
    request cancelled mid-upload still frees them."""

    async def free() -> None:
        if reserved:
            await in_store(jobs.store.release, job_id, owner)
        if idempotency_key:
            await in_store(jobs.store.forget_key, owner, idempotency_key)

    await asyncio.shield(free())


async def replay(jobs: Jobs, job_id: str) -> JSONResponse:
    """The job an earlier request with the same Idempotency-Key created."""
    job = await in_store(jobs.store.job, job_id)
    if job is None:
        raise ApiError("idempotency_conflict", "a job with this Idempotency-Key is being submitted")
    view = job_view(job)
    headers = {"Location": view["links"]["self"], "Idempotent-Replayed": "true"}
    return JSONResponse(view, status_code=202, headers=headers)


@router.get(
    "",
    response_model=JobList,
    responses=LIST_ERRORS,
    description="This API key's jobs, newest first; items without their results "
    "(GET /api/jobs/{id} has them).",
)
async def list_jobs(
    jobs: JobsDep, owner: OwnerDep, offset: PageOffset = 0, limit: PageLimit = 20
) -> dict:
    store = jobs.store
    ids, total = await in_store(store.owned, owner, offset, limit)
    found = [await in_store(store.job, i) for i in ids]
    views = [job_view(job, results=False) for job in found if job is not None]
    return {"jobs": views, "total": total, "offset": offset, "limit": limit}


@router.get("/{job_id}", response_model=JobAnswer, responses=JOB_ERRORS)
async def get_job(request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> dict:
    return job_view(await owned_job(jobs, request, job_id, settings))


@router.post(
    "/{job_id}/cancel",
    response_model=JobAnswer,
    responses=JOB_ERRORS,
    description="Cancel: queued files are dropped, running ones stop within seconds; the "
    "job stays readable until its retention ends. A finished job stays as it ended.",
)
async def cancel_job(request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep) -> dict:
    await owned_job(jobs, request, job_id, settings)
    await in_store(jobs.cancel, job_id)
    return job_view(await owned_job(jobs, request, job_id, settings))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=JOB_ERRORS,
    description="Delete: the job is cancelled if unfinished, then its record, results and "
    "uploaded files are removed at once (404 after, for every route of the job).",
)
async def delete_job(
    request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep
) -> Response:
    await owned_job(jobs, request, job_id, settings)
    await in_store(remove, jobs, job_id)
    log.info("job deleted", extra={"job_id": job_id, "request_id": request.state.request_id})
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    responses=JOB_ERRORS,
    response_class=StreamingResponse,
    description="Progress until the job ends: NDJSON, or server-sent events when the "
    "request accepts text/event-stream. Events: progress (the job without results), "
    "then end (the whole job).",
)
async def job_events(
    request: Request, job_id: JobId, jobs: JobsDep, settings: SettingsDep
) -> StreamingResponse:
    await owned_job(jobs, request, job_id, settings)
    sse = "text/event-stream" in request.headers.get("accept", "")
    events = progress_events(jobs, job_id, sse)
    media_type = "text/event-stream" if sse else "application/x-ndjson"
    return StreamingResponse(events, media_type=media_type)


async def progress_events(jobs: Jobs, job_id: str, sse: bool) -> AsyncIterator[bytes]:
    encode = ndjson.sse if sse else ndjson.line
    store = jobs.store
    last = None
    while True:
        job = await asyncio.to_thread(store.job, job_id)
        if job is None:  # deleted, or at the end of its retention
            yield encode({"event": "error", **not_found(job_id).body()})
            return
        if job["finished"] is not None:
            yield encode({"event": "end", "job": job_view(job)})
            return
        view = job_view(job, results=False)
        if view != last:
            yield encode({"event": "progress", "job": view})
            last = view
        await asyncio.sleep(EVENTS_POLL_S)
