"""Every setting of the gateway, from the environment (prefix GATEWAY_) or a .env file.

`Settings` is one flat model (`settings.frames`, `GATEWAY_FRAMES`) made of groups, one class per
area, each saying what it is for. A default that a domain object has (MediaLimits, DetectorConfig,
StreamRead, ExplainConfig) is read from it: written once, there. gateway/README.md's settings
table is generated from these fields, a section per group in GROUPS: `make settings-doc`
(gateway/programs/settings_doc.py) writes it; tests/test_gateway_settings.py checks it.
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.server.targets import grpc_target
from preprocess.credentials import CredentialPolicy
from preprocess.crop import CropConfig
from preprocess.egress import networks
from preprocess.faces import DetectorConfig
from preprocess.media import MediaLimits
from preprocess.stream import StreamRead
from preprocess.tensors import FAKE_AT


# The saliency maps' cost bound (gateway/server/verdict/explain.py draws them).
@dataclass(frozen=True)
class ExplainConfig:
    """The cost bound: top_k faces x max_tracks tracks x (grid² + 1) crops per member."""

    top_k: int = 3
    # 3: 10 copies a face; grid 4 (17) costs nearly twice as much a track (measured in
    # gateway/README.md, Explanations and reports).
    grid: int = 3
    max_tracks: int = 2
    overlay_px: int = 128


MB = 1 << 20
MEGAPIXEL = 1_000_000
LIVE_MESSAGE_MARGIN = 64 * 1024  # over live_max_frame_kb: control messages, a JPEG a little over


class ServerSettings(BaseModel):
    """The process: where it listens, its logs and traces, how it stops."""

    host: str = Field("127.0.0.1", description="address the gateway listens on")
    port: int = Field(8080, description="port the gateway listens on")
    log_level: str = Field("info", description="logs are JSON lines on stderr, with the request id")
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    # Tracing (gateway/server/tracing.py): off while the endpoint is empty.
    otlp_traces_endpoint: str = Field(
        "",
        description="OTLP/HTTP URL (`http://collector:4318/v1/traces`): one OpenTelemetry "
        "trace per request, the request id on its span, W3C context sent on to Triton; "
        "empty: no tracing",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="share of the traces started here that are kept"
    )
    trace_service_name: str = Field(
        "deepfake-gateway", description="the service name on the traces"
    )


class AccessSettings(BaseModel):
    """Who may call the API and how often: API keys, rate limits, CORS, trusted proxies.
    Health, metrics and the web page are always open."""

    # Empty api_keys leaves the API open, on loopback only unless allow_open.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated keys; the API (`/api/*`) then needs `X-API-Key: <key>` or "
        "`Authorization: Bearer <key>` (401 otherwise). Empty: open, on loopback only; without "
        "keys every caller is one tenant (sees and cancels every job), so on any other "
        "`GATEWAY_HOST` (`0.0.0.0`: the image, Kubernetes) the gateway refuses to start "
        "(exit 2, the reason logged)",
        repr=False,  # never in a printed or logged Settings
    )
    allow_open: bool = Field(
        False,
        description="serve without keys on a non-loopback address anyway (something in front "
        "decides who calls; every caller is one tenant: sees, cancels and fills every job); "
        "logged as a warning at start",
    )
    rate_limit_per_minute: float = Field(
        0.0,
        ge=0,
        description="requests per minute per key (per client address without keys); 429 with "
        "`Retry-After` beyond; 0: off",
    )
    rate_limit_burst: int = Field(
        10, ge=1, description="requests a key may send at once before the rate applies"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins a browser may call the API from (`*` for any); "
        "empty: no CORS",
    )
    # uvicorn's forwarded_allow_ips: the client address (rate limits, logs) is read from
    # X-Forwarded-For only when the peer is one of these proxies.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="proxies (IPs, CIDRs, `*`) whose `X-Forwarded-For` gives the client's "
        "address for rate limits and logs; empty: none",
    )


class TritonSettings(BaseModel):
    """The model server: where Triton is, how long a call may take, how faces are batched."""

    # "host:port"; "dns:///name:port" to spread requests over every address the name resolves
    # to (a Kubernetes headless Service); or a comma-separated list of "ip:port" replicas.
    triton_url: str = Field(
        "127.0.0.1:8001",
        description="Triton gRPC; `dns:///name:port` spreads requests over every address, a "
        "list `10.0.0.1:8001,10.0.0.2:8001` (IP literals) over those replicas (round robin; "
        "a dead one is skipped)",
    )
    triton_timeout_s: float = Field(
        120.0, gt=0, description="deadline of one inference call (504 beyond)"
    )
    triton_retries: int = Field(
        3,
        ge=0,
        description="retries on UNAVAILABLE, with backoff, on another replica where there is "
        "one (503 after)",
    )
    ensemble: str = Field("deepfake_ensemble", description="the ensemble to call")
    max_batch: int = Field(
        32,
        ge=1,
        description="faces per Triton request, at most; capped by the model's `max_batch_size` "
        "in Triton",
    )
    infer_chunk: int = Field(
        4,
        ge=1,
        description="faces sent to Triton as soon as they are found, while the clip is still "
        "decoding (inference overlaps decoding and detection)",
    )

    @field_validator("triton_url")
    @classmethod
    def triton_target(cls, value: str) -> str:
        # Validated here so a typo stops the gateway at start, not at the first request.
        grpc_target(value)
        return value


class UploadSettings(BaseModel):
    """An upload to /api/detect: its size, its pace, how many are received and analysed at
    once, and what media it may hold (MediaLimits: checked from the header, 422 beyond)."""

    max_upload_mb: int = Field(100, ge=1, description="upload cap (413)")
    tmp_dir: Path | None = Field(
        None, description="where uploads are spooled; unset: the system's temp folder"
    )
    upload_timeout_s: float = Field(
        120.0,
        gt=0,
        description="an upload slower than this gets 408 (a job's: "
        "`GATEWAY_JOBS_UPLOAD_TIMEOUT_S`)",
    )
    upload_min_bytes_per_s: float = Field(
        16384,
        ge=0,
        description="average rate an upload must keep once the grace is over (408 below)",
    )
    upload_grace_s: float = Field(10.0, ge=0, description="seconds before the minimum rate applies")
    max_uploads: int = Field(
        16,
        ge=1,
        description="uploads received at once, `/api/detect`'s and `/api/jobs`' together, "
        "holding no analysis slot (429 beyond)",
    )
    max_in_flight: int = Field(
        4,
        ge=1,
        description="uploads analysed at once (a slot is taken once the upload is complete)",
    )
    max_queue: int = Field(
        0,
        ge=0,
        description="requests waiting for a slot beyond those (429 with `Retry-After` beyond)",
    )
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait in that queue (429 after)")
    max_width: int = Field(
        MediaLimits.max_width, ge=1, description="widest frame, either orientation (422 beyond)"
    )
    max_height: int = Field(
        MediaLimits.max_height,
        ge=1,
        description="tallest frame, either orientation (422 beyond)",
    )
    max_duration_s: float = Field(
        MediaLimits.max_duration_s, gt=0, description="longest video (422 beyond)"
    )
    max_frame_count: int = Field(
        MediaLimits.max_frame_count, ge=1, description="most frames in a video (422 beyond)"
    )
    max_decoded_megapixels: int = Field(
        MediaLimits.max_decoded_pixels // MEGAPIXEL,
        ge=1,
        description="frames x width x height decoded per request, counted as decoded (422 beyond)",
    )
    # Media by URL (gateway/server/media_urls.py): fetched through preprocess/egress.py under
    # the upload's caps, pace and slots; the egress_* settings say where it may connect.
    media_url_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https"],
        description="schemes of the media URLs `/api/detect` and `/api/jobs` fetch (a JSON body "
        '`{"url"}` or `{"urls"}`); `https,http` lets plain HTTP in too (an object store on '
        "the cluster's own network, say)",
    )
    media_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts media URLs may name (e.g. the bucket's `my-bucket.s3.amazonaws.com`); "
        "empty: any public host",
    )

    @field_validator("media_url_schemes")
    @classmethod
    def web_schemes(cls, value: list[str]) -> list[str]:
        if not value or not set(value) <= {"http", "https"}:
            raise ValueError("media_url_schemes are https and/or http")
        return value

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_width=self.max_width,
            max_height=self.max_height,
            max_duration_s=self.max_duration_s,
            max_frame_count=self.max_frame_count,
            max_decoded_pixels=self.max_decoded_megapixels * MEGAPIXEL,
        )


class AnalysisSettings(BaseModel):
    """One analysis: frames sampled, faces found (DetectorConfig), the verdict's threshold,
    and what one request may cost."""

    workers: int = Field(2, ge=1, description="threads for decoding and face detection")
    video_hwaccel: Literal["", "cuda"] = Field(
        "",
        description="`cuda`: uploaded videos decoded by NVDEC on an NVIDIA GPU, where PyAV's "
        "FFmpeg offers it (the CPU where the device cannot be opened, with a warning); "
        "empty: the CPU",
    )
    frames: int = Field(32, ge=1, le=300, description="frames sampled per video")
    threshold: float = Field(
        FAKE_AT, ge=0.0, le=1.0, description="P(fake) at or above which the verdict is `fake`"
    )
    uncertain_band: float | None = Field(
        None,
        ge=0.0,
        le=0.5,
        description="half-width of the band around the threshold inside which the verdict is "
        "`uncertain` (`near_threshold`); unset: the band `make calibrate` measured where the "
        "score is calibrated, else 0.05",
    )
    uncertain_group_margin: float = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="`uncertain` (`groups_disagree`) when the vote's groups (rule "
        "max_of_groups) score the deciding person further apart than this",
    )
    uncertain_min_face_frames: int = Field(
        4,
        ge=1,
        description="`uncertain` (`few_face_frames`) when faces are in fewer sampled frames "
        "than this (or than the file has: an image needs one)",
    )
    uncertain_min_face_scale: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="`uncertain` (`small_faces`) when the deciding person's median face crop "
        "(box and margin) is under this share of the smallest voting member's input side",
    )
    detector: Literal["scrfd", "yunet"] = Field(
        DetectorConfig.name, description="`scrfd` (insightface) or `yunet` (OpenCV)"
    )
    detector_score: float | None = Field(
        DetectorConfig.score_threshold,
        ge=0.0,
        le=1.0,
        description="minimum detector confidence; unset: the detector's own",
    )
    detect_every: int = Field(
        1,
        ge=1,
        le=16,
        description="run the face detector on every n-th sampled frame and carry each face's "
        "box to the frames between (see [Spending compute where it can move the verdict]"
        "(../tests/bench/README.md#spending-compute-where-it-can-move-the-verdict)); 1: every "
        "frame",
    )
    min_face_px: int = Field(
        DetectorConfig.min_face_px, ge=1, description="smaller faces are ignored"
    )
    max_faces: int = Field(
        DetectorConfig.max_faces, ge=1, description="faces per frame, largest first"
    )
    max_request_faces: int = Field(512, ge=1, description="faces per request (422 beyond)")
    analysis_timeout_s: float = Field(
        300.0,
        gt=0,
        description="one analysis's deadline, checked per frame (504 `analysis_timeout` beyond)",
    )
    credentials_trust_anchors: Path | None = Field(
        None,
        description="PEM bundle of the root certificates whose signers' content credentials "
        "(C2PA) read `trusted`; unset: none, so credentials read `valid` at most (checked at "
        "startup)",
    )

    @field_validator("credentials_trust_anchors")
    @classmethod
    def readable_anchors(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                pem = value.read_text()
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(f"cannot read {value}: {error}") from None
            CredentialPolicy(pem).check()  # ValueError for a bundle the library refuses
        return value

    def credential_policy(self) -> CredentialPolicy:
        anchors = self.credentials_trust_anchors
        return CredentialPolicy(anchors.read_text() if anchors else None)

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            name=self.detector,
            score_threshold=self.detector_score,
            min_face_px=self.min_face_px,
            max_faces=self.max_faces,
        )

    def crop_config(self) -> CropConfig:
        return CropConfig()


class LiveSettings(BaseModel):
    """Live analysis (WebSocket /api/live, POST /api/live): frames judged while they play,
    the sessions' bounds, and the stream URLs the gateway reads itself (StreamRead)."""

    live_max_sessions: int = Field(8, ge=1, description="live sessions at once, in all")
    live_max_sessions_per_client: int = Field(
        2, ge=1, description="live sessions at once per API key (or address)"
    )
    live_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a live session without a message (and no stream being read) is closed",
    )
    live_max_session_s: float = Field(600.0, gt=0, description="the longest live session")
    live_send_timeout_s: float = Field(
        10.0, gt=0, description="a live client that reads no answer for this long is let go"
    )
    live_ping_interval_s: float = Field(
        20.0, gt=0, description="WebSocket keepalive: the server pings each socket this often"
    )
    live_ping_timeout_s: float = Field(
        20.0,
        gt=0,
        description="WebSocket keepalive: a socket whose client does not answer a ping within "
        "this is closed (`1011`) and its session ends",
    )
    live_max_frame_kb: int = Field(
        1024,
        ge=1,
        description="largest JPEG frame message (`frame_too_large`); a WebSocket message over "
        "it plus 64 KiB is refused by the server as its header arrives (close `1009`), never "
        "buffered",
    )
    live_max_width: int = Field(1920, ge=1, description="widest live frame, either orientation")
    live_max_height: int = Field(1080, ge=1, description="tallest live frame, either orientation")
    live_window: int = Field(32, ge=1, le=300, description="frames per person in the live verdict")
    live_fps: float = Field(
        StreamRead.fps, gt=0, le=30, description="stream URLs: frames judged per second of stream"
    )
    live_stream_max_s: float = Field(
        StreamRead.max_s, gt=0, description="stream URLs: the longest read"
    )
    live_stream_timeout_s: float = Field(
        StreamRead.timeout_s, gt=0, description="stream URLs: the open and read timeout"
    )
    live_url_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["rtsp", "rtsps", "rtmp", "rtmps", "http", "https"],
        description="stream URL schemes allowed",
    )
    live_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="stream hosts allowed; empty: any public host"
    )
    live_allow_private: bool = Field(
        False,
        description="allow loopback, private and link-local stream addresses (every address)",
    )
    live_max_stream_readers: int | None = Field(
        None,
        ge=1,
        description="threads reading stream URLs at once, a pool of their own (one reader per "
        "session); a start beyond is refused with `stream_busy`; unset: "
        "`GATEWAY_LIVE_MAX_SESSIONS`",
    )
    live_control_per_minute: float = Field(
        60.0,
        gt=0,
        description="JSON control messages per live session, refilled per minute (a start "
        "resolves a host, may open a stream); beyond, `rate_limited` (a stop is never refused)",
    )
    live_control_burst: int = Field(
        10, ge=1, description="control messages a live session may send at once"
    )

    @property
    def live_max_message_bytes(self) -> int:
        """The largest WebSocket message: a frame a little over the cap still gets its
        clear frame_too_large answer; anything larger is refused by the server."""
        return self.live_max_frame_kb * 1024 + LIVE_MESSAGE_MARGIN

    @property
    def live_stream_readers(self) -> int:
        return self.live_max_stream_readers or self.live_max_sessions


class EgressSettings(BaseModel):
    """Every URL the gateway fetches (media and stream URLs, webhooks; preprocess/egress.py):
    resolved once, each address checked, the connection made to the checked address."""

    egress_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated CIDRs that stream URLs and webhooks may reach even if not "
        "public (e.g. a camera network `10.20.0.0/16`); empty: public addresses only (or the "
        "live and jobs allow-private switches)",
    )
    egress_proxy: str = Field(
        "",
        description="an `http(s)://` proxy for HTTP(S) fetches (streams, webhooks): the proxy "
        "resolves the names, so the allow-list that counts is the proxy's (literal addresses "
        "are still checked here); RTSP and RTMP still connect directly, checked here; empty: "
        "none",
    )
    egress_dns_server: str = Field(
        "",
        description="`ip:port` of the DNS server egress names are resolved with (the tests' "
        "stub resolver); empty: the system's resolver",
    )
    egress_ca_bundle: Path | None = Field(
        None,
        description="a PEM file of CAs that HTTPS egress (media URLs, streams, webhooks) trusts "
        "besides the default ones (a private object store's CA); unset: the default ones only",
    )

    @field_validator("egress_allow_networks")
    @classmethod
    def cidrs(cls, value: list[str]) -> list[str]:
        networks(value)  # a typo stops the gateway at start (ValueError)
        return value

    @field_validator("egress_dns_server")
    @classmethod
    def dns_server(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            ipaddress.ip_address(host.strip("[]"))  # an address: no name to resolve first
            if not port.isdigit():
                raise ValueError("egress_dns_server is ip:port")
        return value

    def egress_options(self, allow_private: bool) -> dict[str, Any]:
        """An area's EgressPolicy fields from the egress_* settings; its allow_private
        switch (live_allow_private, jobs_allow_private_callbacks) allows every address."""
        return {
            "allowed_networks": networks(self.egress_allow_networks, everything=allow_private),
            "dns_server": self.egress_dns_server,
            "proxy": self.egress_proxy,
            "ca_bundle": str(self.egress_ca_bundle or ""),
        }


class JobsSettings(BaseModel):
    """Jobs (/api/jobs): a huey queue and the job records, in SQLite files under jobs_dir (the
    default: `make run` needs no other server) or in Redis (a cluster); uploads wait in
    jobs_dir/uploads/ either way. Workers, caps, retention, webhooks."""

    jobs_enabled: bool = Field(
        True,
        description="`false`: `/api/jobs` answers 404 `jobs_disabled` and nothing is written "
        "under `GATEWAY_JOBS_DIR` (a cluster without `deploy/k8s/components/jobs`: a queue "
        "in one pod's SQLite would be invisible to the other pods)",
    )
    jobs_dir: Path = Field(
        Path(".build/jobs"),
        description="uploads waiting for a worker; the SQLite queue and job records when there "
        "is no Redis",
    )
    jobs_redis_url: str = Field(
        "",
        description="`redis://host:6379/0`: the queue and job records in Redis (a cluster). Its "
        "messages are JSON (`jobs/codec.py`), never pickle: a message the gateway did not "
        "write is refused, not run; empty: SQLite in `GATEWAY_JOBS_DIR`",
        repr=False,  # it may hold the password (redis://:PASSWORD@host…)
    )
    jobs_redis_password: SecretStr | None = Field(
        None,
        description="Redis' password (`requirepass`), unless in the URL "
        "(`redis://:PASSWORD@host:6379/0`; a Kubernetes Secret); a worker that Redis refuses "
        "exits 2",
    )
    jobs_workers: int = Field(
        1,
        ge=0,
        description="items analysed at once by this process (the gateway; `python -m "
        "gateway.programs.worker`); `0`: the gateway only queues",
    )
    jobs_metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="port `python -m gateway.programs.worker` serves Prometheus `/metrics` on "
        "(at `GATEWAY_HOST`; items by outcome, their time, the queue, whether it is up); `0`: "
        "none. The gateway's own are at its `/metrics`",
    )
    jobs_max_files: int = Field(50, ge=1, description="files per job (413 beyond)")
    jobs_max_mb: int = Field(2048, ge=1, description="a job's files together (413 beyond)")
    jobs_max_active_per_key: int = Field(
        10,
        ge=1,
        description="unfinished jobs per API key (429 beyond), each place taken before the "
        "upload is read",
    )
    jobs_max_active: int = Field(
        100,
        ge=1,
        description="unfinished jobs of all keys together (429 beyond): their uploads wait on disk",
    )
    # A job carries up to jobs_max_mb, not max_upload_mb: its own deadline. The minimum rate
    # (upload_min_bytes_per_s after upload_grace_s) and the upload slots are /api/detect's.
    jobs_upload_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="a job's whole upload (up to `GATEWAY_JOBS_MAX_MB`), 408 beyond; the "
        "minimum rate and the upload slots are `/api/detect`'s",
    )
    jobs_retention_s: float = Field(
        86400.0, gt=0, description="how long a finished job and its results are kept"
    )
    jobs_heartbeat_s: float = Field(
        2.0, gt=0, description="a running item's heartbeat (its sign of life)"
    )
    jobs_stale_s: float = Field(
        30.0,
        gt=0,
        description="a running item silent this long: its worker is taken for dead and the "
        "item requeued",
    )
    jobs_max_attempts: int = Field(
        2, ge=1, description="analyses of an item before it fails as `interrupted`"
    )
    jobs_webhook_secret: SecretStr | None = Field(
        None,
        description="the master: each API key's webhooks are signed (HMAC-SHA256) with a secret "
        "derived from it and the key's id (Jobs, above); unset: no webhooks",
    )
    jobs_webhook_previous_secret: SecretStr | None = Field(
        None,
        description="during a rotation, the master being retired: webhooks carry a signature "
        "for both",
    )
    jobs_webhook_retries: int = Field(
        5, ge=0, description="delivery retries after the first try (backoff 1, 2, 4 … s)"
    )
    jobs_webhook_timeout_s: float = Field(
        10.0, gt=0, description="each webhook delivery attempt's timeout"
    )
    jobs_allow_private_callbacks: bool = Field(
        False,
        description="let `callback_url` reach loopback and private addresses (the SSRF guard off)",
    )


class ReviewsSettings(BaseModel):
    """Reviews (/api/reviews): a person's `fake` or `real` on an answer, kept for training and
    calibration. With reviews on, each answer gets an `answer_id` and the gateway keeps its
    reviewable record (the decisive faces' crops and every member's scores, never the media)
    for `reviews_answer_retention_s`; a review turns it into a review kept for
    `reviews_retention_s`. SQLite under `reviews_dir` by default, PostgreSQL in a cluster."""

    reviews_enabled: bool = Field(
        False,
        description="`true`: answers get an `answer_id` and their reviewable record is kept; "
        "`false`: `/api/reviews` answers 404 `reviews_disabled` and nothing is recorded",
    )
    reviews_dir: Path = Field(
        Path(".build/reviews"),
        description="the SQLite file (`reviews.db`) when `GATEWAY_REVIEWS_DATABASE_URL` is empty",
    )
    reviews_database_url: str = Field(
        "",
        description="SQLAlchemy URL of the review store, e.g. "
        "`postgresql+psycopg://reviews@host:5432/reviews` (a cluster); empty: SQLite in "
        "`GATEWAY_REVIEWS_DIR`. Migrated to the latest schema (Alembic) at start-up",
        repr=False,  # it may hold the password
    )
    reviews_database_password: SecretStr | None = Field(
        None,
        description="the database's password, unless in the URL (a Kubernetes Secret)",
    )
    reviews_answer_retention_s: float = Field(
        86400.0,
        gt=0,
        description="how long an answer stays reviewable: its record (crops and scores) is "
        "purged after unless reviewed",
    )
    reviews_retention_s: float = Field(
        365 * 86400.0, gt=0, description="how long a review (and its crops) is kept"
    )
    reviews_max_faces: int = Field(
        8,
        ge=1,
        le=256,
        description="crops kept per answer (each a lossless PNG of the pipeline's crop, about "
        "200 kB): the decisive person's faces, spread over the clip",
    )
    reviews_purge_interval_s: float = Field(
        600.0, gt=0, description="how often expired records and reviews are purged"
    )
    reviews_queue_sample_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of confident (`fake`/`real`) answers drawn at random into the "
        "review queue, beside every `uncertain` and disputed one: reviews then measure the "
        "answers nobody doubts too (`0`: none, `1`: all)",
    )
    reviews_queue_seed: int | None = Field(
        None,
        description="seed of that draw, for a reproducible queue (tests, audits); unset: random",
    )

    shadow_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of kept answers (files, job items) whose faces are also scored by "
        "each member's candidate version (`python -m export.versions candidate`), after the "
        "answer and never in it; the scores go to the review store's `shadow_scores` beside "
        "the answer (needs `GATEWAY_REVIEWS_ENABLED`). `0`: off",
    )
    shadow_concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="shadow scorings running at once per process; a sampled answer beyond is "
        "not shadowed (counted `busy`), so the shadow never queues work behind answers",
    )

    @model_validator(mode="after")
    def shadow_needs_the_store(self) -> "ReviewsSettings":
        # Shadow scores are kept beside the answers' records: without the store, nothing to
        # key them by. Said at start, not silently ignored.
        if self.shadow_share > 0 and not self.reviews_enabled:
            raise ValueError("shadow_share > 0 needs reviews_enabled (the review store)")
        return self

    def reviews_url(self) -> str:
        """The store's URL: the setting's, or the SQLite file in reviews_dir."""
        return self.reviews_database_url or f"sqlite:///{self.reviews_dir / 'reviews.db'}"


class ExplainSettings(BaseModel):
    """Explanations (explain=true): occlusion maps, whose cost per request these bound
    (ExplainConfig: top_k x max_tracks x (grid² + 1) crops per voting member)."""

    explain_top_k: int = Field(
        ExplainConfig.top_k,
        ge=1,
        le=16,
        description="`explain=true`: faces explained per track (most fake first)",
    )
    explain_grid: int = Field(
        ExplainConfig.grid,
        ge=2,
        le=16,
        description="occlusion grid, cells per side: grid² + 1 crops per face and voting model",
    )
    explain_max_tracks: int = Field(
        ExplainConfig.max_tracks, ge=1, le=8, description="tracks explained, most fake first"
    )
    explain_overlay_px: int = Field(
        ExplainConfig.overlay_px, ge=32, le=512, description="side of each heatmap PNG"
    )

    def explain_config(self) -> ExplainConfig:
        return ExplainConfig(
            top_k=self.explain_top_k,
            grid=self.explain_grid,
            max_tracks=self.explain_max_tracks,
            overlay_px=self.explain_overlay_px,
        )


class ReportSettings(BaseModel):
    """Reports (POST /api/report, `cli --report`): what one answer to render may hold, and the
    headless Chromium that prints PDFs where there is one."""

    chromium: str | None = Field(
        None, description="the Chromium that prints PDF reports; unset: the one on `PATH`"
    )
    report_max_mb: int = Field(
        20, ge=1, description="largest answer `POST /api/report` reads (413 beyond)"
    )
    # A small answer must not make a huge parse or render: what one report takes is bounded
    # too (422 report_over_limits).
    report_max_values: int = Field(
        250_000,
        ge=1,
        description="JSON values (objects, keys, strings, numbers) in one report's answer, "
        "counted on its bytes before it is parsed (422 `report_over_limits` beyond): parsing "
        "holds the interpreter, so a small JSON of tiny values cannot stall the gateway. The "
        "gateway's own answers at default settings are a few thousand; raise it with "
        "`GATEWAY_MAX_REQUEST_FACES` or `GATEWAY_EXPLAIN_*`",
    )
    report_max_image_mpx: float = Field(
        64.0,
        gt=0,
        description="decoded megapixels of one report's images together (heatmaps, thumbnails; "
        "each at most 2048 px a side), read from their headers (422 `report_over_limits` "
        "beyond)",
    )


# The groups in the README's order: each is one section of its settings table.
GROUPS: dict[str, type[BaseModel]] = {
    "Server": ServerSettings,
    "Access": AccessSettings,
    "Triton": TritonSettings,
    "Uploads": UploadSettings,
    "Analysis": AnalysisSettings,
    "Live": LiveSettings,
    "Egress": EgressSettings,
    "Jobs": JobsSettings,
    "Reviews": ReviewsSettings,
    "Explanations": ExplainSettings,
    "Reports": ReportSettings,
}


class Settings(
    ServerSettings,
    AccessSettings,
    TritonSettings,
    UploadSettings,
    AnalysisSettings,
    LiveSettings,
    EgressSettings,
    JobsSettings,
    ReviewsSettings,
    ExplainSettings,
    ReportSettings,
    BaseSettings,
):
    """Every group at once, flat: `settings.frames` is read from GATEWAY_FRAMES."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    @field_validator(
        "api_keys",
        "cors_origins",
        "forwarded_allow_ips",
        "live_url_schemes",
        "live_url_hosts",
        "egress_allow_networks",
        "media_url_schemes",
        "media_url_hosts",
        mode="before",
    )
    @classmethod
    def comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def uvicorn_options(self) -> dict[str, object]:
        """How uvicorn serves the gateway, under `python -m gateway` and `make run` alike."""
        return {
            "host": self.host,
            "port": self.port,
            "log_level": self.log_level,
            "log_config": None,  # uvicorn's loggers go through the gateway's JSON handler
            "access_log": False,  # the gateway logs each request itself, with its request id
            # SIGTERM: stop accepting at once, let in-flight requests finish up to this bound.
            "timeout_graceful_shutdown": self.shutdown_timeout_s,
            # WebSocket sends wait while the client's buffer is full (flow control): a live
            # client that stops reading holds no growing queue (gateway/server/live/session.py).
            "ws": "websockets-sansio",
            # A live message is refused (closed with 1009) as its header arrives when it is over
            # the frame cap plus a margin: never buffered whole (uvicorn's default is 16 MiB).
            "ws_max_size": self.live_max_message_bytes,
            "ws_ping_interval": self.live_ping_interval_s,
            "ws_ping_timeout": self.live_ping_timeout_s,
            "proxy_headers": bool(self.forwarded_allow_ips),
            "forwarded_allow_ips": self.forwarded_allow_ips or None,
        }
