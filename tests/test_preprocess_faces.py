"""preprocess.faces, .crop and .pipeline on real photos and frames from ../shared."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

import preprocess.assets
from preprocess.assets import AssetError
from preprocess.crop import CropConfig, crop_face
from preprocess.faces import DetectorConfig, Face, FaceDetector, find_model, load_detector
from preprocess.media import MediaReader
from preprocess.pipeline import FaceExtractor
from preprocess.tracks import box_iou
from tests.conftest import ASSETS, MEDIA
from tests.stack import OBAMA, TWO_PEOPLE

NAMES = ("scrfd", "yunet")
GROUPS = sorted((MEDIA / "images/groups").glob("*.jpg"))


def rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)


@pytest.fixture
def search_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Assets looked up in ../shared/assets only: no download cache of this machine's."""
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
    monkeypatch.setattr(preprocess.assets, "CACHE_DIR", tmp_path / "cache")
    return tmp_path


@pytest.fixture(scope="module")
def detectors() -> dict[str, FaceDetector]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
        loaded = {name: load_detector(DetectorConfig(name=name)) for name in NAMES}
    return loaded


# --- model lookup ---------------------------------------------------------------------------


def test_models_come_from_the_manifest(search_path: Path) -> None:
    assert find_model("scrfd") == ASSETS / "face/scrfd/scrfd_2.5g.onnx"
    assert find_model("yunet") == ASSETS / "face/yunet/face_detection_yunet_2023mar.onnx"


def test_an_insightface_pack_comes_first(search_path: Path, monkeypatch) -> None:
    pack = search_path / "buffalo_l"
    pack.mkdir()
    (pack / "det_10g.onnx").symlink_to(ASSETS / "face/scrfd/scrfd_2.5g.onnx")
    monkeypatch.setenv("DEEPFAKE_ASSETS", f"{search_path}:{ASSETS}")
    assert find_model("scrfd") == pack / "det_10g.onnx"
    assert len(load_detector(DetectorConfig()).detect(rgb(TWO_PEOPLE))) == 2


@pytest.mark.parametrize("name", NAMES)
def test_missing_model(search_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(search_path))
    with pytest.raises(AssetError, match="DEEPFAKE_ASSETS"):
        load_detector(DetectorConfig(name=name, allow_download=False))
    with pytest.raises(AssetError, match="not found"):
        load_detector(DetectorConfig(name=name, model_path=search_path / "nothing.onnx"))


def test_tampered_model(search_path: Path, monkeypatch) -> None:
    (search_path / "scrfd_2.5g.onnx").write_bytes(b"not the model")
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(search_path))
    with pytest.raises(AssetError, match="sha256"):
        load_detector(DetectorConfig())


def test_not_a_detector(tmp_path: Path) -> None:
    (path := tmp_path / "model.onnx").write_bytes(b"garbage")
    for name in NAMES:
        with pytest.raises(AssetError, match="could not load"):
            load_detector(DetectorConfig(name=name, model_path=path))


def test_config() -> None:
    assert DetectorConfig().threshold == 0.5
    assert DetectorConfig(name="yunet").threshold == 0.6
    assert DetectorConfig(name="yunet", score_threshold=0.9).threshold == 0.9
    with pytest.raises(ValueError):
        DetectorConfig(name="mtcnn")  # type: ignore[arg-type]


# --- detection --------------------------------------------------------------------------------


def check_faces(faces: list[Face], image: np.ndarray, config: DetectorConfig) -> None:
    height, width = image.shape[:2]
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)
    assert len(faces) <= config.max_faces
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert min(face.width, face.height) >= config.min_face_px
        assert face.score >= config.threshold


@pytest.mark.parametrize("path, count", [(TWO_PEOPLE, 2), (OBAMA, 1)], ids=["two", "obama"])
def test_both_detectors_agree(detectors: dict, path: Path, count: int) -> None:
    image = rgb(path)
    found = {}
    for name, detector in detectors.items():
        faces = detector.detect(image)
        check_faces(faces, image, detector.config)
        assert len(faces) == count, name
        found[name] = sorted(face.box for face in faces)  # left to right
    iou = box_iou(found["scrfd"], found["yunet"])
    assert np.diag(iou).min() > 0.5, iou


def test_faces_on_a_1080p_frame_in_frame_pixels(detectors: dict) -> None:
    """Detection runs on a 640 copy; the boxes must come back in 1920x1080 pixels."""
    frame = MediaReader().read(MEDIA / "videos/fake/dfdc_widuwuoiur.mp4", 1).frames[0].image
    boxes = []
    for detector in detectors.values():
        (face,) = detector.detect(frame)
        check_faces([face], frame, detector.config)
        boxes.append(face.box)
    assert box_iou(boxes[:1], boxes[1:])[0, 0] > 0.7
    assert boxes[0][2] > 640  # right of the face, beyond what a 640 copy holds

    # The same photo 3x larger: the same faces, 3x larger.
    image = rgb(TWO_PEOPLE)
    large = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    for detector in detectors.values():
        small = sorted(face.box for face in detector.detect(image))
        big = sorted(face.box for face in detector.detect(large))
        assert np.diag(box_iou(np.array(small) * 3, big)).min() > 0.8


@pytest.mark.parametrize("kind", ["blank", "grey", "noise"])
def test_no_faces(detectors: dict, kind: str) -> None:
    image = {
        "blank": np.zeros((480, 640, 3), np.uint8),
        "grey": np.full((1080, 1920, 3), 128, np.uint8),
        "noise": np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8),
    }[kind]
    for detector in detectors.values():
        assert detector.detect(image) == []


@pytest.mark.parametrize("name", NAMES)
def test_filters(name: str, monkeypatch) -> None:
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
    image = rgb(GROUPS[0])  # ~50 faces of 24-32 px
    default = load_detector(DetectorConfig(name=name))
    small = load_detector(DetectorConfig(name=name, min_face_px=8, max_faces=100))
    few = load_detector(DetectorConfig(name=name, min_face_px=8, max_faces=5))
    strict = load_detector(DetectorConfig(name=name, min_face_px=8, score_threshold=0.99))
    all_faces = small.detect(image)
    check_faces(all_faces, image, small.config)
    assert len(all_faces) >= 40
    assert len(default.detect(image)) < len(all_faces) // 4  # most are under 32 px
    assert few.detect(image) == all_faces[:5]
    assert strict.detect(image) == []

    scores = [face.score for face in all_faces]
    middle = float(np.median(scores))
    above = load_detector(DetectorConfig(name=name, min_face_px=8, score_threshold=middle))
    kept = above.detect(image)
    assert 0 < len(kept) < len(all_faces)
    assert min(face.score for face in kept) >= middle


@pytest.mark.parametrize("name", NAMES)
def test_group_photos(name: str, monkeypatch) -> None:
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
    detector = load_detector(DetectorConfig(name=name, min_face_px=10, max_faces=200))
    counts = [len(detector.detect(rgb(path))) for path in GROUPS]
    assert min(counts) >= 1
    assert sum(counts) >= 300
    assert sum(count >= 10 for count in counts) >= 8


def test_threads_agree_with_sequential(detectors: dict) -> None:
    images = [rgb(path) for path in [TWO_PEOPLE, OBAMA, *GROUPS[:6]]] * 2
    for detector in detectors.values():
        sequential = [detector.detect(image) for image in images]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(detector.detect, images))
        assert threaded == sequential


# --- crops ----------------------------------------------------------------------------------


def test_crop_of_a_real_face(detectors: dict) -> None:
    image = rgb(TWO_PEOPLE)
    for face in detectors["scrfd"].detect(image):
        crop = crop_face(image, face.box)
        assert crop.shape == (380, 380, 3) and crop.dtype == np.uint8
        assert crop.flags["C_CONTIGUOUS"]
        assert crop.mean() > 20  # the face, not padding


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 720x1280 image with no zero pixel, so padding (zeros) is told apart from content."""
    return np.random.default_rng(2).integers(1, 256, (720, 1280, 3), dtype=np.uint8)


def test_crop_margin_arithmetic(scene: np.ndarray) -> None:
    # A 228x228 box grows by 76 (a third) on each side: 380x380, so no resizing at all.
    crop = crop_face(scene, (500.0, 200.0, 728.0, 428.0))
    assert np.array_equal(crop, scene[124:504, 424:804])
    # Fractional boxes are truncated like the DFDC winner's int() before the margin.
    assert np.array_equal(crop_face(scene, (500.7, 200.2, 728.9, 428.5)), crop)


def test_crop_enlarges_with_cubic_and_pads_the_short_side(scene: np.ndarray) -> None:
    # Clipped at the top-left corner: rows 0..324, columns 0..314 -> 324 tall x 314 wide.
    crop = crop_face(scene, (10.0, 20.0, 238.0, 248.0))
    expected = cv2.resize(scene[0:324, 0:314], (368, 380), interpolation=cv2.INTER_CUBIC)
    assert crop.shape == (380, 380, 3)
    assert np.array_equal(crop[:, 6:374], expected)
    assert not crop[:, :6].any() and not crop[:, 374:].any()


def test_crop_shrinks_with_area_and_pads_the_short_side(scene: np.ndarray) -> None:
    # 600x300 box + margins (200, 100) = 1000 wide x 500 tall -> 380 x 190, padded above/below.
    crop = crop_face(scene, (240.0, 200.0, 840.0, 500.0), CropConfig(size=380))
    expected = cv2.resize(scene[100:600, 40:1040], (380, 190), interpolation=cv2.INTER_AREA)
    assert np.array_equal(crop[95:285], expected)
    assert not crop[:95].any() and not crop[285:].any()


def test_crop_config(scene: np.ndarray) -> None:
    crop = crop_face(scene, (500.0, 200.0, 600.0, 300.0), CropConfig(size=256, margin=0.0))
    expected = cv2.resize(scene[200:300, 500:600], (256, 256), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(crop, expected)
    with pytest.raises(ValueError):
        crop_face(scene, (2000.0, 2000.0, 2100.0, 2100.0))


# --- pipeline ---------------------------------------------------------------------------------


def test_extractor(detectors: dict) -> None:
    frames = MediaReader().read(MEDIA / "videos/real/ffpp_c23_original_004.mp4", 4).frames
    frames += MediaReader().read(TWO_PEOPLE, 1).frames
    extractor = FaceExtractor(detectors["yunet"], CropConfig())
    results = [extractor.extract_frame(frame) for frame in frames]
    assert [r.index for r in results] == [f.index for f in frames]
    assert [r.timestamp_s for r in results] == [f.timestamp_s for f in frames]
    assert [len(r.faces) for r in results] == [1, 1, 1, 1, 2]
    for result in results:
        assert len(result.crops) == len(result.faces)
        assert all(crop.shape == (380, 380, 3) for crop in result.crops)
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(extractor.extract_frame, frames))  # the detectors are thread-safe
    assert [r.faces for r in threaded] == [r.faces for r in results]
    assert all(
        np.array_equal(a, b)
        for x, y in zip(threaded, results, strict=True)
        for a, b in zip(x.crops, y.crops, strict=True)
    )
