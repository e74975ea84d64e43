"""Detect on fewer frames: the detector runs on every `every`-th sampled frame (a key frame)
and each face's box is carried to the frames between, interpolated from one key frame to
the next along its IoU match.

SCRFD is the largest CPU cost after decoding (tests/bench/README.md); the
boxes of a talking head barely move over a few sampled frames. Interpolation is only
trusted where the two key frames agree: the same number of faces, each matched one to one
above `min_iou`. Otherwise (a track lost, a face entering or leaving) every frame between
is detected too.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from preprocess.faces import Face
from preprocess.tracks import box_iou


@dataclass(frozen=True)
class SparseConfig:
    every: int = 1  # detect on every n-th sampled frame; 1: on every frame
    min_iou: float = 0.3  # the same face on two key frames: what tracks.Tracker links

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"detect every {self.every} frames: must be at least 1")


EVERY_FRAME = SparseConfig()


def is_key(position: int, config: SparseConfig) -> bool:
    """Whether the detector runs on the sampled frame at `position` (0, every, 2 * every, …)."""
    return position % config.every == 0


def follow(
    previous: Sequence[Face], current: Sequence[Face], min_iou: float
) -> list[tuple[int, int]] | None:
    """The one-to-one match of two key frames' faces ((previous, current) indices, in the
    current frame's order), or None when they disagree: then the frames between are detected."""
    if len(previous) != len(current):
        return None
    if not current:
        return []
    iou = box_iou([f.box for f in previous], [f.box for f in current])
    rows, cols = linear_sum_assignment(iou, maximize=True)
    if (iou[rows, cols] < min_iou).any():
        return None
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda pair: pair[1])


def interpolate(
    previous: Sequence[Face], current: Sequence[Face], pairs: list[tuple[int, int]], t: float
) -> list[Face]:
    """The faces at fraction t (0 < t < 1) of the way from one key frame to the next: each
    matched box and detector score interpolated linearly, in the current frame's order."""
    faces = []
    for p, c in pairs:
        a, b = np.asarray(previous[p].box), np.asarray(current[c].box)
        box = tuple(float(v) for v in (1 - t) * a + t * b)
        score = (1 - t) * previous[p].score + t * current[c].score
        faces.append(Face(box, float(score)))  # type: ignore[arg-type]
    return faces
