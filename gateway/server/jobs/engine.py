"""The job engine: a huey queue of item ids, the job store, the workers that run items.

Queue messages carry (job id, item number) only; the file is on disk in the
job's folder and the options are in the store. huey removes a message when a
worker takes it, so a worker that dies mid-item would lose it: every running
item carries a heartbeat instead, and a sweep (in every process that runs
workers) puts an item whose heartbeat stopped back on the queue, once; on its
next failure it fails. Every status change is a conditional update in the
store, so an item finishes once even if two workers ever held it.
"""

import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer
from redis import RedisError

from gateway.server.analysis.analysis import Analyzer
from gateway.server.errors import ApiError, from_media_error
from gateway.server.jobs import webhook
from gateway.server.jobs.codec import JsonSerializer
from gateway.server.jobs.store import TERMINAL, Doc, JobStore, RedisJobStore, SqliteJobStore
from gateway.server.jobs.views import job_status, job_view
from gateway.server.metrics import (
    JOB_ITEM_SECONDS,
    JOB_ITEMS,
    JOB_ITEMS_RUNNING,
    JOB_WORKER_THREADS,
)
from gateway.server.options import options_for
from gateway.server.security import OPEN_TENANT, key_id
from gateway.server.settings import Settings
from preprocess.media import MediaError

log = logging.getLogger("gateway.jobs")
QUEUE_NAME = "deepfake-jobs"


def redis_url(settings: Settings) -> str:
    """jobs_redis_url with jobs_redis_password in it (Kubernetes gives the password from a
    Secret, the URL from the ConfigMap); a password already in the URL is kept."""
    parts = urlsplit(settings.jobs_redis_url)
    if settings.jobs_redis_password is None or parts.password is not None:
        return settings.jobs_redis_url
    password = quote(settings.jobs_redis_password.get_secret_value(), safe="")
    user = quote(parts.username or "", safe="")  # an ACL user, or none (Redis' default user)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def make_huey(settings: Settings) -> Huey:
    # JSON, not huey's default pickle: a message planted in the queue is refused, never run.
    serializer = JsonSerializer()
    if settings.jobs_redis_url:
        return RedisHuey(QUEUE_NAME, url=redis_url(settings), results=False, serializer=serializer)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        QUEUE_NAME,
        filename=str(settings.jobs_dir / "queue.db"),
        results=False,
        serializer=serializer,
    )


def make_store(settings: Settings) -> JobStore:
    if settings.jobs_redis_url:
        return RedisJobStore(redis_url(settings), settings.jobs_retention_s)
    return SqliteJobStore(settings.jobs_dir / "jobs.db", settings.jobs_retention_s)


def tenant_webhook_secret(master: str, owner: str) -> str:
    """The secret that signs `owner`'s webhooks: HMAC-SHA256(master, "webhook:" + key id),
    hex. A tenant knows its own; without the master it cannot make another's. Without
    API keys there is one tenant (the operator's): it signs with the master itself."""
    if owner == OPEN_TENANT:
        return master
    return hmac.new(master.encode(), b"webhook:" + owner.encode(), hashlib.sha256).hexdigest()


def webhook_secret_for_key(master: str, api_key: str) -> str:
    """What an operator hands the holder of `api_key` (`gateway.programs.worker webhook-secret`)."""
    return tenant_webhook_secret(master, key_id(api_key))


def webhook_secrets(settings: Settings, owner: str) -> list[str]:
    """`owner`'s secrets under every active master: the current one, then the one being
    rotated out (each webhook carries a signature for both while it is set)."""
    masters = [settings.jobs_webhook_secret, settings.jobs_webhook_previous_secret]
    return [tenant_webhook_secret(m.get_secret_value(), owner) for m in masters if m]


def error_of(exc: BaseException) -> Doc:
    """The same codes as the synchronous API."""
    if isinstance(exc, MediaError):
        exc = from_media_error(exc)
    if isinstance(exc, ApiError):
        return {"code": exc.code, "message": exc.message}
    return {"code": "internal_error", "message": "the analysis failed; see the logs"}


class Jobs:
    """The queue and the store: what the API submits to and the workers take from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = make_store(settings)
        self.huey = make_huey(settings)
        self.runner: ItemRunner | None = None  # set in processes that run items
        self.analyze_item = self.huey.task(name="analyze_item")(self._analyze_item)
        self.send_webhook = self.huey.task(
            name="send_webhook",
            retries=settings.jobs_webhook_retries,
            retry_delay=1,
            retry_backoff=2,  # 1, 2, 4, 8 … seconds between attempts
        )(self._send_webhook)

    def folder(self, job_id: str) -> Path:
        return self.settings.jobs_dir / "uploads" / job_id

    def submit(self, job: Doc, items: list[Doc]) -> None:
        self.store.create(job, items)
        for n in range(len(items)):
            self.analyze_item(job["id"], n)

    def queued(self) -> int:
        return self.huey.pending_count()

    def queued_gauge(self) -> float:
        """The queue's length for /metrics: NaN while the queue does not answer, so one
        unreachable Redis loses that value, not the whole scrape (the target stays up)."""
        try:
            return float(self.queued())
        except (RedisError, sqlite3.Error, OSError):
            return math.nan

    def cancel(self, job_id: str) -> None:
        """Queued items end now; running ones stop at their next heartbeat. A finished
        job stays as it ended."""
        job = self.store.job(job_id)
        if job is None or job["finished"] is not None:
            return
        self.store.cancel(job_id)
        for n, item in enumerate(job["items"] if job else []):
            if item["status"] == "queued":
                new = self.store.update_item(job_id, n, _cancel_queued)
                if new is not None:
                    Path(new["path"]).unlink(missing_ok=True)
        self.finish_if_done(job_id)

    def finish_if_done(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job is None or any(item["status"] not in TERMINAL for item in job["items"]):
            return
        if not self.store.mark_finished(job_id):
            return  # another worker saw the last item end at the same time
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        log.info("job finished", extra={"job_id": job_id, "status": job_status(job)})
        if job.get("callback_url"):
            self.send_webhook(job_id)

    def sweep(self) -> None:
        """Stalled items back on the queue (or failed after their last attempt); old jobs out."""
        stale_before = time.time() - self.settings.jobs_stale_s
        for job_id in self.store.unfinished():
            job = self.store.job(job_id)
            if job is None:
                continue
            for n, item in enumerate(job["items"]):
                if item["status"] != "running" or item["heartbeat"] > stale_before:
                    continue
                new = self.store.update_item(
                    job_id, n, lambda doc: _requeue(doc, stale_before, self.settings)
                )
                if new is None:
                    continue
                log.warning(
                    "stalled item",
                    extra={"job_id": job_id, "item": n, "now": new["status"]},
                )
                if new["status"] == "queued":
                    self.analyze_item(job_id, n)
                else:
                    Path(new["path"]).unlink(missing_ok=True)
            self.finish_if_done(job_id)
        for job_id in self.store.purge():
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Folders no job owns: a gateway killed while spooling, a job deleted meanwhile.
        Old enough that no upload can still be arriving into them."""
        uploads = self.settings.jobs_dir / "uploads"
        before = time.time() - 2 * self.settings.jobs_upload_timeout_s  # a job's deadline
        for folder in uploads.iterdir() if uploads.is_dir() else []:
            if folder.stat().st_mtime < before and self.store.job(folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)

    def _analyze_item(self, job_id: str, n: int) -> None:
        if self.runner is None:
            raise RuntimeError("this process runs no job workers")
        self.runner.run(job_id, n)

    def _send_webhook(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job is None or not job.get("callback_url"):
            return
        # Signed with the secret of the key that submitted the job, never one for everyone.
        secrets = webhook_secrets(self.settings, job["owner"])
        if not secrets:  # the gateway had one when it took the job; this worker has not
            log.error("no GATEWAY_JOBS_WEBHOOK_SECRET: webhook not sent", extra={"job_id": job_id})
            return
        body = json.dumps(job_view(job), separators=(",", ":")).encode()
        webhook.deliver(
            job["callback_url"],
            body,
            secrets,  # one Webhook-Signature v1= per secret
            self.settings.jobs_webhook_timeout_s,
            self.settings.jobs_allow_private_callbacks,
            egress=webhook.callback_policy(self.settings),
        )


def _cancel_queued(doc: Doc) -> Doc | None:
    if doc["status"] != "queued":
        return None
    return doc | {"status": "cancelled", "finished": time.time()}


def _requeue(doc: Doc, stale_before: float, settings: Settings) -> Doc | None:
    if doc["status"] != "running" or doc["heartbeat"] > stale_before:
        return None
    if doc["attempts"] < settings.jobs_max_attempts:
        return doc | {"status": "queued"}
    return doc | {
        "status": "failed",
        "finished": time.time(),
        "error": {
            "code": "interrupted",
            "message": f"the worker analysing this file stopped {doc['attempts']} times",
        },
    }


class ItemRunner:
    """Runs one item at a time per huey worker thread, on an event loop the Analyzer lives on."""

    def __init__(self, jobs: Jobs, analyzer: Analyzer, loop: asyncio.AbstractEventLoop) -> None:
        self.jobs = jobs
        self.analyzer = analyzer
        self.loop = loop
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()

    def run(self, job_id: str, n: int) -> None:
        store, settings = self.jobs.store, self.jobs.settings
        job = store.job(job_id)
        if job is None:
            return
        cancelled = job["cancelled"]
        claimed = store.update_item(job_id, n, lambda doc: self._claim(doc, cancelled))
        if claimed is None:
            return  # already taken, finished or cancelled: a duplicate message
        if claimed["status"] != "running":  # the job was cancelled while queued
            Path(claimed["path"]).unlink(missing_ok=True)
            self.jobs.finish_if_done(job_id)
            return
        attempt = claimed["attempts"]
        options = options_for(
            settings,
            **job["options"],
            filename=claimed["filename"],
            size=claimed["bytes"],
            sha256=claimed.get("sha256"),
            request_id=f"{job_id}-{n}",
            owner=job["owner"],
            source="job",
        )
        log.info("item started", extra={"job_id": job_id, "item": n, "attempt": attempt})
        future = asyncio.run_coroutine_threadsafe(
            self.analyzer.analyze(Path(claimed["path"]), options), self.loop
        )
        outcome = self._measured_wait(job_id, n, attempt, future)
        if outcome is None:
            return  # the process is stopping or the item was taken over: not ours to finish
        finished = store.update_item(job_id, n, lambda doc: _finish(doc, attempt, outcome))
        if finished is not None:
            Path(finished["path"]).unlink(missing_ok=True)
            log.info("item ended", extra={"job_id": job_id, "item": n, "status": outcome["status"]})
        self.jobs.finish_if_done(job_id)

    def _claim(self, doc: Doc, cancelled: bool) -> Doc | None:
        if doc["status"] != "queued":
            return None
        if cancelled:
            return doc | {"status": "cancelled", "finished": time.time()}
        return doc | {
            "status": "running",
            "attempts": doc["attempts"] + 1,
            "heartbeat": time.time(),
            "started": time.time(),
            "worker": self.worker,
        }

    def _measured_wait(
        self, job_id: str, n: int, attempt: int, future: concurrent.futures.Future
    ) -> Doc | None:
        """_wait, counted: the item's outcome and time in this process's metrics."""
        started = time.monotonic()
        with JOB_ITEMS_RUNNING.track_inprogress():
            outcome = self._wait(job_id, n, attempt, future)
        if outcome is not None:
            label = outcome["status"]
        else:  # not ours to finish: handed back on a stop, or taken over by the sweep
            label = "given_back" if self.stopping.is_set() else "lost"
        JOB_ITEMS.labels(label).inc()
        JOB_ITEM_SECONDS.labels(label).observe(time.monotonic() - started)
        return outcome

    def _wait(
        self, job_id: str, n: int, attempt: int, future: concurrent.futures.Future
    ) -> Doc | None:
        """The item's outcome; heartbeats and cancellation checks while it runs."""
        store = self.jobs.store
        while True:
            try:
                answer = future.result(timeout=self.jobs.settings.jobs_heartbeat_s)
                return {"status": "done", "result": answer.model_dump()}
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                return {"status": "cancelled"}
            except Exception as exc:  # an undecodable file, Triton down: this item's error
                if not isinstance(exc, ApiError | MediaError):
                    log.exception("item failed", extra={"job_id": job_id, "item": n})
                return {"status": "failed", "error": error_of(exc)}
            if self.stopping.is_set():
                future.cancel()
                store.update_item(job_id, n, lambda doc: _give_back(doc, attempt))
                log.info("item given back", extra={"job_id": job_id, "item": n})
                return None
            job = store.job(job_id)
            if job is None or job["cancelled"]:
                future.cancel()  # the coroutine is cancelled at its next await
                continue
            alive = store.update_item(job_id, n, lambda doc: _beat(doc, attempt))
            if alive is None:
                future.cancel()
                return None


def _beat(doc: Doc, attempt: int) -> Doc | None:
    if doc["status"] != "running" or doc["attempts"] != attempt:
        return None
    return doc | {"heartbeat": time.time()}


def _give_back(doc: Doc, attempt: int) -> Doc | None:
    """A stopping worker's item: its heartbeat is left to go stale, so the sweep requeues
    it; the attempt is not counted against it (a deploy is not the file's fault)."""
    if doc["status"] != "running" or doc["attempts"] != attempt:
        return None
    return doc | {"attempts": attempt - 1, "heartbeat": 0.0}


def _finish(doc: Doc, attempt: int, outcome: Doc) -> Doc | None:
    if doc["status"] != "running" or doc["attempts"] != attempt:
        return None  # the sweep gave it to another worker meanwhile
    return doc | outcome | {"finished": time.time()}


class QuietConsumer(Consumer):
    """huey's consumer inside a process that owns its signals (uvicorn's gateway)."""

    def _set_signal_handlers(self) -> None:
        return None


class WorkerPool:
    """huey worker threads plus the recovery sweep, in this process."""

    def __init__(self, jobs: Jobs, runner: ItemRunner, workers: int, embedded: bool) -> None:
        self.jobs = jobs
        self.runner = runner
        jobs.runner = runner
        consumer_class = QuietConsumer if embedded else Consumer
        self.consumer = consumer_class(
            jobs.huey,
            workers=workers,
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,  # an idle worker looks at the queue at least twice a second
            worker_type="thread",
            graceful_signal="TERM",
            shutdown_timeout=jobs.settings.shutdown_timeout_s,
        )
        JOB_WORKER_THREADS.set(workers)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="job-sweep", daemon=True)

    def start(self) -> None:
        self._sweeper.start()
        self.consumer.start()

    def run(self) -> None:
        """The worker process's main loop (signals handled by huey)."""
        self._sweeper.start()
        try:
            self.consumer.run()
        finally:
            self.stop()

    def stop(self) -> None:
        self.runner.stopping.set()
        self._stop.set()
        self.consumer.stop(graceful=True)

    def _sweep_loop(self) -> None:
        interval = max(0.5, self.jobs.settings.jobs_stale_s / 3)
        while not self._stop.wait(interval):
            try:
                self.jobs.sweep()
            except Exception:
                log.exception("job sweep failed")
