"""Faces per frame -> tracks: the same person followed across the sampled frames.

The classifiers score each face; the gateway aggregates per track so that two people in a
clip get two verdicts instead of one blurred average.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from preprocess.faces import Box, Face


@dataclass
class Track:
    id: int
    links: list[tuple[int, int]] = field(default_factory=list)  # (frame position, face index)
    boxes: list[Box] = field(default_factory=list)  # the linked faces' boxes, same order

    @property
    def frames(self) -> list[int]:
        return [position for position, _ in self.links]

    @property
    def last_frame(self) -> int:
        return self.links[-1][0]

    @property
    def last_box(self) -> Box:
        return self.boxes[-1]

    def add(self, position: int, face_index: int, box: Box) -> None:
        self.links.append((position, face_index))
        self.boxes.append(box)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1): [N, M]."""
    a, b = np.asarray(a, float).reshape(-1, 1, 4), np.asarray(b, float).reshape(1, -1, 4)
    overlap = np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2])
    inter = np.prod(np.clip(overlap, 0, None), axis=-1)
    area_a = np.prod(a[..., 2:] - a[..., :2], axis=-1)
    area_b = np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def link_tracks(
    faces_per_frame: Sequence[Sequence[Face]], iou_threshold: float = 0.3, max_gap: int = 2
) -> list[Track]:
    """Link each frame's faces to the tracks' last boxes, one to one, maximising IoU.

    A track stays open for `max_gap` frames without a face (a missed detection, a turned
    head); a pair below `iou_threshold` is no match; an unmatched face starts a track. Ids
    count from 0 in order of first appearance, larger faces first within a frame.
    """
    tracks: list[Track] = []
    for position, faces in enumerate(faces_per_frame):
        open_tracks = [t for t in tracks if position - t.last_frame <= max_gap + 1]
        matched: set[int] = set()
        if open_tracks and faces:
            iou = box_iou([t.last_box for t in open_tracks], [f.box for f in faces])
            for row, col in zip(*linear_sum_assignment(iou, maximize=True), strict=True):
                if iou[row, col] >= iou_threshold:
                    open_tracks[row].add(position, int(col), faces[col].box)
                    matched.add(int(col))
        new = sorted(set(range(len(faces))) - matched, key=lambda i: -faces[i].area)
        for index in new:
            tracks.append(Track(id=len(tracks)))
            tracks[-1].add(position, index, faces[index].box)
    return tracks
