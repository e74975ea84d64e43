"""The query options the upload routes share (/api/detect, its stream, /api/jobs).

FastAPI reads them from the dataclasses' fields, with their bounds and descriptions.
"""

from dataclasses import asdict, dataclass
from typing import Annotated

from fastapi import Query


@dataclass
class DetectQuery:
    """The detect routes' query options (FastAPI reads them from the fields)."""

    models: Annotated[
        str | None,
        Query(
            description="comma-separated, e.g. meso4,xception; 'all': every member, also "
            "those that cannot vote (by default they are skipped)"
        ),
    ] = None
    frames: Annotated[int | None, Query(ge=1, le=300, description="frames to sample")] = None
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None
    thumbnails: Annotated[bool, Query(description="a small JPEG of each face")] = False
    explain: Annotated[
        bool,
        Query(description="saliency maps of each track's most fake faces, per voting model"),
    ] = False

    def options(self) -> dict[str, object]:
        """As `options.options_for` takes them."""
        return asdict(self)
