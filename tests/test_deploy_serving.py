"""The cpu overlay's settings, run for real here: Triton started with the rendered
Deployment's arguments (the local tritonserver 2.51 = NGC 24.10, on the exported
repository), and the gateway with the rendered ConfigMap, reaching Triton through a
dns:/// target as it does through the headless Service. Then one real detection,
and the metrics that the ServiceMonitors scrape and the autoscaling rule reads.
"""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy import validate
from deploy.manifests import Rendering, expand
from model_repository.local_triton import (
    LocalTriton,
    TritonSettings,
    environment,
    prepare_backends,
    wheel_dir,
)
from tests.conftest import MEDIA, free_port, start_gateway

VIDEO = MEDIA / "videos/fake/ffpp_c23_Deepfakes_519_515.mp4"


class RenderedTriton(LocalTriton):
    """The local tritonserver, run with a Deployment's arguments instead of
    local_triton's own (plus the local backend folder the NGC image does not need)."""

    def __init__(self, settings: TritonSettings, args: list[str]) -> None:
        super().__init__(settings)
        self.args = args

    def start(self) -> None:
        backends = prepare_backends(self.settings.work_dir, self.settings.python_env)
        binary = wheel_dir(self.settings.python_env) / "bin" / "tritonserver"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary), *self.args, f"--backend-directory={backends}"],
                env=environment(self.settings.python_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.fixture(scope="module")
def cpu() -> Rendering:
    return Rendering(validate.render(validate.OVERLAYS / "cpu"))


@pytest.fixture(scope="module")
def deployed_triton(
    cpu: Rendering, exported: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonSettings]:
    container = cpu.workload("triton").container()
    # The lite profile: the same arguments, without loading B7 and Xception again
    # beside the session's full Triton.
    env = cpu.env(container) | {"MODEL_REPOSITORY": str(exported), "MODEL_PROFILE": "lite"}
    settings = TritonSettings(
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=tmp_path_factory.mktemp("deployed-triton"),
    )
    ports = {
        "--http-port": settings.http_port,
        "--grpc-port": settings.grpc_port,
        "--metrics-port": settings.metrics_port,
    }
    args = []
    for arg in container["args"][1:]:
        name, _, value = expand(arg, env).partition("=")
        args.append(f"{name}={ports.get(name, value)}")
    with RenderedTriton(settings, args) as server:
        yield server.settings


@pytest.fixture(scope="module")
def deployed_gateway(
    cpu: Rendering, deployed_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """python -m gateway with the ConfigMap's settings, but this machine's port,
    upload folder and face-detector assets, and Triton at a dns:/// name."""
    configured = cpu.env(cpu.workload("gateway").container())
    local = {"GATEWAY_PORT", "GATEWAY_HOST", "GATEWAY_TMP_DIR", "GATEWAY_TRITON_URL"}
    local |= {"GATEWAY_JOBS_DIR", "GATEWAY_JOBS_REDIS_URL"}  # no shared volume or Redis here
    settings = {
        name.removeprefix("GATEWAY_").lower(): value
        for name, value in configured.items()
        if name.startswith("GATEWAY_") and name not in local
    }
    # A shared 2-core test machine is far slower than a deployment's Triton: the
    # per-call deadline is not what this checks.
    settings["triton_timeout_s"] = "600"
    target = f"dns:///localhost:{deployed_triton.grpc_port}"
    with start_gateway(target, tmp_path_factory.mktemp("deployed-gateway"), **settings) as gw:
        assert httpx.get(f"{gw.url}/readyz", timeout=10).status_code == 200
        yield gw.url


def test_triton_starts_with_the_deployments_arguments(deployed_triton: TritonSettings) -> None:
    """--strict-readiness: ready means the ensemble and all its members loaded,
    with each member's configs/cpu.pbtxt."""
    ready = httpx.get(f"{deployed_triton.http_url}/v2/models/deepfake_ensemble/ready")
    assert ready.status_code == 200
    config = httpx.get(f"{deployed_triton.http_url}/v2/models/meso4/config").json()
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_gateway_detects_through_the_configured_route(deployed_gateway: str) -> None:
    with VIDEO.open("rb") as f:
        answer = httpx.post(
            f"{deployed_gateway}/api/detect", files={"file": (VIDEO.name, f)}, timeout=600
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "fake"
    # What the gateway's ServiceMonitor scrapes, on the port it names.
    metrics = httpx.get(f"{deployed_gateway}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def series(text: str, name: str) -> dict[str, float]:
    """The samples of one metric, keyed by their label set."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(name + r"(\{[^}]*\})\s+(\S+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_triton_exports_what_the_autoscaling_rule_divides(
    deployed_triton: TritonSettings, deployed_gateway: str
) -> None:
    """After real traffic, both counters of the adapter's query exist for every
    member with the same labels (so the division matches them one to one), and
    the ensemble's own queue time is a small part of its members'."""
    with VIDEO.open("rb") as f:
        httpx.post(f"{deployed_gateway}/api/detect", files={"file": (VIDEO.name, f)}, timeout=600)
    text = httpx.get(f"http://127.0.0.1:{deployed_triton.metrics_port}/metrics").text
    queue = series(text, "nv_inference_queue_duration_us")
    success = series(text, "nv_inference_request_success")
    members = {'model="meso4"', 'model="mesoinception4"'}
    for member in members:
        [labels] = [k for k in queue if member in k]
        assert success[labels] > 0
    [ensemble] = [k for k in queue if 'model="deepfake_ensemble"' in k]
    assert queue[ensemble] <= max(queue[k] for k in queue if k != ensemble)
