"""Locust users for `make loadtest` (run by `python -m tests.load`, which sets LOAD_*).

GatewayUser uploads a mix of clips and images to POST /api/detect; JobUser submits the
same files as one job (POST /api/jobs) and polls it until it ends (one "request" is the
whole job: its time is submit to finish, its rate times 60 is jobs per minute); EnsembleUser
sends batches of real face crops straight to Triton's deepfake_ensemble over gRPC. A 429 or
503 is the service shedding load as designed: it counts as a failure for locust (the
client did not get an answer) and is tallied per status code in LOAD_STATUS_FILE, so the
runner can tell shedding from errors (timeouts, connection failures, 5xx other than 503).
"""

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpcio's blocking calls must yield to locust's gevent loop

import numpy as np  # noqa: E402
from locust import HttpUser, User, constant, events, task  # noqa: E402
from tritonclient.grpc import InferenceServerClient, InferenceServerException, InferInput  # noqa: E402

MEDIA = [Path(p) for p in os.environ.get("LOAD_MEDIA", "").split(os.pathsep) if p]
FRAMES = int(os.environ.get("LOAD_FRAMES", "8"))
TRITON_URL = os.environ.get("LOAD_TRITON_URL", "127.0.0.1:8001")
ENSEMBLE = os.environ.get("LOAD_ENSEMBLE", "deepfake_ensemble")
CROPS_FILE = os.environ.get("LOAD_CROPS", "")
BATCH = int(os.environ.get("LOAD_BATCH", "4"))
STATUS_FILE = os.environ.get("LOAD_STATUS_FILE", "")
TIMEOUT_S = float(os.environ.get("LOAD_TIMEOUT_S", "300"))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
JOB_POLL_S = 0.5

# status counts per request name; "0" is a request that got no HTTP answer (timeout, reset)
STATUS: dict[str, Counter] = defaultdict(Counter)
# latencies of answered requests only: locust's percentiles mix in the instant 429s
OK_MS: dict[str, list[float]] = defaultdict(list)
LOCK = threading.Lock()


def tally(name: str, status: str, began: float) -> None:
    with LOCK:
        STATUS[name][status] += 1
        if status in ("200", "OK"):
            OK_MS[name].append((time.perf_counter() - began) * 1000)


@events.test_stop.add_listener
def write_status(**_: object) -> None:
    if STATUS_FILE:
        statuses = {k: dict(v) for k, v in STATUS.items()}
        Path(STATUS_FILE).write_text(json.dumps({"statuses": statuses, "ok_ms": OK_MS}))


class GatewayUser(HttpUser):
    """An uploader: one file at a time, a short pause between answers."""

    weight = 3
    wait_time = constant(0.2)

    @task
    def detect(self) -> None:
        path = random.choice(MEDIA)
        kind = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
        name = f"POST /api/detect [{kind}]"
        began = time.perf_counter()
        with (
            path.open("rb") as f,
            self.client.post(
                "/api/detect",
                files={"file": (path.name, f)},
                params={"frames": FRAMES},
                name=name,
                timeout=TIMEOUT_S,
                catch_response=True,
            ) as response,
        ):
            tally(name, str(response.status_code), began)
            if response.status_code == 200:
                response.success()
            elif response.status_code in (429, 503):
                response.failure(f"shed {response.status_code}")
            else:
                response.failure(f"error {response.status_code}")


class JobUser(HttpUser):
    """A batch client: every file of LOAD_MEDIA as one job, then the next once it ended."""

    fixed_count = 1  # one per phase, beside the uploaders
    wait_time = constant(0.2)

    @task
    def job(self) -> None:
        name = f"JOB /api/jobs [{len(MEDIA)} files]"
        began = time.perf_counter()
        files = [("file", (p.name, p.read_bytes())) for p in MEDIA]
        submitted = self.client.post(
            "/api/jobs", files=files, params={"frames": FRAMES}, name="POST /api/jobs",
            timeout=TIMEOUT_S,
        )  # fmt: skip
        status = str(submitted.status_code)
        if submitted.status_code == 202:
            status = self.wait(submitted.json()["links"]["self"], began)
        tally(name, status, began)
        events.request.fire(
            request_type="JOB",
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=0,
            exception=None if status == "200" else RuntimeError(f"job {status}"),
            context={},
        )

    def wait(self, path: str, began: float) -> str:
        """ "200" once every file was analysed; else how it ended (or "0": not in time)."""
        while time.perf_counter() - began < TIMEOUT_S:
            job = self.client.get(path, name="GET /api/jobs/{id}").json()
            if job["finished"] is not None:
                return "200" if job["progress"]["done"] == job["progress"]["total"] else "failed"
            time.sleep(JOB_POLL_S)
        return "0"


class EnsembleUser(User):
    """A gRPC client of Triton's ensemble, with crops cut from the same clips."""

    weight = 1
    wait_time = constant(0.2)

    def on_start(self) -> None:
        self.crops = np.load(CROPS_FILE)
        self.triton = InferenceServerClient(TRITON_URL)

    def on_stop(self) -> None:
        self.triton.close()

    @task
    def infer(self) -> None:
        start = random.randrange(max(1, len(self.crops) - BATCH + 1))
        faces = np.ascontiguousarray(self.crops[start : start + BATCH])
        tensor = InferInput("FACES", list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(faces)
        name = f"gRPC {ENSEMBLE} [batch {len(faces)}]"
        began = time.perf_counter()
        exception = None
        try:
            self.triton.infer(ENSEMBLE, [tensor], client_timeout=TIMEOUT_S)
            tally(name, "OK", began)
        except InferenceServerException as exc:
            exception = exc
            tally(name, exc.status() or "ERROR", began)
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=faces.nbytes,
            exception=exception,
            context={},
        )
