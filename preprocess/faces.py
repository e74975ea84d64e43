"""Face boxes on RGB frames: SCRFD (insightface) or YuNet (OpenCV) behind one interface.

Both detect on a copy whose long side is `input_size` and map the boxes back to full-frame
pixels: a 1080p frame costs what a 640 one does. Both are safe to call from many threads.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import onnxruntime as ort

from preprocess.assets import AssetError, load_manifest, resolve
from preprocess.crop import Box

MANIFEST = Path(__file__).with_name("assets.toml")
# Manifest entries per detector, best first: the first one found is used.
MODEL_ASSETS = {"scrfd": ("scrfd_10g", "scrfd_2_5g"), "yunet": ("yunet",)}
# Each detector's own scale: SCRFD's 0.5 is insightface's default; YuNet scores spurious
# faces up to ~0.5 on real photos, true ones ~0.9.
DEFAULT_SCORE = {"scrfd": 0.5, "yunet": 0.6}
SCRFD_STRIDE = 32  # SCRFD's coarsest feature stride: its input sides must be multiples of it


@dataclass(frozen=True)
class Face:
    box: Box  # x0, y0, x1, y1 in frame pixels, clipped to the frame
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height


@dataclass(frozen=True)
class DetectorConfig:
    name: Literal["scrfd", "yunet"] = "scrfd"
    score_threshold: float | None = None  # None: the detector's own default, DEFAULT_SCORE
    min_face_px: int = 32  # smaller faces (min of width, height) are too small to classify
    input_size: int = 640  # long side of the copy the detector sees
    max_faces: int = 8  # per frame, largest first (the gateway's GATEWAY_MAX_FACES too)
    model_path: Path | None = None  # None: looked up through preprocess/assets.toml
    allow_download: bool = True  # YuNet only: the SCRFD files have no pinned public URL

    def __post_init__(self) -> None:
        if self.name not in MODEL_ASSETS:
            raise ValueError(f"unknown face detector {self.name!r}, not in {list(MODEL_ASSETS)}")

    @property
    def threshold(self) -> float:
        return DEFAULT_SCORE[self.name] if self.score_threshold is None else self.score_threshold


class FaceDetector(Protocol):
    config: DetectorConfig

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 HxWx3 image, largest first."""
        ...


def _downscale(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float, float]:
    """`image` shrunk so its long side is `long_side` (never enlarged) and the x, y factors
    back to its own pixels. INTER_AREA: a 3x shrink with INTER_LINEAR aliases small faces."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1:
        return image, 1.0, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, width / size[0], height / size[1]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _select(
    boxes: np.ndarray,
    scores: np.ndarray,
    factors: tuple[float, float],
    shape: tuple[int, ...],
    config: DetectorConfig,
) -> list[Face]:
    """Faces from boxes (x0, y0, x1, y1) found on the small copy: back to full-frame pixels,
    clipped to the frame, filtered by score and size, largest first, at most max_faces."""
    height, width = shape[:2]
    fx, fy = factors
    boxes = np.clip(boxes.reshape(-1, 4) * [fx, fy, fx, fy], 0, [width, height, width, height])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    keep = (scores >= config.threshold) & (sides >= config.min_face_px)
    faces = [
        Face(box=tuple(float(v) for v in box), score=float(score))
        for box, score in zip(boxes[keep], scores[keep], strict=True)
    ]
    faces.sort(key=lambda face: face.area, reverse=True)
    return faces[: config.max_faces]


def _frugal_session_options() -> ort.SessionOptions:
    """One thread per call, and no spinning: frames are detected in parallel by the caller's
    threads, next to a decoder and model servers on the same cores: a spinning pool costs
    more CPU per frame than it saves (CONTRIBUTING.md's speed facts)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class ScrfdDetector:
    """insightface's SCRFD on ONNX Runtime's CPU provider.

    Thread-safe: ORT sessions may run concurrently, and nothing is changed after prepare().
    """

    def __init__(self, model_path: Path, config: DetectorConfig) -> None:
        # Imported here: a YuNet-only (MIT) deployment does not need insightface at all.
        from insightface.model_zoo import get_model

        # One dynamic-shape session for all input sizes: as fast on CPU as the static
        # session insightface would otherwise build, and keep, for every new frame shape.
        model = get_model(
            str(model_path),
            providers=["CPUExecutionProvider"],
            sess_options=_frugal_session_options(),
            static_shape_sessions=False,
        )
        if getattr(model, "taskname", None) != "detection":
            raise AssetError(f"{model_path} is not an SCRFD face detector")
        model.prepare(ctx_id=-1, input_size=(config.input_size,) * 2, det_thresh=config.threshold)
        self.model = model
        self.config = config

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        small, fx, fy = _downscale(image_rgb, self.config.input_size)
        height, width = small.shape[:2]
        # The smallest input that holds the frame rather than a square: 16:9 costs 40 % less.
        input_size = (_round_up(width, SCRFD_STRIDE), _round_up(height, SCRFD_STRIDE))
        found, _ = self.model.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), input_size=input_size)
        return _select(found[:, :4], found[:, 4], (fx, fy), image_rgb.shape, self.config)


class YunetDetector:
    """OpenCV's YuNet (cv2.FaceDetectorYN).

    A FaceDetectorYN keeps its input size as state (setInputSize), so each thread gets its
    own instance: threads run in parallel instead of queueing on a lock.
    """

    def __init__(self, model_path: Path, config: DetectorConfig) -> None:
        self.model_path = model_path
        self.config = config
        self._local = threading.local()
        self._instance()  # a model that does not load fails here, not on the first request

    def _instance(self) -> cv2.FaceDetectorYN:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            size = (self.config.input_size, self.config.input_size)
            detector = cv2.FaceDetectorYN.create(
                str(self.model_path), "", size, self.config.threshold
            )
            self._local.detector = detector
        return detector

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        small, fx, fy = _downscale(image_rgb, self.config.input_size)
        height, width = small.shape[:2]
        detector = self._instance()
        detector.setInputSize((width, height))
        _, found = detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        found = np.zeros((0, 15), np.float32) if found is None else found
        boxes = found[:, :4].copy()
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x0, y0, x1, y1
        return _select(boxes, found[:, -1], (fx, fy), image_rgb.shape, self.config)


DETECTORS: dict[str, Callable[[Path, DetectorConfig], FaceDetector]] = {
    "scrfd": ScrfdDetector,
    "yunet": YunetDetector,
}


def find_model(name: str, allow_download: bool = True) -> Path:
    """The detector's model file: the first of its manifest entries found (sha256 checked)."""
    manifest = load_manifest(MANIFEST)
    errors = []
    for key in MODEL_ASSETS[name]:
        try:
            return resolve(manifest[key], allow_download=allow_download)
        except AssetError as exc:
            errors.append(str(exc))
    raise AssetError(
        f"no {name} face-detector model: {'; '.join(errors)}. Put one under $DEEPFAKE_ASSETS "
        "or set DetectorConfig.model_path"
    )


def load_detector(config: DetectorConfig = DetectorConfig()) -> FaceDetector:
    """The configured detector, ready to use; AssetError if its model file is missing."""
    path = config.model_path or find_model(config.name, config.allow_download)
    if not Path(path).is_file():
        raise AssetError(f"{config.name}: model file {path} not found")
    try:
        return DETECTORS[config.name](Path(path), config)
    except AssetError:
        raise
    except Exception as exc:  # cv2.error, or ONNX Runtime's errors, which derive from Exception
        raise AssetError(f"{config.name}: could not load {path}: {exc}") from exc
