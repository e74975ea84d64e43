"""One request's options: what it asked for (models, frames, threshold, thumbnails,
explanations), the settings' defaults for the rest."""

import uuid
from dataclasses import dataclass

from gateway.server.settings import ExplainConfig, Settings


@dataclass(frozen=True)
class Options:
    frames: int
    threshold: float
    models: tuple[str, ...] | None = None  # None: the voting members; ("all",): every one
    thumbnails: bool = False
    explain: ExplainConfig | None = None  # None: no saliency maps
    filename: str = ""
    size: int | None = None  # the uploaded file's bytes and SHA-256, for reports
    sha256: str | None = None
    request_id: str = ""
    upload_ms: float = 0.0  # receiving the upload, before the analysis
    # Whose answer it is (an API key's id) when reviews are on: its record is kept for that
    # owner to review (gateway/server/reviews/); None: nothing is kept.
    owner: str | None = None
    source: str = "detect"  # what made the answer: detect or job


ALL_MODELS = "all"  # models=all: every member, also those that cannot vote


def parse_models(models: str | None) -> tuple[str, ...] | None:
    """ "meso4, xception" -> ("meso4", "xception"); empty or None -> the voting members
    (the whole ensemble when every member votes); "all" -> ("all",): the whole ensemble."""
    if models is None or not models.strip():
        return None
    return tuple(m.strip() for m in models.split(",") if m.strip())


def options_for(
    settings: Settings,
    models: str | None = None,
    frames: int | None = None,
    threshold: float | None = None,
    *,
    thumbnails: bool = False,
    explain: bool = False,
    filename: str = "",
    size: int | None = None,
    sha256: str | None = None,
    request_id: str = "",
    upload_ms: float = 0.0,
    owner: str | None = None,
    source: str = "detect",
) -> Options:
    """A request's options: what it asked for, the settings' defaults for the rest."""
    return Options(
        frames=frames or settings.frames,
        threshold=settings.threshold if threshold is None else threshold,
        models=parse_models(models),
        thumbnails=thumbnails,
        explain=settings.explain_config() if explain else None,
        filename=filename,
        size=size,
        sha256=sha256,
        request_id=request_id,
        upload_ms=upload_ms,
        owner=owner,
        source=source,
    )


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
