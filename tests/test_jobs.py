"""/api/jobs against real processes: a lite Triton, the gateway (python -m gateway) with its
embedded huey workers, the queue and job records in SQLite (the default) or in a real
redis-server; real clips and images, a real webhook receiver checking signatures."""

import contextlib
import csv
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from export.repository import profile_members
from gateway.server.jobs.engine import webhook_secret_for_key
from model_repository.local_triton import TritonSettings
from tests.conftest import REPOSITORY, ROOT, Gateway, start_gateway
from tests.jobs_support import (
    BAD,
    CLIPS,
    IMAGES,
    SECRET,
    TIMEOUT,
    Receiver,
    answered,
    open_upload,
    read_answer,
    redis_server,
    send_rest,
    submit,
    wait_job,
    wait_running,
)
from tests.stack import free_port, metric, wait_until

ALICE = {"X-API-Key": "alice-key"}
BOB = {"X-API-Key": "bob-key"}
# The lite profile's members, all voting: what a job's default analysis runs.
LITE = profile_members(REPOSITORY, "lite")
FAST = {"frames": 4}  # short analyses: the tests are about the jobs, not the verdicts


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateway(
    request: pytest.FixtureRequest, lite_triton: TritonSettings, tmp_path_factory
) -> Iterator[Gateway]:
    """A gateway with keys for two callers, webhooks signed, loopback callbacks allowed
    (the test receiver is on 127.0.0.1); its queue in SQLite or in a real redis-server."""
    tmp = tmp_path_factory.mktemp(f"jobs-{request.param}")
    settings = {
        "api_keys": "alice-key,bob-key",
        "jobs_webhook_secret": SECRET,
        "jobs_allow_private_callbacks": "true",
        "jobs_heartbeat_s": 0.5,
        "jobs_workers": 2,
    }
    if request.param == "redis":
        with (
            redis_server(tmp) as url,
            start_gateway(lite_triton.grpc_url, tmp, jobs_redis_url=url, **settings) as gw,
        ):
            yield gw
    else:
        with start_gateway(lite_triton.grpc_url, tmp, **settings) as gw:
            yield gw


def jobs_dir(gateway: Gateway) -> Path:
    return gateway.uploads.parent / f"jobs-{gateway.url.rsplit(':', 1)[1]}"


def test_a_ten_file_job_mixing_good_and_bad_files(gateway: Gateway) -> None:
    files = [(p.name, p.read_bytes()) for p in IMAGES[:5] + CLIPS]
    files += list(BAD.items())
    assert len(files) == 10
    response = submit(gateway.url, files, ALICE, **FAST)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] in ("queued", "running")
    assert [i["filename"] for i in accepted["items"]] == [name for name, _ in files]
    assert response.headers["Location"] == accepted["links"]["self"]

    job = wait_job(gateway.url, accepted["id"], ALICE)
    assert job["status"] == "done"
    assert job["progress"] | {} == {
        "total": 10, "finished": 10, "queued": 0, "running": 0,
        "done": 7, "failed": 3, "cancelled": 0,
    }  # fmt: skip
    for item in job["items"][:7]:
        assert item["status"] == "done" and item["error"] is None
        assert item["result"]["filename"] == item["filename"]
        assert item["result"]["verdict"] in ("real", "fake", "uncertain", "no_face")
    errors = {i["filename"]: i["error"]["code"] for i in job["items"][7:]}
    assert errors == {
        "notes.mp4": "unsupported_media",
        "empty.jpg": "unsupported_media",
        "cut.mp4": "undecodable_media",
    }
    # Exactly the synchronous answer: the same verdict and scores for the same file.
    sync = httpx.post(
        gateway.url + "/api/detect",
        files={"file": (IMAGES[0].name, IMAGES[0].read_bytes())},
        params=FAST,
        headers=ALICE,
        timeout=TIMEOUT,
    ).json()
    first = job["items"][0]["result"]
    assert set(first) == set(sync)
    assert (first["verdict"], first["score"]) == (sync["verdict"], sync["score"])
    assert [m["score"] for m in first["models"]] == [m["score"] for m in sync["models"]]
    # Every upload is deleted once its item finished.
    assert not (jobs_dir(gateway) / "uploads" / job["id"]).exists()


def test_a_job_takes_every_detect_option_and_names_each_file_by_its_hash(
    gateway: Gateway,
) -> None:
    """explain and thumbnails as on /api/detect; each item's size and sha256, as the
    synchronous answer (and a report made from it) carries them."""
    data = CLIPS[0].read_bytes()
    params = FAST | {"explain": "true", "thumbnails": "true"}
    accepted = submit(gateway.url, [(CLIPS[0].name, data)], ALICE, **params).json()
    job = wait_job(gateway.url, accepted["id"], ALICE)
    (item,) = job["items"]
    assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["bytes"] == len(data)
    result = item["result"]
    assert (result["sha256"], result["bytes"]) == (item["sha256"], len(data))
    assert result["explanations"], "explain=true on a job must explain its decisive faces"
    faces = [face for frame in result["frames"] for face in frame["faces"]]
    assert faces and all(face["thumbnail"].startswith("data:image/jpeg") for face in faces)


def test_events_report_progress_until_the_job_ends(gateway: Gateway) -> None:
    job = submit(gateway.url, [(p.name, p.read_bytes()) for p in IMAGES[:3]], ALICE).json()
    with httpx.stream(
        "GET", f"{gateway.url}{job['links']['events']}", headers=ALICE, timeout=TIMEOUT
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[0]["event"] == "progress"
    assert events[-1]["event"] == "end"
    assert events[-1]["job"]["status"] == "done"
    assert all(i["result"] for i in events[-1]["job"]["items"])
    finished = [e["job"]["progress"]["finished"] for e in events]
    assert finished == sorted(finished) and finished[-1] == 3
    # Server-sent events for a browser's EventSource: the same events, framed.
    with httpx.stream(
        "GET",
        f"{gateway.url}{job['links']['events']}",
        headers=ALICE | {"Accept": "text/event-stream"},
        timeout=TIMEOUT,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.startswith("event: end\ndata: {")


def test_cancel_stops_running_items_and_drops_queued_ones(gateway: Gateway) -> None:
    clips = [(f"{n}-{p.name}", p.read_bytes()) for n in range(3) for p in CLIPS]
    job = submit(gateway.url, clips, ALICE, frames=32).json()
    wait_running(gateway.url, job["id"], ALICE)
    response = httpx.post(f"{gateway.url}/api/jobs/{job['id']}/cancel", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    ended = wait_job(gateway.url, job["id"], ALICE, timeout=60)
    assert ended["status"] == "cancelled"
    statuses = [i["status"] for i in ended["items"]]
    assert statuses.count("cancelled") >= len(clips) - 2  # at most the two running finished
    assert not (jobs_dir(gateway) / "uploads" / job["id"]).exists()


def test_an_idempotency_key_gives_the_same_job_once(gateway: Gateway) -> None:
    key = {"Idempotency-Key": f"batch-{time.time_ns()}"}
    files = [(IMAGES[0].name, IMAGES[0].read_bytes())]
    first = submit(gateway.url, files, ALICE | key)
    again = submit(gateway.url, files, ALICE | key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # Keys are per API key: Bob's same Idempotency-Key is his own job.
    bobs = submit(gateway.url, files, BOB | key)
    assert bobs.json()["id"] != first.json()["id"]
    listed = httpx.get(gateway.url + "/api/jobs", headers=ALICE, params={"limit": 100}).json()
    assert [j["id"] for j in listed["jobs"]].count(first.json()["id"]) == 1


def test_a_key_sees_and_cancels_only_its_own_jobs(gateway: Gateway) -> None:
    alices = submit(gateway.url, [(IMAGES[1].name, IMAGES[1].read_bytes())], ALICE).json()
    url = f"{gateway.url}/api/jobs/{alices['id']}"
    for method, path in (("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("GET", "/events")):
        response = httpx.request(method, url + path, headers=BOB)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"
    assert alices["id"] not in [j["id"] for j in httpx.get(
        gateway.url + "/api/jobs", headers=BOB, params={"limit": 100}
    ).json()["jobs"]]  # fmt: skip
    assert httpx.get(url).status_code == 401  # no key at all
    listed = httpx.get(gateway.url + "/api/jobs", headers=ALICE).json()
    assert listed["jobs"][0]["id"] == alices["id"]  # newest first
    created = [j["created"] for j in listed["jobs"]]
    assert created == sorted(created, reverse=True)
    assert wait_job(gateway.url, alices["id"], ALICE)["status"] == "done"
    # Cancelling a finished job changes nothing.
    again = httpx.post(url + "/cancel", headers=ALICE)
    assert again.status_code == 200 and again.json()["status"] == "done"


def test_the_webhook_is_signed_and_retried(gateway: Gateway) -> None:
    """Signed with Alice's own secret (derived from the master), retried after a 500."""
    alices_secret = webhook_secret_for_key(SECRET, ALICE["X-API-Key"])
    with Receiver(fail_first=1, secret=alices_secret).serving() as receiver:
        files = [(p.name, p.read_bytes()) for p in IMAGES[:2]]
        job = submit(gateway.url, files, ALICE, callback_url=receiver.url).json()
        assert receiver.received.wait(120), "no webhook delivered"
    assert len(receiver.deliveries) == 2  # a 500, then the retry
    assert all(d["valid"] for d in receiver.deliveries)
    body = receiver.deliveries[-1]["body"]
    assert body["id"] == job["id"] and body["status"] == "done"
    assert [i["result"]["filename"] for i in body["items"]] == [name for name, _ in files]


def test_a_forged_signature_does_not_verify() -> None:
    from gateway.server.jobs.webhook import signature, verify

    body, now = b'{"id":"x"}', str(int(time.time()))
    good = signature(SECRET, now, body)
    assert verify(SECRET, now, body, good, 300)
    assert not verify("other-secret", now, body, good, 300)
    assert not verify(SECRET, now, body + b" ", good, 300)
    assert not verify(SECRET, str(int(time.time()) - 3600), body, good, 300)  # a replay


# --- limits: a gateway with small caps, a short retention and the SSRF guard on -----------


@pytest.fixture(scope="module")
def strict(lite_triton: TritonSettings, tmp_path_factory) -> Iterator[Gateway]:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("jobs-strict"),
        api_keys="alice-key,bob-key",
        jobs_webhook_secret=SECRET,
        jobs_max_files=3,
        jobs_max_mb=1,
        max_upload_mb=1,
        jobs_max_active_per_key=1,
        jobs_retention_s=2,
        jobs_stale_s=1.5,  # the sweep runs every half second
    ) as gw:
        yield gw


def uploads_left(gateway: Gateway) -> list[Path]:
    return list((jobs_dir(gateway) / "uploads").glob("*/*"))


def test_a_job_over_its_caps_is_413_and_nothing_is_queued(strict: Gateway) -> None:
    small = (IMAGES[0].name, IMAGES[0].read_bytes())
    too_many = submit(strict.url, [small] * 4, BOB)
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "job_too_large"
    one_too_big = submit(strict.url, [small, ("big.mp4", b"\0" * (2 << 20))], BOB)
    assert one_too_big.status_code == 413
    assert one_too_big.json()["error"]["code"] in ("file_too_large", "job_too_large")
    assert httpx.get(strict.url + "/api/jobs", headers=BOB).json()["total"] == 0
    assert uploads_left(strict) == []


@pytest.mark.parametrize(
    "callback_url",
    ["http://127.0.0.1:9/hook", "http://10.0.0.7/hook", "http://[::1]/x", "ftp://example.org/",
     "http://169.254.169.254/latest/meta-data", "not a url"],
)  # fmt: skip
def test_a_bad_or_private_callback_url_is_422(strict: Gateway, callback_url: str) -> None:
    response = submit(strict.url, [(IMAGES[0].name, b"x")], BOB, callback_url=callback_url)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_callback_url"
    assert uploads_left(strict) == []


def test_too_many_unfinished_jobs_of_a_key_is_429(strict: Gateway) -> None:
    images = [(p.name, p.read_bytes()) for p in IMAGES[:3]]
    first = submit(strict.url, images, ALICE)
    assert first.status_code == 202
    second = submit(strict.url, images[:1], ALICE)
    state = httpx.get(strict.url + first.headers["Location"], headers=ALICE).json()
    if state["finished"] is None:  # three analyses take seconds: the first job still runs
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) > 0
        assert second.json()["error"]["code"] == "too_many_jobs"
    assert submit(strict.url, images[:1], BOB).status_code == 202  # another key is not held up
    wait_job(strict.url, first.json()["id"], ALICE)
    third = submit(strict.url, images[:1], ALICE)
    assert third.status_code == 202  # once the first ended
    wait_job(strict.url, third.json()["id"], ALICE)


def test_a_finished_job_is_deleted_after_its_retention(strict: Gateway) -> None:
    job = submit(strict.url, [(IMAGES[2].name, IMAGES[2].read_bytes())], BOB).json()
    wait_job(strict.url, job["id"], BOB)
    time.sleep(2.5)
    response = httpx.get(f"{strict.url}/api/jobs/{job['id']}", headers=BOB)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
    assert job["id"] not in [j["id"] for j in httpx.get(
        strict.url + "/api/jobs", headers=BOB).json()["jobs"]]  # fmt: skip


def test_an_orphaned_upload_folder_is_swept(strict: Gateway) -> None:
    """A gateway killed while spooling leaves a folder no job owns."""
    orphan = jobs_dir(strict) / "uploads" / ("f" * 32)
    orphan.mkdir(parents=True)
    (orphan / "0.upload").write_bytes(b"half an upload")
    old = time.time() - 86400  # past twice the longest upload (GATEWAY_JOBS_UPLOAD_TIMEOUT_S)
    os.utime(orphan, (old, old))
    deadline = time.monotonic() + 30
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not orphan.exists()


def test_unknown_job_ids_are_404_json(strict: Gateway) -> None:
    for job_id in ("0" * 32, "nope", hashlib.sha256(b"x").hexdigest()[:32]):
        for method, path in (("GET", ""), ("POST", "/cancel"), ("DELETE", "")):
            url = f"{strict.url}/api/jobs/{job_id}{path}"
            response = httpx.request(method, url, headers=BOB)
            assert response.status_code == 404, (method, path, job_id)
            assert response.json()["error"]["code"] == "job_not_found"


def test_the_cli_sends_a_folder_as_a_job_and_writes_reports(
    gateway: Gateway, tmp_path: Path
) -> None:
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for image in IMAGES[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "sub" / "notes.mp4").write_bytes(BAD["notes.mp4"])
    (folder / ".hidden.jpg").write_bytes(b"skipped")
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "gateway.programs.cli", "detect", str(folder), "--url", gateway.url,
         "--api-key", "alice-key", "--frames", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # one file failed
    rows = json.loads(out.with_suffix(".json").read_text())
    expected = [*sorted(p.name for p in IMAGES[:2]), "notes.mp4"]
    assert [Path(r["file"]).name for r in rows] == expected
    for r in rows[:2]:
        assert r["verdict"] in ("real", "fake", "uncertain") and r["error"] is None
        assert isinstance(r["reasons"], list)
        assert r["sha256"] == hashlib.sha256(Path(r["file"]).read_bytes()).hexdigest()
        assert set(r["models"]) == set(LITE) and r["faces"] >= 1
    assert rows[2]["error"].startswith("unsupported_media") and rows[2]["verdict"] is None
    with out.with_suffix(".csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["sha256"] for t in table] == [r["sha256"] for r in rows]
    assert "meso4" in table[0] and table[2]["error"].startswith("unsupported_media")
    assert [t["reasons"] for t in table] == [" ".join(r["reasons"]) for r in rows]


def test_a_full_redis_refuses_new_jobs_with_503_and_recovers(
    lite_triton: TritonSettings, tmp_path: Path
) -> None:
    """Redis past its maxmemory (noeviction, as deployed) refuses writes: a new job gets a
    503 to retry and leaves no file behind, reads still answer; with room again, jobs are
    taken."""
    import redis

    image = [(IMAGES[0].name, IMAGES[0].read_bytes())]
    with (
        redis_server(tmp_path) as url,
        start_gateway(lite_triton.grpc_url, tmp_path, jobs_redis_url=url, jobs_workers=0) as gw,
    ):
        store = redis.Redis.from_url(url)
        store.config_set("maxmemory", 1)  # below what Redis already holds
        refused = submit(gw.url, image, **FAST)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "jobs_unavailable"
        assert int(refused.headers["Retry-After"]) > 0
        assert list((jobs_dir(gw) / "uploads").iterdir()) == []  # nothing kept
        assert httpx.get(gw.url + "/api/jobs", timeout=TIMEOUT).status_code == 200
        store.config_set("maxmemory", 0)
        assert submit(gw.url, image, **FAST).status_code == 202


# --- the bounds of a job's upload and a job's end, on a real gateway with no Triton --------
# (nothing here is analysed: the places, slots, rates and deletions are the gateway's own)


def job_rows(gateway: Gateway, job_id: str, redis_url: str | None = None) -> int:
    """What the store holds of the job: its rows in SQLite (the job and its items), or in
    Redis its hash and its place in the owner's index."""
    if redis_url:
        import redis

        store = redis.Redis.from_url(redis_url)
        owners = store.keys("deepfake:jobs:owner:*")
        indexed = sum(store.zscore(owner, job_id) is not None for owner in owners)
        return store.hlen(f"deepfake:jobs:job:{job_id}") + indexed
    with contextlib.closing(sqlite3.connect(jobs_dir(gateway) / "jobs.db")) as db:
        (jobs,) = db.execute("select count(*) from jobs where id = ?", (job_id,)).fetchone()
        (items,) = db.execute("select count(*) from items where job_id = ?", (job_id,)).fetchone()
    return jobs + items


def job_folders(gateway: Gateway) -> set[str]:
    uploads = jobs_dir(gateway) / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()


@dataclass(frozen=True)
class Capped:
    gateway: Gateway
    redis_url: str | None  # None: the records in SQLite

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def capped(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Capped]:
    """Places for 2 unfinished jobs per key and 3 in all; no workers, so jobs stay queued;
    the records in SQLite or in a real redis-server."""
    tmp = tmp_path_factory.mktemp(f"jobs-capped-{request.param}")
    settings = {
        "api_keys": "alice-key,bob-key",
        "jobs_workers": 0,
        "jobs_max_active_per_key": 2,
        "jobs_max_active": 3,
    }
    no_triton = f"127.0.0.1:{free_port()}"  # nothing is analysed
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(tmp)) if request.param == "redis" else None
        if redis_url:
            settings["jobs_redis_url"] = redis_url
        yield Capped(stack.enter_context(start_gateway(no_triton, tmp, **settings)), redis_url)


@pytest.mark.stack
def test_concurrent_submits_take_no_more_places_than_the_caps(capped: Capped) -> None:
    """Four uploads of one key at once against its cap of 2: each takes its place before
    its body is read, so two are accepted and two refused with nothing spooled (checked,
    then spooled, all four were accepted)."""
    image = [(IMAGES[0].name, IMAGES[0].read_bytes())]
    started = [open_upload(capped.url, "/api/jobs", image, ALICE) for _ in range(4)]
    for conn, body in started:
        conn.sendall(body[: len(body) // 2])
    time.sleep(1)  # every request is past its headers, none is complete
    for conn, body in started:
        send_rest(conn, body[len(body) // 2 :])
    answers = [read_answer(conn) for conn, _ in started]
    assert sorted(status for status, _ in answers) == [202, 202, 429, 429], answers
    accepted = {body["id"] for status, body in answers if status == 202}
    refused = [body["error"]["code"] for status, body in answers if status == 429]
    assert refused == ["too_many_jobs"] * 2
    listed = httpx.get(capped.url + "/api/jobs", headers=ALICE).json()
    assert {job["id"] for job in listed["jobs"]} == accepted and listed["total"] == 2
    assert job_folders(capped.gateway) == accepted  # the refused ones wrote nothing
    # The cap of all keys (3): Bob takes the last place, then is refused too.
    assert submit(capped.url, image, BOB).status_code == 202
    full = submit(capped.url, image, BOB)
    assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_jobs"
    assert "the service has 3 unfinished jobs" in full.json()["error"]["message"]
    assert int(full.headers["Retry-After"]) > 0
    # A deleted job gives its place back.
    for headers in (ALICE, BOB):
        for job in httpx.get(capped.url + "/api/jobs", headers=headers).json()["jobs"]:
            deleted = httpx.delete(f"{capped.url}/api/jobs/{job['id']}", headers=headers)
            assert deleted.status_code == 204
    assert submit(capped.url, image, BOB).status_code == 202
    delete_all(capped, BOB)


def delete_all(gateway: Capped, headers: dict) -> None:
    for job in httpx.get(gateway.url + "/api/jobs", headers=headers).json()["jobs"]:
        httpx.delete(f"{gateway.url}/api/jobs/{job['id']}", headers=headers)


@pytest.mark.stack
def test_delete_removes_the_job_its_files_and_its_results(capped: Capped) -> None:
    job = submit(capped.url, [(IMAGES[1].name, IMAGES[1].read_bytes())], ALICE).json()
    url = f"{capped.url}/api/jobs/{job['id']}"
    folder = jobs_dir(capped.gateway) / "uploads" / job["id"]
    assert list(folder.iterdir()) and job_rows(capped.gateway, job["id"], capped.redis_url)
    assert httpx.delete(url, headers=BOB).status_code == 404  # not Bob's to delete
    deleted = httpx.delete(url, headers=ALICE)
    assert (deleted.status_code, deleted.content) == (204, b"")
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", "")):
        response = httpx.request(method, url + path, headers=ALICE)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "job_not_found"
    assert not folder.exists()
    assert job_rows(capped.gateway, job["id"], capped.redis_url) == 0
    listed = httpx.get(capped.url + "/api/jobs", headers=ALICE).json()["jobs"]
    assert job["id"] not in [j["id"] for j in listed]


@pytest.mark.stack
def test_cancel_stops_a_job_and_keeps_it_readable(capped: Capped) -> None:
    files = [(p.name, p.read_bytes()) for p in IMAGES[:2]]
    job = submit(capped.url, files, ALICE).json()
    url = f"{capped.url}/api/jobs/{job['id']}"
    cancelled = httpx.post(url + "/cancel", headers=ALICE)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished"]
    now = httpx.get(url, headers=ALICE).json()
    assert [i["status"] for i in now["items"]] == ["cancelled", "cancelled"]
    assert job["id"] not in job_folders(capped.gateway)  # the uploads went with the analysis
    assert httpx.delete(url, headers=ALICE).status_code == 204


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One upload received at a time, at 4 KiB/s at least after 5 s; a worker and its
    sweep (every half second) with a 3 s retention."""
    with start_gateway(
        f"127.0.0.1:{free_port()}",  # no Triton: every analysis fails, and the job ends
        tmp_path_factory.mktemp("jobs-paced"),
        max_uploads=1,
        upload_min_bytes_per_s=4096,
        upload_grace_s=5,
        jobs_workers=1,
        jobs_heartbeat_s=0.5,
        jobs_stale_s=1.5,
        jobs_retention_s=3,
    ) as gw:
        yield gw


@pytest.mark.stack
def test_a_slow_job_upload_is_408_and_leaves_nothing(paced: Gateway) -> None:
    """1 KiB a second, under the 4 KiB/s minimum once the grace is over: refused as
    /api/detect refuses it, its spooled file removed (job uploads had no minimum rate)."""
    conn, body = open_upload(paced.url, "/api/jobs", [("slow.jpg", b"\0" * 16 * 1024)])
    start = time.monotonic()
    for offset in range(0, len(body), 1024):
        if answered(conn):
            break
        send_rest(conn, body[offset : offset + 1024])
        time.sleep(1)
    status, answer = read_answer(conn)
    assert (status, answer["error"]["code"]) == (408, "upload_too_slow"), answer
    assert time.monotonic() - start < 12
    wait_until(lambda: not job_folders(paced), timeout=5, what="the spooled upload removed")
    assert httpx.get(paced.url + "/api/jobs").json()["total"] == 0


@pytest.mark.stack
@pytest.mark.parametrize(("holder", "refused"), [("/api/jobs", "/api/detect"),
                                                 ("/api/detect", "/api/jobs")])  # fmt: skip
def test_job_uploads_take_the_upload_slots(paced: Gateway, holder: str, refused: str) -> None:
    """max_uploads=1: while one upload, of a job or for /api/detect, is being received,
    the other kind is refused at once, as a second of its own kind is."""
    image = [(IMAGES[0].name, IMAGES[0].read_bytes())]
    conn, body = open_upload(paced.url, holder, image)
    conn.sendall(body[:100])
    wait_until(lambda: metric(paced.url, "gateway_uploads_receiving") == 1, timeout=3)
    for route in (refused, holder):
        conn2, body2 = open_upload(paced.url, route, image)
        send_rest(conn2, body2)
        status, answer = read_answer(conn2)
        assert (status, answer["error"]["code"]) == (429, "too_many_uploads"), (route, answer)
    send_rest(conn, body[100:])
    status, answer = read_answer(conn)
    assert status in (202, 503), answer  # the job accepted; detect: no Triton here
    if holder == "/api/jobs":
        wait_job(paced.url, answer["id"], timeout=60)


@pytest.mark.stack
def test_a_finished_job_and_its_files_are_removed_after_its_retention(paced: Gateway) -> None:
    job = submit(paced.url, [(IMAGES[2].name, IMAGES[2].read_bytes())]).json()
    ended = wait_job(paced.url, job["id"], timeout=60)
    assert ended["items"][0]["error"] is not None  # no Triton: it failed, and ended
    assert job_rows(paced, job["id"]) == 2
    # What a worker killed between its item's end and the cleanup would leave.
    folder = jobs_dir(paced) / "uploads" / job["id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0.upload").write_bytes(b"left behind")
    wait_until(
        lambda: job_rows(paced, job["id"]) == 0 and not folder.exists(),
        timeout=15,
        what="the job's record and files removed",
    )
    assert httpx.get(f"{paced.url}/api/jobs/{job['id']}").status_code == 404
