"""Faces per frame -> tracks: the same person followed across the sampled frames.

The classifiers score each face; the gateway aggregates per track so that two people in a
clip get two verdicts instead of one blurred average.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from preprocess.crop import Box
from preprocess.faces import Face


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


class Tracker:
    """Tracks grown one frame at a time: the same linking for a finished clip
    (`link_tracks`) and for live video, where frames arrive while the person moves.

    Each frame's faces are linked to the open tracks' last boxes, one to one, maximising
    IoU. A track stays open for `max_gap` frames without a face (a missed detection, a
    turned head); a pair below `iou_threshold` is no match; an unmatched face starts a
    track. Ids count from 0 in order of first appearance, larger faces first within a
    frame. Live callers pass `keep` so closed tracks are forgotten instead of piling up.
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 2) -> None:
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.tracks: list[Track] = []  # every track (link_tracks) or the open ones (forget)
        self.next_id = 0

    def is_open(self, track: Track, position: int) -> bool:
        return position - track.last_frame <= self.max_gap + 1

    def add(self, position: int, faces: Sequence[Face]) -> list[int]:
        """Link the faces of the frame at `position`; the track id of each face, in order."""
        open_tracks = [t for t in self.tracks if self.is_open(t, position)]
        ids = [-1] * len(faces)
        if open_tracks and faces:
            iou = box_iou([t.last_box for t in open_tracks], [f.box for f in faces])
            for row, col in zip(*linear_sum_assignment(iou, maximize=True), strict=True):
                if iou[row, col] >= self.iou_threshold:
                    open_tracks[row].add(position, int(col), faces[col].box)
                    ids[col] = open_tracks[row].id
        new = sorted((i for i in range(len(faces)) if ids[i] < 0), key=lambda i: -faces[i].area)
        for index in new:
            self.tracks.append(Track(id=self.next_id))
            self.tracks[-1].add(position, index, faces[index].box)
            ids[index] = self.next_id
            self.next_id += 1
        return ids

    def forget_closed(self, position: int, keep: int) -> None:
        """Drop closed tracks, and all but the last `keep` links of open ones (live video)."""
        self.tracks = [t for t in self.tracks if self.is_open(t, position)]
        for track in self.tracks:
            del track.links[:-keep], track.boxes[:-keep]


def link_tracks(
    faces_per_frame: Sequence[Sequence[Face]], iou_threshold: float = 0.3, max_gap: int = 2
) -> list[Track]:
    """The tracks of a finished clip's sampled frames (see Tracker)."""
    tracker = Tracker(iou_threshold, max_gap)
    for position, faces in enumerate(faces_per_frame):
        tracker.add(position, faces)
    return tracker.tracks
