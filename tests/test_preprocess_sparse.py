"""Detection on every n-th sampled frame (preprocess.sparse), alone and inside the gateway's
EarlyFaces, on real frames and the real SCRFD."""

import asyncio
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.server.analysis.scoring import EarlyFaces, Stop
from preprocess.crop import CropConfig
from preprocess.faces import DetectorConfig, Face, FaceDetector, load_detector
from preprocess.media import Frame, MediaReader
from preprocess.pipeline import FaceExtractor, FrameFaces
from preprocess.sparse import SparseConfig, follow, interpolate, is_key
from preprocess.tracks import box_iou
from tests.conftest import ASSETS
from tests.stack import REAL_CLIP, TWO_PEOPLE

CLIP = REAL_CLIP


class CountingDetector:
    """The real detector, counting the frames it ran on."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.config = detector.config
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        with self._lock:
            self.calls += 1
        return self.detector.detect(image_rgb)


@pytest.fixture(scope="module")
def scrfd() -> FaceDetector:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
        return load_detector(DetectorConfig(name="scrfd"))


def moved(face: Face, dx: float) -> Face:
    x0, y0, x1, y1 = face.box
    return Face((x0 + dx, y0, x1 + dx, y1), face.score)


def test_key_frames_and_matching() -> None:
    every4 = SparseConfig(every=4)
    assert [p for p in range(9) if is_key(p, every4)] == [0, 4, 8]
    with pytest.raises(ValueError):
        SparseConfig(every=0)
    a, b = Face((0, 0, 100, 100), 0.9), Face((300, 0, 400, 100), 0.8)
    # The same two faces, listed the other way round and moved a little: matched one to one.
    assert follow([a, b], [moved(b, 10), moved(a, 10)], 0.3) == [(1, 0), (0, 1)]
    assert follow([a, b], [a], 0.3) is None  # a face left: the frames between are detected
    assert follow([a], [moved(a, 90)], 0.3) is None  # too far to be the same face
    assert follow([], [], 0.3) == []
    halfway = interpolate([a], [moved(a, 20)], [(0, 0)], 0.25)
    assert halfway[0].box == pytest.approx((5, 0, 105, 100))
    assert halfway[0].score == pytest.approx(0.9)


def early_faces(
    frames: list[Frame], detector: FaceDetector, every: int
) -> tuple[list[FrameFaces], dict[int, FrameFaces]]:
    """The faces EarlyFaces finds (kept, without crops) and what it sent on (with crops)."""
    extractor = FaceExtractor(detector, CropConfig())
    sent: dict[int, FrameFaces] = {}

    async def run() -> list[FrameFaces]:
        with ThreadPoolExecutor(2) as executor:
            early = EarlyFaces(
                extractor,
                executor,
                asyncio.get_running_loop(),
                lambda found: sent.__setitem__(found.index, found),
                Stop(60),
                sparse=SparseConfig(every=every),
            )
            for frame in frames:
                early.submit(frame)
            try:
                return await early.faces([f.index for f in frames])
            finally:
                await early.finish()

    return asyncio.run(run()), sent


def test_a_talking_head_is_detected_on_few_of_the_frames(scrfd: FaceDetector) -> None:
    frames = MediaReader().read(CLIP, 18).frames
    every_frame, _ = early_faces(frames, scrfd, 1)
    counting = CountingDetector(scrfd)
    sparse, sent = early_faces(frames, counting, 4)
    # Keys at 0, 4, 8, 12, 16 and 17 (the clip ended between keys); between two keys that
    # disagree (SCRFD sees a faint second face, at 0.5, in frames 3 to 5) all are detected.
    counts = [len(f.faces) for f in every_frame]
    keys = [0, 4, 8, 12, 16, 17]
    disagreeing = [(a, b) for a, b in itertools.pairwise(keys) if counts[a] != counts[b]]
    assert disagreeing, "this clip has a face that comes and goes"
    assert counting.calls == len(keys) + sum(b - a - 1 for a, b in disagreeing) < len(frames)
    assert [f.index for f in sparse] == [f.index for f in frames] == sorted(sent)
    for full, carried in zip(every_frame, sparse, strict=True):
        assert len(full.faces) == len(carried.faces)
        iou = box_iou([f.box for f in full.faces], [f.box for f in carried.faces])
        assert (iou.max(axis=1) > 0.7).all(), (full.index, iou)
        assert carried.crops == []  # kept without crops; the crops went to scoring
        assert [c.shape for c in sent[carried.index].crops] == [(380, 380, 3)] * len(full.faces)


def test_where_a_face_leaves_the_frames_between_are_detected(scrfd: FaceDetector) -> None:
    photo = MediaReader().read(TWO_PEOPLE, 1).frames[0].image
    blank = np.full_like(photo, 127)
    images = [photo, photo, photo, photo, blank, blank, photo, photo, photo]
    frames = [Frame(i, i / 25, image) for i, image in enumerate(images)]
    counting = CountingDetector(scrfd)
    sparse, _ = early_faces(frames, counting, 4)
    # Keys 0, 4, 8; 0 and 4 disagree (two faces, then none): 1 to 3 detected; so do 4 and 8.
    assert counting.calls == len(frames)
    assert [len(f.faces) for f in sparse] == [2, 2, 2, 2, 0, 0, 2, 2, 2]
