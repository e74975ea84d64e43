"""What clients see of a job: GET /api/jobs/{id}, the webhook's body, the events' last line."""

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from gateway.server.jobs.store import TERMINAL, Doc
from gateway.server.schemas import DetectAnswer, ErrorDetail

ItemStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class JobItem(BaseModel):
    id: int
    filename: str
    bytes: int
    sha256: str | None = Field(None, description="of the file as received")
    status: ItemStatus
    attempts: int = Field(description="analyses started (2 when a worker stopped mid-file)")
    result: DetectAnswer | None = Field(None, description="exactly the /api/detect answer")
    error: ErrorDetail | None = None


class Progress(BaseModel):
    total: int
    finished: int
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int


class JobLinks(BaseModel):
    self: str
    events: str


class JobAnswer(BaseModel):
    id: str
    status: JobStatus
    created: str
    finished: str | None
    options: dict
    callback_url: str | None
    progress: Progress
    items: list[JobItem]
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobAnswer]
    total: int
    offset: int
    limit: int


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def job_status(job: Doc) -> str:
    statuses = [item["status"] for item in job["items"]]
    if all(s in TERMINAL for s in statuses):
        if job["cancelled"]:
            return "cancelled"
        return "done" if "done" in statuses else "failed"
    if job["cancelled"]:
        return "cancelled"
    return "queued" if all(s == "queued" for s in statuses) else "running"


def progress_of(items: list[Doc]) -> dict:
    statuses = [item["status"] for item in items]
    counts = {s: statuses.count(s) for s in ("queued", "running", "done", "failed", "cancelled")}
    return {"total": len(items), "finished": sum(s in TERMINAL for s in statuses)} | counts


def job_view(job: Doc, results: bool = True) -> dict:
    items = [
        {
            "id": n,
            "filename": item["filename"],
            "bytes": item["bytes"],
            "sha256": item.get("sha256"),
            "status": item["status"],
            "attempts": item["attempts"],
        }
        | ({"result": item.get("result"), "error": item.get("error")} if results else {})
        for n, item in enumerate(job["items"])
    ]
    base = f"/api/jobs/{job['id']}"
    return {
        "id": job["id"],
        "status": job_status(job),
        "created": iso(job["created"]),
        "finished": iso(job["finished"]),
        "options": job["options"],
        "callback_url": job.get("callback_url"),
        "progress": progress_of(job["items"]),
        "items": items,
        "links": {"self": base, "events": base + "/events"},
    }
