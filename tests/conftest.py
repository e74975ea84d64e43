"""Shared fixtures: real media from ../shared, real face crops, a real Triton, gateways
(tests/stack.py starts the processes; the fast tier's gateway runs in process)."""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.architectures import native_size
from export.members import BUILTIN, discover
from model_repository.local_triton import TritonSettings
from preprocess.crop import crop_face
from preprocess.faces import DetectorConfig, load_detector
from tests.stack import (  # noqa: F401 — tests import them from here
    ASSETS,
    FAKE_CLIP,
    MEDIA,
    ROOT,
    SHARED,
    Gateway,
    chromium,
    free_port,
    gateway_process,
    local_triton,
    wait_for,
)

REPOSITORY = ROOT / "model_repository"
# Weights and face detectors come from ../shared/assets, as under `make test`.
os.environ.setdefault("DEEPFAKE_ASSETS", str(ASSETS))
# The built-in members, then those a manifest (members/<name>/member.toml) adds.
MANIFEST_MEMBERS = {m.name: m for m in discover(REPOSITORY)}
MEMBERS = (*BUILTIN, *MANIFEST_MEMBERS)
NATIVE_SIZE = {name: native_size(name) for name in BUILTIN} | {
    name: m.input_size for name, m in MANIFEST_MEMBERS.items()
}
FACE_SOURCES = (
    MEDIA / "images/real/face_recognition_obama.jpg",
    MEDIA / "images/real/dfdc_lynaeydofd_fr0.jpg",
    MEDIA / "images/fake/dfdc_mqzvfufzoq_fr0.jpg",
    MEDIA / "images/real/face_recognition_two_people.jpg",
)


@pytest.fixture(scope="session")
def face_crops() -> list[np.ndarray]:
    """Real faces from ../shared/media images and a video frame, cut as the gateway cuts
    them (preprocess: YuNet, the DFDC crop): 380x380 RGB."""
    detector = load_detector(DetectorConfig(name="yunet"))
    frames = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in FACE_SOURCES]
    capture = cv2.VideoCapture(str(FAKE_CLIP))
    ok, frame = capture.read()
    capture.release()
    assert ok
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    crops = [crop_face(image, face.box) for image in frames for face in detector.detect(image)]
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


@pytest.fixture(scope="session")
def triton(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonSettings]:
    """The real tritonserver serving the full profile on free ports."""
    with local_triton("full", tmp_path_factory.mktemp("triton-full")) as server:
        yield server.settings


@contextlib.contextmanager
def start_gateway(triton_url: str, tmp: Path, **settings: object) -> Iterator[Gateway]:
    """The real gateway (python -m gateway, uvicorn) on a free port; its `process` is
    there for signals and memory readings."""
    settings = {"triton_retries": 1} | settings
    with gateway_process(triton_url, tmp, **settings) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def gateway(triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real gateway over the session's real Triton (full profile)."""
    with start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gateway"), max_in_flight=8) as gw:
        yield gw


@pytest.fixture(scope="session")
def lite_triton(
    exported: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonSettings]:
    """A real tritonserver serving the lite profile (the MesoNets): cheap enough to share."""
    with local_triton("lite", tmp_path_factory.mktemp("triton-lite")) as server:
        yield server.settings


@pytest.fixture(scope="module")
def lite_gateway(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A real gateway with default settings over the lite Triton, one per test module."""
    with start_gateway(lite_triton.grpc_url, tmp_path_factory.mktemp("lite-gateway")) as gw:
        yield gw


def write_results(section: str, figures: dict) -> None:
    """Merge measured figures into results/reliability.json (git-ignored; quoted by
    tests/RELIABILITY.md)."""
    import json

    path = ROOT / "results" / "reliability.json"
    path.parent.mkdir(exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = figures
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


# --- the fast tier's gateway: in process (TestClient), over a fake model server -------------


@dataclass(frozen=True)
class InProcessGateway:
    client: "TestClient"  # noqa: F821 — httpx's API, requests go to the app in this process
    triton: "FakeTriton"  # noqa: F821 — its models and the count of inference calls
    settings: "Settings"  # noqa: F821
    uploads: Path

    @property
    def gateway_client(self) -> "GatewayClient":  # noqa: F821
        """The service's Python client over the in-process app: `detect_response`..."""
        from gateway.clients.client import GatewayClient

        return GatewayClient(http=self.client)


def gateway_settings(triton_url: str, tmp: Path, **settings: object) -> "Settings":  # noqa: F821
    """Settings from these values only: no GATEWAY_* variable, no .env (as gateway_process)."""
    from gateway.server.settings import Settings

    uploads = tmp / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    defaults = {"tmp_dir": uploads, "jobs_dir": tmp / "jobs", "triton_retries": 1}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWAY_")}
    try:
        return Settings(_env_file=None, triton_url=triton_url, **(defaults | settings))
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def inprocess_gateway(
    tmp: Path, profile: str = "lite", candidates: dict[str, int] | None = None, **settings: object
):
    """create_app in this process (lifespan and all), its Triton the fake of
    tests/fake_triton.py serving `profile` from the committed configs (with `candidates`:
    member -> a candidate version loaded beside version 1)."""
    from fastapi.testclient import TestClient

    from gateway.server.app import create_app
    from tests.fake_triton import fake_triton

    with fake_triton(profile, candidates) as triton:
        config = gateway_settings(triton.url, tmp, **settings)
        with TestClient(create_app(config)) as client:
            yield InProcessGateway(client, triton, config, config.tmp_dir)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """The gateway in process over a fake lite Triton: the API without real processes."""
    with inprocess_gateway(tmp_path_factory.mktemp("api")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:  # noqa: F821 — playwright is imported where it is used
    """Headless Chromium for the page's tests (tests/stack.py `chromium`)."""
    with chromium() as launched:
        yield launched


# --- tiers: `make test-fast` runs `-m "not stack"` ------------------------------------------

# A test whose fixtures reach one of these runs real processes: it belongs to the full tier.
STACK_FIXTURES = {"exported", "triton", "lite_triton"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
