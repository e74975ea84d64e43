"""The cpu overlay's settings, run for real here: Triton started with the rendered
Deployment's arguments (the local tritonserver 2.51 = NGC 24.10, on the exported
repository), and the gateway with the rendered ConfigMap, reaching Triton through a
dns:/// target as it does through the headless Service. Then one real detection,
the metrics that the ServiceMonitors scrape and the autoscaling rule reads, the
admin protocols refused without their header, and one trace per request from the
gateway through Triton (with components/tracing added, its collector replaced by
an OTLP/HTTP receiver in this process).
"""

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from deploy import validate
from model_repository.local_triton import (
    LocalTriton,
    TritonSettings,
    wheel_dir,
)
from tests.conftest import FAKE_CLIP, free_port, start_gateway
from tests.manifests import Rendering, expand
from tests.stack import on_free_ports
from tests.test_deploy_invariants import TRITON_GPU_METRICS, TRITON_METRICS

# The full tier only (make test): gateway and Triton processes.
pytestmark = pytest.mark.stack


VIDEO = FAKE_CLIP
ADMIN_KEY = "test-admin-key-0123456789"
COLLECTOR = "http://opentelemetry-collector.monitoring.svc:4318/v1/traces"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: what a collector would receive from the
    gateway (protobuf) and Triton (protobuf or JSON), as flat span records."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.receive(body, self.headers.get("Content-Type", ""))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def receive(self, body: bytes, content_type: str) -> None:
        if "json" in content_type:
            self.spans += spans_from_json(json.loads(body))
            return
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            service = attributes(resource.resource.attributes).get("service.name", "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": attributes(span.attributes),
                        }
                    )

    def wait_for(self, found, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = [s for s in list(self.spans) if found(s)]
            if spans:
                return spans
            time.sleep(0.5)
        raise AssertionError(f"no such span in {len(self.spans)}: {self.spans[-5:]}")

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(values) -> dict[str, object]:
    found = {}
    for kv in values:
        which = kv.value.WhichOneof("value")
        found[kv.key] = getattr(kv.value, which) if which else None
    return found


def spans_from_json(body: dict) -> list[dict]:
    """OTLP/JSON (ids in hex, as the OTLP spec has them) as flat span records."""

    def values(items: list[dict]) -> dict[str, object]:
        return {a["key"]: next(iter(a["value"].values()), None) for a in items}

    spans = []
    for resource in body.get("resourceSpans", []):
        service = values(resource.get("resource", {}).get("attributes", [])).get("service.name")
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                spans.append(
                    {
                        "service": service,
                        "name": span["name"],
                        "trace_id": span["traceId"].lower(),
                        "span_id": span["spanId"].lower(),
                        "parent_id": span.get("parentSpanId", "").lower(),
                        "attributes": values(span.get("attributes", [])),
                    }
                )
    return spans


class RenderedTriton(LocalTriton):
    """The local tritonserver, run with a Deployment's arguments instead of
    local_triton's own (plus the local backend folder the NGC image does not need)."""

    def __init__(self, settings: TritonSettings, args: list[str]) -> None:
        super().__init__(settings)
        self.args = args

    def command(self, backends: Path) -> list[str]:
        binary = wheel_dir(self.settings.python_env) / "bin" / "tritonserver"
        return [str(binary), *self.args, f"--backend-directory={backends}"]


@pytest.fixture(scope="module")
def cpu(tmp_path_factory: pytest.TempPathFactory) -> Rendering:
    """The cpu overlay with components/tracing added, as an operator would."""
    folder = tmp_path_factory.mktemp("cpu-traced")
    k8s = validate.OVERLAYS.parent
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(k8s / 'overlays' / 'cpu', folder)}]\n"
        f"components: [{os.path.relpath(k8s / 'components' / 'tracing', folder)}]\n"
    )
    return Rendering(validate.render(folder))


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def deployed_triton(
    cpu: Rendering,
    exported: Path,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonSettings]:
    container = cpu.workload("triton").container()
    # The lite profile: the same arguments, without loading B7 and Xception again
    # beside the session's full Triton. The Secret's admin key is the test's.
    env = cpu.env(container) | {
        "MODEL_REPOSITORY": str(exported),
        "MODEL_PROFILE": "lite",
        "TRITON_ADMIN_KEY": ADMIN_KEY,
    }
    settings = on_free_ports(
        work_dir=tmp_path_factory.mktemp("deployed-triton"),
    )
    ports = {
        "--http-port": settings.http_port,
        "--grpc-port": settings.grpc_port,
        "--metrics-port": settings.metrics_port,
    }
    args = []
    for arg in container["args"][1:]:
        name, _, value = expand(arg, env).replace(COLLECTOR, receiver.url).partition("=")
        args.append(f"{name}={ports.get(name, value)}")
    with RenderedTriton(settings, args) as server:
        yield server.settings


@pytest.fixture(scope="module")
def deployed_gateway(
    cpu: Rendering,
    deployed_triton: TritonSettings,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """python -m gateway with the ConfigMap's settings, but this machine's port,
    upload folder and face-detector assets, and Triton at a dns:/// name."""
    configured = cpu.env(cpu.workload("gateway").container())
    local = {"GATEWAY_PORT", "GATEWAY_HOST", "GATEWAY_TMP_DIR", "GATEWAY_TRITON_URL"}
    local |= {"GATEWAY_JOBS_DIR", "GATEWAY_JOBS_REDIS_URL"}  # no shared volume or Redis here
    settings = {
        name.removeprefix("GATEWAY_").lower(): value.replace(COLLECTOR, receiver.url)
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


def test_triton_exports_every_metric_the_alerts_and_dashboard_read(
    deployed_triton: TritonSettings, deployed_gateway: str
) -> None:
    """The names tests/test_deploy_invariants.py allows in PromQL, against the
    real /metrics (the GPU ones need a GPU: not here)."""
    with VIDEO.open("rb") as f:
        httpx.post(f"{deployed_gateway}/api/detect", files={"file": (VIDEO.name, f)}, timeout=600)
    text = httpx.get(f"http://127.0.0.1:{deployed_triton.metrics_port}/metrics").text
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    assert exported >= TRITON_METRICS - TRITON_GPU_METRICS
    assert series(text, "nv_inference_pending_request_count")


def test_admin_protocols_need_the_header_and_inference_does_not(
    deployed_triton: TritonSettings,
) -> None:
    """--grpc-restricted-protocol / --http-restricted-api as rendered: loading
    models and the repository index are refused without triton-admin-key, while
    health, metadata, configs and inference (what the gateway uses) stay open."""
    # gRPC metadata carries the key with Triton's prefix; HTTP as is.
    grpc_header = {"triton-grpc-protocol-triton-admin-key": ADMIN_KEY}
    header = {"triton-admin-key": ADMIN_KEY}
    client = grpcclient.InferenceServerClient(deployed_triton.grpc_url)
    try:
        with pytest.raises(grpcclient.InferenceServerException) as refused:
            client.load_model("meso4")
        assert "restricted" in str(refused.value), refused.value
        with pytest.raises(grpcclient.InferenceServerException):
            client.get_model_repository_index(headers=header)  # the HTTP name: not gRPC's
        with pytest.raises(grpcclient.InferenceServerException):
            client.get_model_repository_index(
                headers={"triton-grpc-protocol-triton-admin-key": "wrong"}
            )
        index = client.get_model_repository_index(headers=grpc_header, as_json=True)
        assert {m["name"] for m in index["models"]} >= {"meso4", "deepfake_ensemble"}
        assert client.is_server_ready() and client.get_model_config("meso4")
    finally:
        client.close()
    http = deployed_triton.http_url
    assert httpx.post(f"{http}/v2/repository/index").status_code in (401, 403)
    assert httpx.post(f"{http}/v2/repository/index", headers=header).status_code == 200
    assert httpx.get(f"{http}/v2/health/ready").status_code == 200
    assert httpx.get(f"{http}/v2/models/meso4/config").status_code == 200


def test_one_trace_per_request_from_the_gateway_through_triton(
    deployed_gateway: str, receiver: OtlpReceiver
) -> None:
    """The gateway's server span carries the request id; its gRPC call to Triton
    carries the W3C context, so Triton's spans (OpenTelemetry mode, as the
    tracing component configures it) join the same trace, with the same
    request id as Triton's request id."""
    request_id = f"trace{time.monotonic_ns()}"
    with VIDEO.open("rb") as f:
        answer = httpx.post(
            f"{deployed_gateway}/api/detect",
            files={"file": (VIDEO.name, f)},
            headers={"X-Request-ID": request_id},
            timeout=600,
        )
    assert answer.status_code == 200, answer.text
    [server] = receiver.wait_for(
        lambda s: (
            s["attributes"].get("deepfake.request_id") == request_id
            and s["service"] == "deepfake-gateway"
        )
    )
    trace_id = server["trace_id"]

    def in_trace(span: dict, service: str) -> bool:
        return span["trace_id"] == trace_id and span["service"] == service

    def under_a_call(span: dict) -> bool:
        calls = {
            c["span_id"]
            for c in list(receiver.spans)
            if in_trace(c, "deepfake-gateway") and c["name"].endswith("/ModelInfer")
        }
        return in_trace(span, "deepfake-triton") and span["parent_id"] in calls

    # Triton's request spans hang under the gateway's gRPC call spans (each side exports
    # its spans in its own batches, so wait until both halves have arrived) and carry the
    # gateway's request id.
    receiver.wait_for(under_a_call)
    triton_spans = [s for s in list(receiver.spans) if in_trace(s, "deepfake-triton")]
    assert any(s["attributes"].get("triton.request_id") == request_id for s in triton_spans)
    # Nothing of another request in this trace.
    others = [s for s in receiver.spans if s["trace_id"] == trace_id]
    assert not [
        s for s in others if s["attributes"].get("deepfake.request_id") not in (None, request_id)
    ]


def test_gateway_stays_ready_with_json_503s_while_triton_is_down(
    cpu: Rendering, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The rendered readiness probe passes with no Triton at all, so the
    Service keeps the pod and clients get the API's JSON 503 (with
    Retry-After), never the ingress's HTML page for a Service without endpoints."""
    probe = cpu.workload("gateway").container()["readinessProbe"]["httpGet"]["path"]
    dead = f"127.0.0.1:{free_port()}"
    with start_gateway(dead, tmp_path_factory.mktemp("gateway-no-triton"), detector="yunet") as gw:
        assert httpx.get(f"{gw.url}{probe}").status_code == 200
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        with VIDEO.open("rb") as f:
            answer = httpx.post(
                f"{gw.url}/api/detect", files={"file": (VIDEO.name, f)}, timeout=120
            )
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["code"] in ("triton_unavailable", "model_unavailable")
        assert answer.headers["retry-after"]
