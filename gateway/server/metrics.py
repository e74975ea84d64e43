"""Prometheus metrics of the gateway, served at /metrics."""

from prometheus_client import Counter, Gauge, Histogram

# h11 accepts any token as a method: anything else is counted as "other", never a new label.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


REQUESTS = Counter(
    "gateway_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
STAGE_SECONDS = Histogram(
    "gateway_stage_seconds",
    "Time per analysis stage",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FACES = Histogram(
    "gateway_faces_per_request",
    "Faces scored per analysed upload",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
)
VERDICTS = Counter("gateway_verdicts_total", "Verdicts returned", ["verdict"])
TRITON_ERRORS = Counter("gateway_triton_errors_total", "Failed calls to Triton", ["code"])
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Uploads being analysed now")
REJECTED = Counter("gateway_rejected_total", "Requests refused by admission control")
UPLOADS = Gauge("gateway_uploads_receiving", "Uploads being received now")
WAITING = Gauge("gateway_requests_waiting", "Uploads queued for an analysis slot")
TRITON_RETRIES = Counter(
    "gateway_triton_retries_total", "Calls to Triton repeated after UNAVAILABLE (safe: no effects)"
)

# Live analysis (/api/live).
LIVE_SESSIONS = Gauge("gateway_live_sessions", "Live sessions open now")
LIVE_FRAMES = Counter(
    "gateway_live_frames_total",
    "Live frames by fate: received, scored, dropped (a newer one came first), rejected",
    ["fate"],
)
LIVE_LAG = Histogram(
    "gateway_live_lag_seconds",
    "From a live frame's arrival to its score being sent",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10),
)

# Jobs (gateway/server/jobs/): the gateway's embedded workers and each `python -m
# gateway.programs.worker` (served on GATEWAY_JOBS_METRICS_PORT) count the items they run.
# The queue is shared: every process reports the same length, what the workers' HPA scales on.
JOBS_QUEUED = Gauge("gateway_jobs_queued", "Job items waiting in the queue for a worker")
JOB_OUTCOMES = ("done", "failed", "cancelled", "given_back", "lost")
JOB_ITEMS = Counter(
    "gateway_jobs_items_total",
    "Job items this process analysed, by outcome: done, failed, cancelled, given_back "
    "(stopping: back on the queue), lost (taken over after a missed heartbeat)",
    ["outcome"],
)
JOB_ITEM_SECONDS = Histogram(
    "gateway_jobs_item_seconds",
    "Time one job item was analysed by this process, by outcome",
    ["outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
# Each outcome exported from the start, at 0: a worker that never ends an item still has the
# series an alert's increase() needs (DeepfakeJobsStalled).
for _outcome in JOB_OUTCOMES:
    JOB_ITEMS.labels(_outcome)
    JOB_ITEM_SECONDS.labels(_outcome)
JOB_ITEMS_RUNNING = Gauge("gateway_jobs_items_running", "Job items being analysed by this process")
JOB_WORKER_THREADS = Gauge("gateway_jobs_worker_threads", "Job worker threads in this process")
JOB_WORKER_UP = Gauge(
    "gateway_jobs_worker_up",
    "1 while the job worker's analysis loop answers (what its liveness probe reads), else 0",
)

# Shadow scoring (analysis/shadow.py): a candidate version scored beside a sampled answer.
SHADOW_OUTCOMES = ("recorded", "failed", "busy", "no_candidate")
SHADOW_REQUESTS = Counter(
    "gateway_shadow_requests_total",
    "Sampled answers shadow-scored with a candidate version, by outcome: recorded, failed "
    "(logged; the answer was unaffected), busy (GATEWAY_SHADOW_CONCURRENCY reached: skipped), "
    "no_candidate (no member of the answer has a candidate loaded)",
    ["outcome"],
)
for _outcome in SHADOW_OUTCOMES:
    SHADOW_REQUESTS.labels(_outcome)
