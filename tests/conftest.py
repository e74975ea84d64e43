"""Shared fixtures: real media from ../shared, real face crops, a real Triton."""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.members import BUILTIN, discover
from model_repository.local_triton import LocalTriton, TritonSettings
from tests.processes import free_port, gateway_process, wait_for  # noqa: F401 — tests import them

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
ASSETS = SHARED / "assets"
REPOSITORY = ROOT / "model_repository"
# Weights and face detectors come from ../shared/assets, as under `make test`.
os.environ.setdefault("DEEPFAKE_ASSETS", str(ASSETS))
# The built-in members, then those a manifest (members/<name>/member.toml) adds.
MANIFEST_MEMBERS = {m.name: m for m in discover(REPOSITORY)}
MEMBERS = (*BUILTIN, *MANIFEST_MEMBERS)
NATIVE_SIZE = {"meso4": 256, "mesoinception4": 256, "xception": 299, "efficientnet_b7": 380} | {
    name: m.input_size for name, m in MANIFEST_MEMBERS.items()
}
FACE_SOURCES = (
    MEDIA / "images/real/face_recognition_obama.jpg",
    MEDIA / "images/real/dfdc_lynaeydofd_fr0.jpg",
    MEDIA / "images/fake/dfdc_mqzvfufzoq_fr0.jpg",
    MEDIA / "images/real/face_recognition_two_people.jpg",
)


def detect_faces(image_bgr: np.ndarray) -> np.ndarray:
    """Face boxes [x, y, w, h] by OpenCV YuNet, the project's MIT-licensed detector."""
    model = ASSETS / "face/yunet/face_detection_yunet_2023mar.onnx"
    height, width = image_bgr.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(model), "", (width, height), 0.8)
    _, faces = detector.detect(image_bgr)
    return np.zeros((0, 4)) if faces is None else faces[:, :4]


def crop_face(image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """RGB crop grown by a third of the box on each side, as the DFDC winner does."""
    x, y, w, h = box
    x0, y0 = int(max(0, x - w / 3)), int(max(0, y - h / 3))
    x1, y1 = (
        int(min(image_bgr.shape[1], x + w * 4 / 3)),
        int(min(image_bgr.shape[0], y + h * 4 / 3)),
    )
    return cv2.cvtColor(image_bgr[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def face_crops() -> list[np.ndarray]:
    """Real faces cut from ../shared/media images and video frames, various sizes."""
    crops = []
    for path in FACE_SOURCES:
        image = cv2.imread(str(path))
        crops += [crop_face(image, box) for box in detect_faces(image)]
    capture = cv2.VideoCapture(str(MEDIA / "videos/fake/ffpp_c23_Deepfakes_519_515.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok
    crops += [crop_face(frame, box) for box in detect_faces(frame)]
    assert len(crops) >= 5, "YuNet should find faces in the shared media"
    return crops


def resized(crops: list[np.ndarray], height: int, width: int | None = None) -> np.ndarray:
    """A batch: each crop resized to height x width (INTER_AREA), uint8 RGB."""
    size = (width or height, height)
    return np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in crops])


@pytest.fixture(scope="session")
def exported() -> Path:
    missing = [m for m in MEMBERS if not (REPOSITORY / "members" / m / "1/model.onnx").exists()]
    missing += [
        p for p in ("full", "lite") if not (REPOSITORY / p / "deepfake_vote/1/model.onnx").exists()
    ]
    if missing:
        pytest.fail(
            f"not exported: {missing}; run `make export` for both profiles (make test does)"
        )
    return REPOSITORY


def start_triton(profile: str, tmp: Path) -> LocalTriton:
    settings = TritonSettings(
        profile=profile,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=tmp,
    )
    return LocalTriton(settings)


@pytest.fixture(scope="session")
def triton(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonSettings]:
    """The real tritonserver serving the full profile on free ports."""
    with start_triton("full", tmp_path_factory.mktemp("triton-full")) as server:
        yield server.settings


@dataclass(frozen=True)
class Gateway:
    url: str
    uploads: Path  # the gateway's temporary upload folder: empty between requests
    log: Path


@contextlib.contextmanager
def start_gateway(triton_url: str, tmp: Path, **settings: object) -> Iterator[Gateway]:
    """The real gateway (python -m gateway, uvicorn) on a free port."""
    settings = {"triton_retries": 1} | settings
    with gateway_process(triton_url, tmp, **settings) as run:
        yield Gateway(run.url, run.uploads, run.log)


@pytest.fixture(scope="session")
def gateway(triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real gateway over the session's real Triton (full profile)."""
    with start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gateway"), max_in_flight=8) as gw:
        yield gw


# --- reliability and security tests: a lite Triton, gateways whose process the test holds ------


@pytest.fixture(scope="session")
def lite_triton(
    exported: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonSettings]:
    """A real tritonserver serving the lite profile (the MesoNets): cheap enough to share."""
    with start_triton("lite", tmp_path_factory.mktemp("triton-lite")) as server:
        yield server.settings


@dataclass(frozen=True)
class GatewayProcess(Gateway):
    process: "psutil.Process"  # noqa: F821 — psutil is imported where it is used


@contextlib.contextmanager
def start_gateway_process(
    triton_url: str, tmp: Path, **settings: object
) -> Iterator[GatewayProcess]:
    """start_gateway, also handing over the process: for signals and memory readings."""
    import psutil  # only these tests need it

    settings = {"triton_retries": 1} | settings
    with gateway_process(triton_url, tmp, **settings) as run:
        yield GatewayProcess(run.url, run.uploads, run.log, psutil.Process(run.pid))


def write_results(section: str, figures: dict) -> None:
    """Merge measured figures into results/reliability.json (git-ignored; the README quotes it)."""
    import json

    path = ROOT / "results" / "reliability.json"
    path.parent.mkdir(exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = figures
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
