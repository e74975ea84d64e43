"""Every setting of the gateway, from the environment (prefix GATEWAY_) or a .env file."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.model_server import grpc_target
from preprocess.crop import CropConfig
from preprocess.faces import DetectorConfig
from preprocess.media import MediaLimits

MB = 1 << 20


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
    max_batch: int = Field(32, ge=1, description="faces per Triton request, at most")
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

    # Access: empty api_keys leaves the API open; health, metrics and the web page always are.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated; X-API-Key or Authorization: Bearer",
        repr=False,  # never in a printed or logged Settings
    )
    rate_limit_per_minute: float = Field(0.0, ge=0, description="per key (or client); 0: off")
    rate_limit_burst: int = Field(10, ge=1, description="requests a key may send at once")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS; * for any"
    )

    # Analysis.
    frames: int = Field(32, ge=1, le=300, description="frames sampled per video")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="P(fake) at or above: fake")
    detector: Literal["scrfd", "yunet"] = "scrfd"
    detector_score: float | None = Field(None, ge=0.0, le=1.0, description="None: detector's")
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

    @field_validator("api_keys", "cors_origins", "forwarded_allow_ips", mode="before")
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

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

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
            "proxy_headers": bool(self.forwarded_allow_ips),
            "forwarded_allow_ips": self.forwarded_allow_ips or None,
        }

    def crop_config(self) -> CropConfig:
        return CropConfig()
