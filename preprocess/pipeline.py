"""Frames -> the faces on each and their crops: detection, then crop_face."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from preprocess.crop import CropConfig, crop_face
from preprocess.faces import Face, FaceDetector
from preprocess.media import Frame


@dataclass(frozen=True)
class FrameFaces:
    index: int  # the frame's number in the clip
    timestamp_s: float
    faces: list[Face]  # largest first
    crops: list[np.ndarray]  # one size x size RGB uint8 crop per face, same order


class FaceExtractor:
    def __init__(self, detector: FaceDetector, crop: CropConfig) -> None:
        self.detector = detector
        self.crop = crop

    def extract_frame(self, frame: Frame) -> FrameFaces:
        faces = self.detector.detect(frame.image)
        crops = [crop_face(frame.image, face.box, self.crop) for face in faces]
        return FrameFaces(frame.index, frame.timestamp_s, faces, crops)

    def extract(
        self, frames: Sequence[Frame], map_fn: Callable[..., Iterable[FrameFaces]] = map
    ) -> list[FrameFaces]:
        """Every frame's faces, in frame order. Pass an executor's `map` as `map_fn` to
        spread the frames over threads: the detectors are thread-safe."""
        return list(map_fn(self.extract_frame, frames))

    def crop_faces(self, frame: Frame, faces: list[Face]) -> FrameFaces:
        """A frame's crops for faces known without detecting it (sparse detection)."""
        crops = [crop_face(frame.image, face.box, self.crop) for face in faces]
        return FrameFaces(frame.index, frame.timestamp_s, faces, crops)
