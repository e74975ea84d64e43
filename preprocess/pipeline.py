"""Frames -> the faces on each and their crops: detection, then crop_face."""

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

    def crop_faces(self, frame: Frame, faces: list[Face]) -> FrameFaces:
        """A frame's crops for faces known without detecting it (sparse detection)."""
        crops = [crop_face(frame.image, face.box, self.crop) for face in faces]
        return FrameFaces(frame.index, frame.timestamp_s, faces, crops)
