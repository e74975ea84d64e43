"""Every setting of the gateway, from the environment (prefix GATEWAY_) or a .env file."""

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.server.targets import grpc_target
from preprocess.crop import CropConfig
from preprocess.egress import networks
from preprocess.faces import DetectorConfig
from preprocess.media import MediaLimits


# The saliency maps' cost bound (gateway/server/verdict/explain.py draws them).
@dataclass(frozen=True)
class ExplainConfig:
    """The cost bound: top_k faces x max_tracks tracks x (grid² + 1) crops per member."""

    top_k: int = 3
    # 3: 10 copies a face. With the four MesoNets voting in lite, grid 4 (17 copies) cost
    # 2.5-2.8 s a track and grid 3 1.5-1.6 s on the 2-core VM beside a CI run (load ~3).
    grid: int = 3
    max_tracks: int = 2
    overlay_px: int = 128


MB = 1 << 20
LIVE_MESSAGE_MARGIN = 64 * 1024  # over live_max_frame_kb: control messages, a JPEG a little over


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"

    # Triton: "host:port"; "dns:///name:port" to spread requests over every
    # address the name resolves to (a Kubernetes headless Service); or a
    # comma-separated list of "ip:port" replicas, balanced round robin.
    triton_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = Field(120.0, gt=0, description="deadline of one inference call")
    triton_retries: int = Field(3, ge=0, description="retries on UNAVAILABLE, with backoff")
    ensemble: str = "deepfake_ensemble"
    max_batch: int = Field(
        32,
        ge=1,
        description="faces per Triton request, at most (capped by the max_batch_size from Triton)",
    )
    infer_chunk: int = Field(
        4, ge=1, description="faces sent to Triton as soon as found, while a clip is still read"
    )

    # Uploads and admission.
    max_upload_mb: int = Field(100, ge=1)
    tmp_dir: Path | None = None
    upload_timeout_s: float = Field(120.0, gt=0, description="a slower upload gets 408")
    upload_min_bytes_per_s: float = Field(
        16384, ge=0, description="average rate an upload must keep after the grace; 408 below"
    )
    upload_grace_s: float = Field(10.0, ge=0, description="before the minimum rate applies")
    max_uploads: int = Field(
        16, ge=1, description="uploads received at once (no analysis slot held); 429 beyond"
    )
    max_in_flight: int = Field(4, ge=1, description="requests analysed at once")
    max_queue: int = Field(0, ge=0, description="requests waiting for a slot; 429 beyond")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a slot; 429 after")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="SIGTERM: in-flight requests' bound")
    workers: int = Field(2, ge=1, description="threads for decoding and face detection")

    # Client addresses (rate limits, logs) from X-Forwarded-For only when the peer is one of
    # these proxies (uvicorn's forwarded_allow_ips: IPs or CIDRs, * for any); empty: never.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Access: empty api_keys leaves the API open (on loopback only, unless allow_open); health,
    # metrics and the web page always are.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated; X-API-Key or Authorization: Bearer",
        repr=False,  # never in a printed or logged Settings
    )
    allow_open: bool = Field(
        False,
        description="serve the API without API keys on a non-loopback host (every caller is "
        "one tenant: sees, cancels and fills every job); off: such a start is refused",
    )
    rate_limit_per_minute: float = Field(0.0, ge=0, description="per key (or client); 0: off")
    rate_limit_burst: int = Field(10, ge=1, description="requests a key may send at once")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS; * for any"
    )

    # Tracing (gateway/server/tracing.py): off while the endpoint is empty.
    otlp_traces_endpoint: str = Field(
        "", description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces"
    )
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="of traces started here")
    trace_service_name: str = "deepfake-gateway"

    # Analysis.
    frames: int = Field(32, ge=1, le=300, description="frames sampled per video")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="P(fake) at or above: fake")
    detector: Literal["scrfd", "yunet"] = "scrfd"
    detector_score: float | None = Field(None, ge=0.0, le=1.0, description="None: detector's")
    detect_every: int = Field(
        1,
        ge=1,
        le=16,
        description="run the face detector on every n-th sampled frame and carry the boxes "
        "between (preprocess/sparse.py); 1: on every frame",
    )
    min_face_px: int = Field(32, ge=1)
    max_faces: int = Field(8, ge=1, description="faces per frame, largest first")
    max_width: int = Field(3840, ge=1, description="either orientation")
    max_height: int = Field(2160, ge=1)
    max_duration_s: float = Field(600.0, gt=0)
    max_frame_count: int = Field(36000, ge=1)
    max_decoded_megapixels: int = Field(
        20_000, ge=1, description="frames x width x height decoded per request; 422 beyond"
    )
    max_request_faces: int = Field(512, ge=1, description="faces per request; 422 beyond")
    analysis_timeout_s: float = Field(300.0, gt=0, description="one analysis's deadline; 504")

    # Live analysis (WebSocket /api/live, POST /api/live): frames judged while they play.
    live_max_sessions: int = Field(8, ge=1, description="live sessions at once, in all")
    live_max_sessions_per_client: int = Field(2, ge=1, description="per API key (or address)")
    live_idle_timeout_s: float = Field(30.0, gt=0, description="no message for this long: closed")
    live_max_session_s: float = Field(600.0, gt=0, description="longest live session")
    live_send_timeout_s: float = Field(
        10.0, gt=0, description="a client that reads no answer for this long is dropped"
    )
    live_max_frame_kb: int = Field(1024, ge=1, description="largest JPEG frame message")
    live_max_width: int = Field(1920, ge=1, description="largest live frame, either orientation")
    live_max_height: int = Field(1080, ge=1)
    live_window: int = Field(32, ge=1, le=300, description="frames per track in the verdict")
    live_fps: float = Field(2.0, gt=0, le=30, description="stream URLs: frames judged per second")
    live_stream_max_s: float = Field(60.0, gt=0, description="longest read of a stream URL")
    live_stream_timeout_s: float = Field(10.0, gt=0, description="opening or reading a stream")
    live_url_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["rtsp", "rtsps", "rtmp", "rtmps", "http", "https"],
        description="stream URL schemes allowed",
    )
    live_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="stream hosts allowed; empty: any public host"
    )
    live_allow_private: bool = Field(
        False, description="allow loopback, private and link-local stream addresses"
    )
    live_max_stream_readers: int | None = Field(
        None,
        ge=1,
        description="threads reading stream URLs at once (one per session at most); a start "
        "beyond is refused (stream_busy); default live_max_sessions",
    )
    live_control_per_minute: float = Field(
        60.0, gt=0, description="control (JSON) messages per live session, refilled per minute"
    )
    live_control_burst: int = Field(
        10, ge=1, description="control messages a session may send at once"
    )

    # Egress (preprocess/egress.py): every URL the gateway fetches (stream URLs, webhooks)
    # resolved once, each address checked, the connection made to the checked address.
    egress_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated CIDRs reachable even if not public (stream URLs and "
        "webhooks); empty: public addresses only (or the live/jobs allow_private switches)",
    )
    egress_proxy: str = Field(
        "",
        description="http(s) proxy for HTTP(S) fetches; it resolves the names, so its own "
        "allow-list is the guard (RTSP and RTMP still connect directly, checked here)",
    )
    egress_dns_server: str = Field(
        "", description="ip:port of the DNS server names are resolved with; empty: the system's"
    )

    # Jobs (/api/jobs): a huey queue and the job records, in SQLite files under
    # jobs_dir (the default: `make run` needs no other server), or in Redis when
    # jobs_redis_url is set (a cluster). Uploads wait in jobs_dir/uploads/ either way.
    jobs_dir: Path = Path(".build/jobs")
    jobs_redis_url: str = Field(
        "",
        description="redis://host:6379/0; empty: SQLite in jobs_dir",
        repr=False,  # it may hold the password (redis://:PASSWORD@host…)
    )
    jobs_redis_password: SecretStr | None = Field(
        None, description="Redis' requirepass, if not in jobs_redis_url (a Kubernetes Secret)"
    )
    jobs_workers: int = Field(
        1,
        ge=0,
        description="items analysed at once inside the gateway; 0: by gateway.programs.worker",
    )
    jobs_max_files: int = Field(50, ge=1, description="files per job")
    jobs_max_mb: int = Field(2048, ge=1, description="a job's files together")
    jobs_max_active_per_key: int = Field(10, ge=1, description="unfinished jobs; 429 beyond")
    jobs_max_active: int = Field(
        100, ge=1, description="unfinished jobs of all keys together (uploads wait on disk)"
    )
    # A job carries up to jobs_max_mb, not max_upload_mb: its own deadline. The minimum rate
    # (upload_min_bytes_per_s after upload_grace_s) and the upload slots are /api/detect's.
    jobs_upload_timeout_s: float = Field(
        1800.0, gt=0, description="a job's whole upload; 408 beyond"
    )
    jobs_retention_s: float = Field(86400.0, gt=0, description="a finished job is kept this long")
    jobs_heartbeat_s: float = Field(2.0, gt=0, description="a running item's sign of life")
    jobs_stale_s: float = Field(30.0, gt=0, description="no heartbeat this long: worker gone")
    jobs_max_attempts: int = Field(2, ge=1, description="analyses of an item a dead worker left")
    jobs_webhook_secret: SecretStr | None = Field(
        None, description="master secret: each API key's webhook secret is derived from it"
    )
    jobs_webhook_previous_secret: SecretStr | None = Field(
        None, description="rotation: the master being retired; webhooks are signed with both"
    )
    jobs_webhook_retries: int = Field(5, ge=0, description="after the first try, with backoff")
    jobs_webhook_timeout_s: float = Field(10.0, gt=0)
    jobs_allow_private_callbacks: bool = Field(
        False, description="let callback_url reach loopback and private addresses (SSRF guard off)"
    )

    # Explanations (explain=true): their cost is bounded by these, per request.
    explain_top_k: int = Field(
        ExplainConfig.top_k, ge=1, le=16, description="faces explained per track"
    )
    explain_grid: int = Field(
        ExplainConfig.grid, ge=2, le=16, description="occlusion grid: cells per side"
    )
    explain_max_tracks: int = Field(
        ExplainConfig.max_tracks, ge=1, le=8, description="tracks explained, most fake first"
    )
    explain_overlay_px: int = Field(
        ExplainConfig.overlay_px, ge=32, le=512, description="heatmap PNG side"
    )

    # Reports: PDFs are printed by headless Chromium, where there is one.
    chromium: str | None = Field(None, description="Chromium for PDF reports; None: on PATH")
    report_max_mb: int = Field(20, ge=1, description="largest answer POST /api/report takes")
    # A small answer must not make a huge parse or render: what one report takes is bounded
    # too (422 report_over_limits). An answer the gateway wrote with default settings is far
    # under both; raise them with max_request_faces, explain_top_k or explain_overlay_px.
    report_max_values: int = Field(
        250_000,
        ge=1,
        description="JSON values in one answer POST /api/report takes (frames, faces, "
        "tracks, scores, explanations' grids), counted before it is parsed",
    )
    report_max_image_mpx: float = Field(
        64.0, gt=0, description="decoded megapixels of one report's images (heatmaps, thumbnails)"
    )

    @field_validator(
        "api_keys",
        "cors_origins",
        "forwarded_allow_ips",
        "live_url_schemes",
        "live_url_hosts",
        "egress_allow_networks",
        mode="before",
    )
    @classmethod
    def comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("triton_url")
    @classmethod
    def triton_target(cls, value: str) -> str:
        # Validated here so a typo stops the gateway at start, not at the first request.
        grpc_target(value)
        return value

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
        }

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

    @property
    def live_max_message_bytes(self) -> int:
        """The largest WebSocket message: a frame a little over the cap still gets its
        clear frame_too_large answer; anything larger is refused by the server."""
        return self.live_max_frame_kb * 1024 + LIVE_MESSAGE_MARGIN

    @property
    def live_stream_readers(self) -> int:
        return self.live_max_stream_readers or self.live_max_sessions

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_width=self.max_width,
            max_height=self.max_height,
            max_duration_s=self.max_duration_s,
            max_frame_count=self.max_frame_count,
            max_decoded_pixels=self.max_decoded_megapixels * 1_000_000,
        )

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            name=self.detector,
            score_threshold=self.detector_score,
            min_face_px=self.min_face_px,
            max_faces=self.max_faces,
        )

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
            "proxy_headers": bool(self.forwarded_allow_ips),
            "forwarded_allow_ips": self.forwarded_allow_ips or None,
        }

    def crop_config(self) -> CropConfig:
        return CropConfig()

    def explain_config(self) -> ExplainConfig:
        return ExplainConfig(
            top_k=self.explain_top_k,
            grid=self.explain_grid,
            max_tracks=self.explain_max_tracks,
            overlay_px=self.explain_overlay_px,
        )
