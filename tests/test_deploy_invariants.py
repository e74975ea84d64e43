"""The rendered overlays hang together as a cluster would need them to: probes
and Services point at the ports Triton and the gateway listen on, selectors
pick the pods they are meant to, the network policy lets in exactly the
intended traffic, autoscaling reads a metric the adapter serves, and every
container is locked down.
"""

import copy
import functools
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from deploy import bases, validate
from tests.conftest import MEMBERS
from tests.dockerfile import args_of, env_of, final_user, instruction
from tests.manifests import (
    Manifest,
    Rendering,
    Workload,
    container_port,
    expand,
    iter_containers,
    quantity,
    selector_matches,
)

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_DOCKERFILE = ROOT / "deploy" / "docker" / "gateway.Dockerfile"
TRITON_DOCKERFILE = ROOT / "deploy" / "docker" / "triton.Dockerfile"
TRITON_CPU_DOCKERFILE = ROOT / "deploy" / "docker" / "triton-cpu.Dockerfile"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
OVERLAYS = ("cpu", "gpu", "gpu-remote", "gpu-cluster", "gpu-mig", "gpu-jobs")
REPOSITORY = ROOT / "model_repository"
ADAPTER_VALUES = ROOT / "deploy" / "monitoring" / "prometheus-adapter-values.yaml"
GPU_OVERLAYS = ("gpu", "gpu-remote", "gpu-cluster", "gpu-mig", "gpu-jobs")
REMOTE_OVERLAYS = ("gpu-remote",)
TRACED_OVERLAYS = ("gpu-cluster",)
DNS = ({"k8s-app": "kube-dns"}, "kube-system")
# The gRPC/HTTP protocols the gateway calls (gateway/server/model_server.py): these
# must stay open; every other admin protocol must need the header.
GATEWAY_PROTOCOLS = {"health", "metadata", "model-config", "inference"}
ADMIN_PROTOCOLS = {"model-repository", "shared-memory", "statistics", "trace", "logging"}
# What Triton 2.51 exports and the alerts, dashboard and adapter may read:
# tests/test_deploy_serving.py checks each name the local server has against
# its /metrics; the GPU ones (no GPU here) are from Triton's metrics docs.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count",
}
TRITON_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
TRITON_METRICS |= TRITON_GPU_METRICS
MONITORING = "monitoring"
INGRESS_NAMESPACE = "ingress-nginx"
# Overlays with components/jobs (opt-in): Redis, the workers, the shared uploads volume.
JOBS_OVERLAYS = ("gpu-cluster", "gpu-jobs")
# Overlays with components/reviews-postgres: the review store's PostgreSQL.
REVIEWS_OVERLAYS = ("gpu-cluster",)
# Overlays with components/stream-egress: the gateway may read stream URLs.
STREAM_OVERLAYS = ("gpu-cluster",)
# Overlays with components/gateway-api: an HTTPRoute instead of the Ingress.
GATEWAY_API_OVERLAYS = ("gpu-cluster",)


def edge_namespace(overlay: str) -> str:
    """Where the proxies that reach the gateway run: ingress-nginx, or the
    Gateway's data plane (its namespace in the HTTPRoute's parentRefs)."""
    if overlay in GATEWAY_API_OVERLAYS:
        [parent] = rendering(overlay).get("HTTPRoute", "gateway")["spec"]["parentRefs"]
        return parent["namespace"]
    return INGRESS_NAMESPACE


@functools.cache
def rendering(overlay: str) -> Rendering:
    return Rendering(validate.render(validate.OVERLAYS / overlay))


def flags(args: list[str]) -> dict[str, list[str]]:
    """--name=value arguments (after the command) as name -> [values]."""
    result: dict[str, list[str]] = {}
    for arg in args[1:]:
        assert arg.startswith("--") and "=" in arg, f"not --flag=value: {arg}"
        name, value = arg.split("=", 1)
        result.setdefault(name, []).append(value)
    return result


def triton(overlay: str) -> tuple[Rendering, Workload, Manifest, dict[str, list[str]]]:
    r = rendering(overlay)
    workload = r.workload("triton")
    container = workload.container("triton")
    return r, workload, container, flags(r.args(container))


def gateway(overlay: str) -> tuple[Rendering, Workload, Manifest, dict[str, str]]:
    r = rendering(overlay)
    workload = r.workload("gateway")
    container = workload.container("gateway")
    return r, workload, container, r.env(container)


def one(values: list[str]) -> str:
    assert len(values) == 1, values
    return values[0]


def served_profile(r: Rendering, container: Manifest) -> str:
    """The model_repository/ profile folder Triton serves: MODEL_PROFILE, or, when
    that names the baked image's link, the profile the image is built with."""
    profile = r.env(container)["MODEL_PROFILE"]
    if profile == env_of(TRITON_DOCKERFILE)["MODEL_PROFILE"]:
        return args_of(TRITON_DOCKERFILE)["PROFILE"]
    return profile


def ensemble_members(profile: str) -> list[str]:
    config = (REPOSITORY / profile / "deepfake_ensemble" / "config.pbtxt").read_text()
    return [m for m in re.findall(r'model_name:\s*"([^"]+)"', config) if m != "deepfake_vote"]


def probe_budget_s(probe: Manifest) -> int:
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


pytestmark = pytest.mark.parametrize("overlay", OVERLAYS)


# -- Triton -------------------------------------------------------------------------------


def test_triton_serves_the_repository_as_the_local_server_does(overlay: str) -> None:
    r, _, container, f = triton(overlay)
    args = r.args(container)
    assert args[0] == "tritonserver"
    assert not [a for a in args if "$(" in a], "every $(VAR) is defined in the container"
    env = r.env(container)
    repository, profile = env["MODEL_REPOSITORY"], env["MODEL_PROFILE"]
    assert f["--model-repository"] == [f"{repository}/members", f"{repository}/{profile}"]
    served = served_profile(r, container)
    assert (REPOSITORY / served / "deepfake_ensemble" / "config.pbtxt").is_file()
    assert one(f["--model-control-mode"]) == "explicit"
    assert one(f["--load-model"]) == "deepfake_ensemble"
    assert one(f["--strict-readiness"]) == "true"
    assert one(f["--exit-on-error"]) == "true"


def test_triton_listens_on_the_ports_it_declares(overlay: str) -> None:
    _, _, container, f = triton(overlay)
    for name in ("http", "grpc", "metrics"):
        assert int(one(f[f"--{name}-port"])) == container_port(container, name)
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}


def assert_probes(container: dict, expected: dict[str, str], port: int) -> None:
    """Each probe is an HTTP GET of its expected path on the server's own port."""
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == port, probe


def test_triton_probes_use_its_health_endpoints(overlay: str) -> None:
    _, _, container, f = triton(overlay)
    http = int(one(f["--http-port"]))
    expected = {
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
        "startupProbe": "/v2/health/ready",
    }
    assert_probes(container, expected, http)
    # Long enough to load the models and, on a GPU, build the TensorRT engines.
    startup = probe_budget_s(container["startupProbe"])
    assert startup >= (20 * 60 if overlay in GPU_OVERLAYS else 5 * 60)
    assert startup > probe_budget_s(container["livenessProbe"])


def test_triton_closes_grpc_connections_so_clients_find_new_pods(overlay: str) -> None:
    _, _, _, f = triton(overlay)
    age_ms = int(one(f["--grpc-max-connection-age"]))
    assert 10_000 <= age_ms <= 300_000
    assert int(one(f["--grpc-max-connection-age-grace"])) > 0


def test_triton_shuts_down_within_its_grace_period(overlay: str) -> None:
    _, workload, container, f = triton(overlay)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + int(one(f["--exit-timeout-secs"]))
    assert workload.spec["terminationGracePeriodSeconds"] > needed


def tritonserver_help() -> str | None:
    """`tritonserver --help` of the local server (Triton 2.51 = NGC 24.10),
    from the nvidia-pytriton wheel in one of the project's environments."""
    for site in sorted(ROOT.glob(".venv*/lib/python3*/site-packages")):
        binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            env = dict(os.environ, LD_LIBRARY_PATH=str(site / "nvidia_pytriton.libs"))
            result = subprocess.run(
                [binary, "--help"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                timeout=60,
            )
            return result.stdout + result.stderr
    return None


def test_triton_arguments_are_options_of_triton_2_51(overlay: str) -> None:
    help_text = tritonserver_help()
    if help_text is None:
        pytest.skip("no tritonserver from nvidia-pytriton in .venv*/ (make setup)")
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text, re.MULTILINE))
    assert "--model-repository" in known and "--grpc-max-connection-age" in known
    _, _, _, f = triton(overlay)
    assert set(f) - known == set()


def test_model_config_name_matches_the_overlay(overlay: str) -> None:
    r, workload, container, f = triton(overlay)
    members = ensemble_members(served_profile(r, container))
    assert members
    # One whole GPU, or one MIG slice (components/gpu-mig).
    gpus = {
        k: v
        for k, v in container["resources"]["limits"].items()
        if k == "nvidia.com/gpu" or k.startswith("nvidia.com/mig-")
    }
    if overlay == "cpu":
        assert f["--model-config-name"] == ["cpu"]
        for member in members:
            config = (REPOSITORY / "members" / member / "configs" / "cpu.pbtxt").read_text()
            assert "KIND_CPU" in config and "KIND_GPU" not in config, member
        for _, c in iter_containers(r):
            assert "nvidia.com/gpu" not in str(c.get("resources")), c["name"]
        assert "nvidia.com/gpu" not in str(workload.spec.get("tolerations"))
    else:
        # Each member's config.pbtxt: the GPU with TensorRT FP16.
        assert "--model-config-name" not in f
        [(resource, count)] = gpus.items()
        assert int(count) == 1 and (resource == "nvidia.com/gpu") == (overlay != "gpu-mig")
        assert any(t["key"] == "nvidia.com/gpu" for t in workload.spec["tolerations"])
        for member in members:
            config = (REPOSITORY / "members" / member / "config.pbtxt").read_text()
            assert "KIND_GPU" in config and '"tensorrt"' in config, member
            assert re.search(r'"precision_mode"\s+value:\s*"FP16"', config), member


def test_tensorrt_engine_cache_is_a_writable_volume(overlay: str) -> None:
    r, workload, container, _ = triton(overlay)
    if overlay not in GPU_OVERLAYS:  # the CPU configs use no TensorRT
        assert workload.mount(container, "/trt-cache") is None
        return
    for member in MEMBERS:
        config = (REPOSITORY / "members" / member / "config.pbtxt").read_text()
        [path] = re.findall(r'"trt_engine_cache_path"\s+value:\s*"([^"]+)"', config)
        cache = workload.mount(container, str(Path(path).parent))
        # A pod's own emptyDir, or the shared claim of components/trt-cache-pvc.
        assert cache is not None, member
        if "persistentVolumeClaim" in cache:
            claim = r.get("PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"])
            assert "ReadWriteMany" in claim["spec"]["accessModes"]
            assert "emptyDir" not in cache
        else:
            assert "emptyDir" in cache, member


def test_a_shared_engine_cache_has_one_writer_per_folder(overlay: str) -> None:
    """ONNX Runtime writes engines in place, without a lock: on a shared volume each pod
    writes its node's folder (subPathExpr from spec.nodeName), and a node runs one Triton
    pod (required anti-affinity), so two cold pods never write the same files."""
    r, workload, container, _ = triton(overlay)
    cache = workload.mount(container, "/trt-cache")
    if cache is None or "persistentVolumeClaim" not in cache:
        return
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/trt-cache"]
    assert "subPath" not in mount and "$(NODE_NAME)" in mount["subPathExpr"]
    [node] = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    [term] = workload.spec["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert r.selected(term["labelSelector"], workload.namespace) == [workload]


def test_gpu_pods_never_share_a_node(overlay: str) -> None:
    """A soft spread lets both GPU pods land on one node, lost together in a drain."""
    _, workload, _, _ = triton(overlay)
    by_key = {c["topologyKey"]: c for c in workload.spec["topologySpreadConstraints"]}
    hard = by_key["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert hard == (overlay in GPU_OVERLAYS)


# MIG 3g profiles by GPU model (NVIDIA's MIG user guide): the profile's name is the GPU's.
MIG_3G_PROFILES = {
    "NVIDIA-A100-SXM4-80GB": "mig-3g.40gb",
    "NVIDIA-A100-80GB-PCIe": "mig-3g.40gb",
    "NVIDIA-H100-80GB-HBM3": "mig-3g.40gb",
    "NVIDIA-H100-PCIe": "mig-3g.40gb",
    "NVIDIA-H100-NVL": "mig-3g.47gb",
    "NVIDIA-H200": "mig-3g.71gb",
    "NVIDIA-A100-SXM4-40GB": "mig-3g.20gb",
}
# What the members need on one GPU (deploy/README.md, "Memory"): ~20 GiB, in MiB.
GPU_MEMORY_NEEDED_MIB = 20 * 1024


def required_node_terms(workload: Workload) -> list[Manifest]:
    affinity = workload.spec.get("affinity", {}).get("nodeAffinity", {})
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return required.get("nodeSelectorTerms", [])


def test_gpu_pods_land_only_on_gpus_with_enough_memory(overlay: str) -> None:
    """Mixed fleets: a 16 GB GPU would fail the engine builds; every required node term
    asks GPU feature discovery's nvidia.com/gpu.memory for enough."""
    _, workload, _, _ = triton(overlay)
    terms = required_node_terms(workload)
    if overlay not in GPU_OVERLAYS:
        assert not terms
        return
    assert terms
    for term in terms:
        [memory] = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
        assert memory["operator"] == "Gt" and int(memory["values"][0]) >= GPU_MEMORY_NEEDED_MIB


def test_a_mig_slice_lands_only_on_gpus_that_offer_its_profile(overlay: str) -> None:
    """mig-3g.40gb exists on 80 GB A100s and H100s only (an H200's 3g is 71gb): the pod
    asks for the GPU models whose profile it names, never one it would wait for forever."""
    _, workload, container, _ = triton(overlay)
    migs = [k for k in container["resources"]["limits"] if k.startswith("nvidia.com/mig-")]
    if not migs:
        return
    [resource] = migs
    profile = resource.removeprefix("nvidia.com/")
    for term in required_node_terms(workload):
        [products] = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.product"]
        assert products["operator"] == "In" and products["values"]
        for product in products["values"]:
            assert MIG_3G_PROFILES[product] == profile, product
    assert required_node_terms(workload)
    # The component's comment names the profile of each GPU model, as the table here.
    text = (ROOT / "deploy/k8s/components/gpu-mig/kustomization.yaml").read_text()
    for product, mig in MIG_3G_PROFILES.items():
        line = next(x for x in text.splitlines() if product in x)
        assert f"nvidia.com/{mig}" in line, product


def test_a_remote_repository_is_a_versioned_prefix(overlay: str) -> None:
    """A mutable prefix lets a restart or a rollback load whatever was synced last: the
    location ends with the release's version, the images' tag."""
    r, _, container, _ = triton(overlay)
    location = r.env(container)["MODEL_REPOSITORY"]
    if overlay not in REMOTE_OVERLAYS:
        assert location == "/models"
        return
    version = location.rstrip("/").rsplit("/", 1)[1]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version), location
    base = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())
    tags = {i["newTag"] for i in base["images"]}
    assert tags == {version.removeprefix("v")}


def test_triton_has_shared_memory_and_temp_volumes(overlay: str) -> None:
    r, workload, container, _ = triton(overlay)
    shm = workload.mount(container, "/dev/shm")
    assert shm is not None and shm["emptyDir"]["medium"] == "Memory"
    size = quantity(shm["emptyDir"]["sizeLimit"])
    assert 2**30 <= size < quantity(container["resources"]["limits"]["memory"])
    assert "emptyDir" in workload.mount(container, "/tmp")
    assert r.env(container)["HOME"] == "/tmp"


def test_model_repository_location_matches_the_image(overlay: str) -> None:
    r, _, container, _ = triton(overlay)
    env = r.env(container)
    if overlay in REMOTE_OVERLAYS:
        assert (REPOSITORY / env["MODEL_PROFILE"] / "deepfake_ensemble").is_dir()
        # Triton's own remote repositories, on the stock image it is built on.
        assert re.match(r"(s3|gs)://", env["MODEL_REPOSITORY"])
        triton_base = bases.base_of(TRITON_DOCKERFILE)
        assert container["image"] == triton_base.reference and triton_base.tagged == TRITON_IMAGE
    else:
        # The cpu overlay runs the CPU image (the wheel's server), the others NGC's.
        dockerfile = TRITON_CPU_DOCKERFILE if overlay == "cpu" else TRITON_DOCKERFILE
        image_env = env_of(dockerfile)
        assert env["MODEL_REPOSITORY"] == image_env["MODEL_REPOSITORY"]
        name = "triton-cpu" if overlay == "cpu" else "triton"
        assert container["image"].endswith(f"/{name}:0.1.0")
        # The Deployment names the image's own link to the profile it was
        # built with, never a profile: a lite image must serve lite.
        assert env["MODEL_PROFILE"] == image_env["MODEL_PROFILE"]
        [check] = [r for r in instruction(dockerfile, "RUN") if "make export" in r]
        assert f'ln -s "${{PROFILE}}" {env["MODEL_PROFILE"]}' in check
        assert env["MODEL_PROFILE"] not in ("full", "lite") and args_of(dockerfile)["PROFILE"]


# -- gateway ------------------------------------------------------------------------------


def test_gateway_settings_come_from_its_configmap(overlay: str) -> None:
    r, _, container, env = gateway(overlay)
    [source] = [s for s in container["envFrom"] if "configMapRef" in s]
    config = r.get("ConfigMap", source["configMapRef"]["name"])
    assert set(config["data"]) <= set(env)
    assert all(k.startswith("GATEWAY_") or k == "DEEPFAKE_ASSETS" for k in config["data"])
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert int(env["GATEWAY_PORT"]) == container_port(container, "http")
    assert env["GATEWAY_DETECTOR"] == "yunet"
    assert env["DEEPFAKE_ASSETS"] == env_of(GATEWAY_DOCKERFILE)["DEEPFAKE_ASSETS"]
    _, _, _, f = triton(overlay)
    assert env["GATEWAY_ENSEMBLE"] == one(f["--load-model"])
    assert float(env["GATEWAY_TRITON_TIMEOUT_S"]) > 0


def test_gateway_configmap_is_read_by_the_gateways_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every GATEWAY_* key names a setting (the gateway ignores unknown ones,
    so a misspelt key would silently leave the default) and parses to its value."""
    from pydantic import TypeAdapter

    from gateway.server.settings import Settings

    _, _, _, env = gateway(overlay)
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    settings = {
        k.removeprefix("GATEWAY_").lower(): v for k, v in env.items() if k.startswith("GATEWAY_")
    }
    assert set(settings) <= set(Settings.model_fields), set(settings) - set(Settings.model_fields)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parsed = Settings(_env_file=None)
    for name, value in settings.items():
        expected = TypeAdapter(Settings.model_fields[name].annotation).validate_python(value)
        assert getattr(parsed, name) == expected, name


def test_gateway_probes_use_its_health_endpoints(overlay: str) -> None:
    _, _, container, env = gateway(overlay)
    expected = {
        "livenessProbe": "/healthz",
        # Not /readyz (Triton ready): while Triton is down the gateway stays
        # in the Service and answers JSON 503s, not the ingress's HTML 503.
        "readinessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    assert_probes(container, expected, int(env["GATEWAY_PORT"]))


def test_gateway_reaches_triton_through_the_headless_service(overlay: str) -> None:
    r, _, _, env = gateway(overlay)
    match = re.fullmatch(
        r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", env["GATEWAY_TRITON_URL"]
    )
    assert match, env["GATEWAY_TRITON_URL"]
    name, namespace, port = match.group(1), match.group(2), int(match.group(3))
    service = r.get("Service", name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS answer per pod
    [backend] = r.backends(service)
    assert backend.name == "triton"
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == port]
    _, _, container, f = triton(overlay)
    assert container_port(container, service_port["targetPort"]) == int(one(f["--grpc-port"]))


def test_gateway_temp_dir_is_a_writable_volume(overlay: str) -> None:
    _, workload, container, env = gateway(overlay)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tmp_dir = Path(env["GATEWAY_TMP_DIR"])
    mounted = [p for p in mounts if tmp_dir == Path(p) or Path(p) in tmp_dir.parents]
    assert mounted, f"{tmp_dir} is on the read-only root filesystem"
    assert "emptyDir" in workload.volume(mounts[mounted[0]])
    # Every upload being received, analysed or queued has its file there at once.
    files = sum(int(env[k]) for k in ("GATEWAY_MAX_UPLOADS", "GATEWAY_MAX_IN_FLIGHT"))
    files += int(env["GATEWAY_MAX_QUEUE"])
    size = quantity(workload.volume(mounts[mounted[0]])["emptyDir"]["sizeLimit"])
    assert size >= files * quantity(f"{env['GATEWAY_MAX_UPLOAD_MB']}Mi")


def test_an_analysis_ends_within_the_shutdown_drain(overlay: str) -> None:
    _, _, _, env = gateway(overlay)
    assert float(env["GATEWAY_ANALYSIS_TIMEOUT_S"]) <= float(env["GATEWAY_SHUTDOWN_TIMEOUT_S"])


def test_gateway_lets_slow_requests_finish_on_shutdown(overlay: str) -> None:
    _, workload, container, env = gateway(overlay)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    needed = pre_stop + float(env["GATEWAY_TRITON_TIMEOUT_S"])
    assert workload.spec["terminationGracePeriodSeconds"] >= needed


# -- security -----------------------------------------------------------------------------


def test_every_container_is_non_root_read_only_and_limited(overlay: str) -> None:
    r = rendering(overlay)
    containers = list(iter_containers(r))
    # triton, gateway, with components/jobs its redis and worker, with
    # components/reviews-postgres its PostgreSQL
    expected = 2 + 2 * (overlay in JOBS_OVERLAYS) + (overlay in REVIEWS_OVERLAYS)
    assert len(containers) == expected
    for workload, c in containers:
        pod_ctx, ctx = workload.spec.get("securityContext", {}), c.get("securityContext", {})
        where = f"{workload.name}/{c['name']}"
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) not in (None, 0), where
        assert ctx["readOnlyRootFilesystem"] is True, where
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx.get("privileged", False) is False, where
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, where
        resources = c["resources"]
        # A GPU pod's CPUs are requested but not limited (no CFS throttling of
        # the threads feeding the GPU); everything else is limited.
        gpu = any(k.startswith("nvidia.com/") for k in resources["limits"])
        for kind in ("memory",) if gpu else ("cpu", "memory"):
            request, limit = resources["requests"][kind], resources["limits"][kind]
            assert 0 < quantity(request) <= quantity(limit), f"{where} {kind}"
        assert gpu == (workload.name == "triton" and overlay in GPU_OVERLAYS), where
        if gpu:
            assert "cpu" not in resources["limits"] and quantity(resources["requests"]["cpu"]) >= 1
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not workload.spec.get(key), where
        assert not [v for v in workload.spec["volumes"] if "hostPath" in v], where
        volumes = {v["name"] for v in workload.spec["volumes"]}
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, where


def test_no_service_account_token_is_mounted(overlay: str) -> None:
    r = rendering(overlay)
    for workload in r.workloads():
        assert workload.spec["automountServiceAccountToken"] is False, workload.name
        account = r.get("ServiceAccount", workload.spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False


def test_namespace_enforces_the_restricted_pod_security_standard(overlay: str) -> None:
    [namespace] = rendering(overlay).all("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pods_run_as_the_images_users(overlay: str) -> None:
    r = rendering(overlay)
    for name, dockerfile in (("gateway", GATEWAY_DOCKERFILE), ("triton", TRITON_DOCKERFILE)):
        ctx = r.workload(name).spec["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == final_user(dockerfile), name


# -- network policy -----------------------------------------------------------------------


def test_network_policies_select_existing_pods(overlay: str) -> None:
    r = rendering(overlay)
    policies = r.all("NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(default_deny) == 1 and "ingress" not in default_deny[0]["spec"]
    assert "egress" not in default_deny[0]["spec"]
    assert set(default_deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for policy in policies:
        namespace = policy["metadata"]["namespace"]
        selected = r.selected(policy["spec"]["podSelector"], namespace)
        assert selected, policy["metadata"]["name"]
        # Named ports in the rules exist on the pods they protect.
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for workload in selected:
                    container_port(workload.container(), port["port"])


def test_only_the_gateway_reaches_triton_grpc_and_only_monitoring_scrapes(overlay: str) -> None:
    r, triton_pod, container, _ = triton(overlay)
    gateway_pod = r.workload("gateway")
    ns = triton_pod.namespace
    http, grpc, metrics = (container_port(container, n) for n in ("http", "grpc", "metrics"))

    def allowed(labels: dict[str, str], namespace: str, port: int, to: Workload = triton_pod):
        return r.ingress_allowed(to, port, labels, namespace)

    assert allowed(gateway_pod.labels, ns, grpc)
    assert not allowed(gateway_pod.labels, ns, http)
    assert not allowed(gateway_pod.labels, ns, metrics)
    assert not allowed(triton_pod.labels, ns, grpc)
    assert not allowed({"app.kubernetes.io/name": "other"}, ns, grpc)
    assert not allowed(gateway_pod.labels, "default", grpc)  # same labels, other namespace
    assert allowed({"app.kubernetes.io/name": "prometheus"}, MONITORING, metrics)
    assert not allowed({"app.kubernetes.io/name": "prometheus"}, MONITORING, grpc)
    assert not allowed({}, "default", metrics)
    # The gateway: from the ingress controller and Prometheus only.
    gateway_http = container_port(gateway_pod.container(), "http")
    assert allowed({}, edge_namespace(overlay), gateway_http, gateway_pod)
    other_edge = {INGRESS_NAMESPACE, "envoy-gateway-system"} - {edge_namespace(overlay)}
    assert not [n for n in other_edge if allowed({}, n, gateway_http, gateway_pod)]
    assert allowed({}, MONITORING, gateway_http, gateway_pod)
    assert not allowed({}, "default", gateway_http, gateway_pod)
    assert not allowed(triton_pod.labels, ns, gateway_http, gateway_pod)


def test_network_policy_evaluation_is_not_vacuous(overlay: str) -> None:
    """Without the policies, the same question has the opposite answer."""
    r = rendering(overlay)
    bare = Rendering([o for o in r.objects if o["kind"] != "NetworkPolicy"])
    triton_pod = bare.workload("triton")
    assert bare.ingress_allowed(triton_pod, 8000, {}, "default")
    assert not r.ingress_allowed(r.workload("triton"), 8000, {}, "default")


# -- Ingress ------------------------------------------------------------------------------


def test_ingress_allows_large_uploads_and_long_reads(overlay: str) -> None:
    r, _, container, env = gateway(overlay)
    if overlay in GATEWAY_API_OVERLAYS:
        assert not r.all("Ingress")
        return  # test_httproute_reaches_the_gateway_with_long_timeouts
    ingress = r.get("Ingress", "gateway")
    notes = ingress["metadata"]["annotations"]
    upload = quantity(f"{env['GATEWAY_MAX_UPLOAD_MB']}M")
    for key in ("nginx.ingress.kubernetes.io/proxy-body-size", "nginx.org/client-max-body-size"):
        assert quantity(notes[key].replace("m", "M")) > upload, key
    slowest = max(120.0, float(env["GATEWAY_TRITON_TIMEOUT_S"]))
    for key in (
        "nginx.ingress.kubernetes.io/proxy-read-timeout",
        "nginx.ingress.kubernetes.io/proxy-send-timeout",
        "nginx.org/proxy-read-timeout",
        "nginx.org/proxy-send-timeout",
    ):
        assert float(notes[key].removesuffix("s")) >= slowest, key
    # /api/detect/stream's progress events reach the client as they are sent.
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.org/proxy-buffering"] == "False"
    # Uploads stream to the gateway, which spools and limits them itself.
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    [rule] = ingress["spec"]["rules"]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        service = r.get("Service", backend["name"])
        assert [b.name for b in r.backends(service)] == ["gateway"]
        [port] = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
        assert container_port(container, port["targetPort"]) == int(env["GATEWAY_PORT"])
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_httproute_reaches_the_gateway_with_long_timeouts(overlay: str) -> None:
    r, _, container, env = gateway(overlay)
    if overlay not in GATEWAY_API_OVERLAYS:
        assert not r.all("HTTPRoute")
        return
    route = r.get("HTTPRoute", "gateway")
    slowest = max(120.0, float(env["GATEWAY_TRITON_TIMEOUT_S"]))
    for rule in route["spec"]["rules"]:
        assert quantity(rule["timeouts"]["request"].removesuffix("s")) >= slowest
        for ref in rule["backendRefs"]:
            service = r.get("Service", ref["name"])
            assert [b.name for b in r.backends(service)] == ["gateway"]
            [port] = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
            assert container_port(container, port["targetPort"]) == int(env["GATEWAY_PORT"])


def edge_paths(r: Rendering) -> list[tuple[str, str]]:
    """(match type, path) of the Ingress or the HTTPRoute, as Exact or Prefix."""
    found = []
    for ingress in r.all("Ingress"):
        for rule in ingress["spec"]["rules"]:
            found += [(p["pathType"], p["path"]) for p in rule["http"]["paths"]]
    for route in r.all("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                kind = {"PathPrefix": "Prefix", "Exact": "Exact"}[match["path"]["type"]]
                found.append((kind, match["path"]["value"]))
    return found


def ingress_routes(r: Rendering, path: str) -> bool:
    """Does the edge send `path` anywhere (Exact, or Prefix by path element)?"""
    for kind, value in edge_paths(r):
        prefix = value.rstrip("/")
        if kind == "Exact" and path == value:
            return True
        if kind == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


def test_ingress_serves_the_page_and_the_api_but_not_the_internals(overlay: str) -> None:
    from gateway.server.app import create_app
    from gateway.server.settings import Settings

    r = rendering(overlay)
    # The web page and its files are the app's (TestClient outside `with`: no lifespan, no
    # Triton; included routers are nested, so ask the app, not its route list).
    page = TestClient(create_app(Settings()))
    assert page.get("/").status_code == page.get("/static/app.js").status_code == 200
    for path in ["/", "/static/app.js", "/api", "/api/models", "/api/detect", "/api/detect/stream"]:
        assert ingress_routes(r, path), path
    # Probes, metrics and the OpenAPI page stay inside the cluster.
    for path in ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/apix", "/other"]:
        assert not ingress_routes(r, path), path
    if overlay in GATEWAY_API_OVERLAYS:
        return  # limits are the Gateway implementation's policies (deploy/README.md)
    # Edge limits per client address, above what one user of the page needs.
    notes = r.get("Ingress", "gateway")["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/limit-rpm"]) >= 10
    assert int(notes["nginx.ingress.kubernetes.io/limit-connections"]) >= 2


def edge_rules(r: Rendering) -> list[tuple[str, str, dict]]:
    """(match type, path, what applies there) for each Ingress path and HTTPRoute match:
    the Ingress's annotations, or the route rule's timeouts."""
    found = []
    for ingress in r.all("Ingress"):
        notes = ingress["metadata"]["annotations"]
        for rule in ingress["spec"]["rules"]:
            found += [(p["pathType"], p["path"], notes) for p in rule["http"]["paths"]]
    for route in r.all("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                kind = {"PathPrefix": "Prefix", "Exact": "Exact"}[match["path"]["type"]]
                found.append((kind, match["path"]["value"], rule["timeouts"]))
    return found


def edge_rule_for(r: Rendering, path: str) -> dict:
    """What applies to `path`: the longest matching path wins, Exact before Prefix."""
    matching = [
        (len(value) + (kind == "Exact"), applies)
        for kind, value, applies in edge_rules(r)
        if (kind == "Exact" and path == value)
        or (kind == "Prefix" and (path == value or path.startswith(value.rstrip("/") + "/")))
    ]
    assert matching, path
    return max(matching, key=lambda m: m[0])[1]


def test_the_edge_fits_each_routes_limits(overlay: str) -> None:
    """Jobs carry GATEWAY_JOBS_MAX_MB within GATEWAY_JOBS_UPLOAD_TIMEOUT_S, /api/detect
    GATEWAY_MAX_UPLOAD_MB: each route's body limit and timeouts at the edge fit its own;
    the live page and its WebSocket are routed (a 404 at the edge before)."""
    from gateway.server.settings import Settings

    r, _, _, env = gateway(overlay)
    settings = Settings.model_validate(
        {k.removeprefix("GATEWAY_").lower(): v for k, v in env.items() if k.startswith("GATEWAY_")}
    )
    for path in ("/live", "/api/live"):
        assert ingress_routes(r, path), path
    routes = {
        "/api/detect": (settings.max_upload_mb, 120.0),
        "/api/live": (settings.live_max_frame_kb / 1024, settings.live_max_session_s),
    }
    if overlay in JOBS_OVERLAYS:
        routes["/api/jobs"] = (settings.jobs_max_mb, settings.jobs_upload_timeout_s)
    for path, (megabytes, seconds) in routes.items():
        applies = edge_rule_for(r, path)
        if overlay in GATEWAY_API_OVERLAYS:  # body limits: the implementation's policies
            assert quantity(applies["request"].removesuffix("s")) >= seconds, path
            continue
        for key in (
            "nginx.ingress.kubernetes.io/proxy-body-size",
            "nginx.org/client-max-body-size",
        ):
            # nginx's m and the gateway's MB (settings.MB) are both 2**20 bytes.
            assert quantity(applies[key].replace("m", "Mi")) > megabytes * 2**20, (path, key)
        if path == "/api/live":  # a WebSocket: frames keep reading; F5 NGINX needs the name
            assert "gateway" in applies["nginx.org/websocket-services"].split(",")
            continue
        for key in (
            "nginx.ingress.kubernetes.io/proxy-read-timeout",
            "nginx.org/proxy-read-timeout",
        ):
            assert float(applies[key].removesuffix("s")) >= seconds, (path, key)
        # The jobs page polls each job once a second (static/jobs.js).
        assert int(applies["nginx.ingress.kubernetes.io/limit-rpm"]) >= (
            120 if path == "/api/jobs" else 10
        )


def test_the_per_key_rate_limit_is_on_and_fits_the_pages(overlay: str) -> None:
    """gateway/README.md describes a per-key limit behind the edge: on, and above two live
    sessions at the live page's highest frame rate (every frame counts) plus job polling."""
    from gateway.server.settings import Settings

    _, _, _, env = gateway(overlay)
    per_minute = float(env["GATEWAY_RATE_LIMIT_PER_MINUTE"])
    live_js = (ROOT / "gateway" / "server" / "static" / "live.js").read_text()
    [page_fps] = re.findall(r"const fps = Math\.min\((\d+),", live_js)
    sessions = Settings.model_fields["live_max_sessions_per_client"].default
    assert per_minute >= sessions * int(page_fps) * 60 + 60


# -- autoscaling --------------------------------------------------------------------------


def adapter_rules() -> list[Manifest]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def test_hpas_target_the_deployments(overlay: str) -> None:
    r = rendering(overlay)
    hpas = {h["metadata"]["name"]: h for h in r.all("HorizontalPodAutoscaler")}
    jobs = {"jobs-worker"} if overlay in JOBS_OVERLAYS else set()
    assert set(hpas) == {"gateway", "triton"} | jobs
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            "apps/v1",
            "Deployment",
            name,
        )
        # The HPA owns the count: `kubectl apply` must not reset it.
        assert "replicas" not in r.get("Deployment", name)["spec"]
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    [metric] = hpas["gateway"]["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    _, _, container, _ = gateway(overlay)
    assert quantity(container["resources"]["requests"]["cpu"]) > 0


def test_triton_hpa_scales_on_the_adapters_queue_time_metric(overlay: str) -> None:
    r = rendering(overlay)
    metrics = r.get("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    [metric] = [m for m in metrics if m["pods"]["metric"]["name"] == "triton_queue_time_us"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert quantity(metric["pods"]["target"]["averageValue"]) > 0
    [rule] = [rule for rule in adapter_rules() if rule["name"]["as"] == name]
    assert re.match(r"\^?nv_inference_queue_duration_us\$?$", rule["name"]["matches"])
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"]
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert re.search(counter + r"\{<<\.LabelMatchers>>", query), counter
    assert "by (<<.GroupBy>>)" in query
    # The ensemble's own queue counter stays near zero: it must not dilute
    # (or stand in for) the members' queue times.
    _, _, _, f = triton(overlay)
    assert f'model!="{one(f["--load-model"])}"' in query
    # rate() needs two scrapes inside its window.
    window = quantity(re.search(r"\[(\d+)m\]", query).group(1)) * 60
    monitor = r.get("ServiceMonitor", "triton")
    interval = monitor["spec"]["endpoints"][0]["interval"]
    assert window >= 2 * quantity(interval.removesuffix("s"))
    # The adapter asks the Prometheus that the network policy lets scrape.
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert f".{MONITORING}.svc" in values["prometheus"]["url"]


# -- operations ---------------------------------------------------------------------------


def test_pdbs_select_existing_pods_and_never_block_a_drain(overlay: str) -> None:
    r = rendering(overlay)
    pdbs = r.all("PodDisruptionBudget")
    jobs = {"jobs-worker"} if overlay in JOBS_OVERLAYS else set()
    assert {p["metadata"]["name"] for p in pdbs} == {"gateway", "triton"} | jobs
    for pdb in pdbs:
        [workload] = r.selected(pdb["spec"]["selector"], pdb["metadata"]["namespace"])
        assert workload.name == pdb["metadata"]["name"]
        assert "minAvailable" not in pdb["spec"] and int(pdb["spec"]["maxUnavailable"]) >= 1


def test_service_monitors_scrape_named_metrics_ports(overlay: str) -> None:
    r = rendering(overlay)
    expected = {
        "triton": int(one(triton(overlay)[3]["--metrics-port"])),
        "gateway": int(gateway(overlay)[3]["GATEWAY_PORT"]),
    }
    if overlay in JOBS_OVERLAYS:  # components/jobs: each worker's own /metrics
        worker = r.workload("jobs-worker").container("worker")
        expected["jobs-worker"] = int(r.env(worker)["GATEWAY_JOBS_METRICS_PORT"])
    # The DCGM exporter's (components/dcgm-monitoring) is in another namespace.
    monitors = [m for m in r.all("ServiceMonitor") if "namespaceSelector" not in m["spec"]]
    assert {m["metadata"]["name"] for m in monitors} == set(expected)
    for monitor in monitors:
        namespace = monitor["metadata"]["namespace"]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        services = [
            s
            for s in r.all("Service")
            if s["metadata"]["namespace"] == namespace
            and selector_matches(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        [service] = services
        [workload] = r.backends(service)
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            [port] = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
            target = container_port(workload.container(), port["targetPort"])
            assert target == expected[monitor["metadata"]["name"]]
            # ...and the network policy lets Prometheus in to scrape it.
            assert r.ingress_allowed(workload, target, {}, MONITORING)


def test_services_select_pods_and_target_their_ports(overlay: str) -> None:
    r = rendering(overlay)
    for service in r.all("Service"):
        [workload] = r.backends(service)
        for port in service["spec"]["ports"]:
            assert port["name"]
            assert container_port(workload.container(), port["targetPort"]) == port["port"]


def test_pods_spread_over_nodes_and_zones(overlay: str) -> None:
    r = rendering(overlay)
    for workload in r.workloads():
        constraints = workload.spec["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for c in constraints:
            assert selector_matches(c["labelSelector"], workload.labels), workload.name
            assert r.selected(c["labelSelector"], workload.namespace) == [workload]


def test_selector_helpers_can_say_no(overlay: str) -> None:
    """The checks above depend on these answering False when they should."""
    r = rendering(overlay)
    triton_pod = r.workload("triton")
    assert not selector_matches({"matchLabels": {"app.kubernetes.io/name": "x"}}, triton_pod.labels)
    assert not r.selected({"matchLabels": {"app.kubernetes.io/name": "tritn"}}, "deepfake")
    with pytest.raises(KeyError):
        container_port(triton_pod.container(), "grcp")
    assert expand("--x=$(NOPE)", {}) == "--x=$(NOPE)"
    assert expand("--x=$(A)/$$(A)", {"A": "1"}) == "--x=1/$(A)"


# -- what a GPU cluster needs (issue: rollouts, drains, sizing) ---------------------------


def test_rollout_deadline_exceeds_the_startup_budget(overlay: str) -> None:
    """A cold start (TensorRT builds) must not be declared ProgressDeadlineExceeded
    while the startup probe still allows it; nor must `rollout status` in the README."""
    r = rendering(overlay)
    for workload in r.workloads():
        deadline = workload.deployment["spec"].get("progressDeadlineSeconds", 600)
        for container in workload.containers():
            startup = probe_budget_s(container["startupProbe"])
            ready = probe_budget_s(container["readinessProbe"])
            assert deadline > startup + ready, (workload.name, deadline, startup)
    readme = (ROOT / "deploy" / "README.md").read_text()
    waits = [
        int(m) * 60 for m in re.findall(r"rollout status deploy/triton --timeout=(\d+)m", readme)
    ]
    deadline = r.workload("triton").deployment["spec"]["progressDeadlineSeconds"]
    assert waits and all(w >= deadline for w in waits)


def test_disk_volumes_fit_the_ephemeral_storage_limit(overlay: str) -> None:
    """Disk-backed emptyDirs count against the pod's ephemeral storage: their
    total must stay under the limit, or filling them evicts the whole pod.
    Memory-backed ones count against memory."""
    for workload in rendering(overlay).workloads():
        [container] = workload.spec["containers"]
        limits = container["resources"]["limits"]
        disk = memory = 0.0
        for volume in workload.spec["volumes"]:
            empty = volume.get("emptyDir")
            if empty is None:
                continue
            assert "sizeLimit" in empty, (workload.name, volume["name"])
            if empty.get("medium") == "Memory":
                memory += quantity(empty["sizeLimit"])
            else:
                disk += quantity(empty["sizeLimit"])
        assert disk < quantity(limits["ephemeral-storage"]), (workload.name, disk)
        assert memory < quantity(limits["memory"]), (workload.name, memory)


def test_gpu_rollouts_and_drains_need_no_spare_gpu_and_keep_one_pod(overlay: str) -> None:
    r = rendering(overlay)
    triton_pod = r.workload("triton")
    rolling = triton_pod.deployment["spec"]["strategy"]["rollingUpdate"]
    hpa = r.get("HorizontalPodAutoscaler", "triton")["spec"]
    pdb = r.get("PodDisruptionBudget", "triton")["spec"]
    if overlay in GPU_OVERLAYS:
        # No surge pod waiting forever for a GPU that is not there...
        assert int(rolling["maxSurge"]) == 0 and int(rolling["maxUnavailable"]) == 1
        # ...and a pod replaced, drained or crashed leaves another serving.
        assert hpa["minReplicas"] >= 2 > int(pdb["maxUnavailable"])
        assert int(rolling["maxUnavailable"]) < hpa["minReplicas"]
    else:
        # CPUs can surge: never below the current capacity.
        assert int(rolling["maxUnavailable"]) == 0 and int(rolling["maxSurge"]) >= 1
    # Scale-ups one pod at a time, no faster than a new pod can start serving
    # (GPU: a node, a 15 GB image, engines).
    [policy] = hpa["behavior"]["scaleUp"]["policies"]
    assert policy == {"type": "Pods", "value": 1, "periodSeconds": policy["periodSeconds"]}
    assert policy["periodSeconds"] >= (600 if overlay in GPU_OVERLAYS else 180)


def test_cpu_rate_limiter_follows_the_pods_cpu_request(overlay: str) -> None:
    """--rate-limit-resource=cpu:N: N is the pod's own CPU request (read by the
    kubelet) and a member execution holds one unit per thread it runs, so the
    members running at once never have more threads than the CPUs requested."""
    r, _, container, f = triton(overlay)
    if overlay != "cpu":
        assert "--rate-limit-resource" not in f
        return
    assert one(f["--rate-limit"]) == "execution_count"
    [resource] = f["--rate-limit-resource"]
    name, count = resource.split(":")
    threads = []
    for member in MEMBERS:
        config = (REPOSITORY / "members" / member / "configs" / "cpu.pbtxt").read_text()
        [n] = re.findall(r'"intra_op_thread_count" value: \{ string_value: "(\d+)" \}', config)
        # a member holds one unit (a core) per thread it runs
        assert re.search(rf'resources \[\{{ name: "{name}" global: true count: {n} \}}\]', config)
        threads.append(int(n))
    request = quantity(container["resources"]["requests"]["cpu"])
    assert int(count) == math.ceil(request) >= max(threads)
    # The rendering's answer is the kubelet's: resize the request, N follows.
    resized = copy.deepcopy(container)
    resized["resources"]["requests"]["cpu"] = "6500m"
    assert flags(r.args(resized))["--rate-limit-resource"] == [f"{name}:7"]


# -- security: secrets, admin protocols, egress -------------------------------------------


def test_api_keys_come_only_from_a_secret(overlay: str) -> None:
    from gateway.server.settings import Settings

    r, _, container, _ = gateway(overlay)
    variable = f"{Settings.model_config['env_prefix']}API_KEYS".upper()
    # Credentials, not settings about them (GATEWAY_JOBS_MAX_ACTIVE_PER_KEY is a limit).
    credential = re.compile(r"API_KEYS?$|SECRET|PASSWORD|TOKEN$")
    for config in r.all("ConfigMap"):
        assert not [k for k in config.get("data", {}) if credential.search(k)], config["metadata"]
    assert "API_KEYS" not in (ROOT / "deploy/k8s/base/gateway/gateway.env").read_text()
    refs = [s for s in container["envFrom"] if "secretRef" in s]
    assert [s["secretRef"] for s in refs] == [{"name": "gateway-api-keys"}]  # required
    # Only the gateway checks keys: no other pod holds them (the jobs' workers
    # reach the internet for webhooks and parse untrusted uploads).
    for workload, other in iter_containers(r):
        if workload.name != "gateway":
            assert "gateway-api-keys" not in [s["name"] for s in r.secret_refs(other)]
            assert variable not in r.env(other), workload.name
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert f"secret generic gateway-api-keys --from-literal={variable}=" in readme
    assert "Rotating API keys" in readme


def test_neither_the_image_nor_an_overlay_runs_the_api_open(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without keys every caller is one tenant (sees, cancels and fills every job). The
    image and every overlay listen on 0.0.0.0: the keys' Secret is required, an empty
    value stops the gateway at start, and nothing turns GATEWAY_ALLOW_OPEN on."""
    from gateway.server.serve import open_refusal
    from gateway.server.settings import Settings

    r, _, container, env = gateway(overlay)
    [keys] = [s["secretRef"] for s in container["envFrom"] if "secretRef" in s]
    assert not keys.get("optional", False)
    image = env_of(GATEWAY_DOCKERFILE)
    for _, each in iter_containers(r):
        assert "GATEWAY_ALLOW_OPEN" not in r.env(each)
    assert "GATEWAY_ALLOW_OPEN" not in image and "GATEWAY_API_KEYS" not in image
    for variables in (env, image):
        for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
            monkeypatch.delenv(key)
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("GATEWAY_API_KEYS", "")  # a Secret with an empty value
        settings = Settings(_env_file=None)
        assert not settings.api_keys and not settings.allow_open
        assert open_refusal(settings), variables["GATEWAY_HOST"]


def restricted(values: list[str]) -> tuple[set[str], str, str]:
    """--*-restricted-*=<protocols>:<header>=<value> -> (protocols, header, value)."""
    [value] = values
    protocols, _, header = value.partition(":")
    key, _, secret = header.partition("=")
    return set(protocols.split(",")), key, secret


def test_triton_admin_protocols_need_a_secret_header(overlay: str) -> None:
    """Explicit model control left open is code execution (Triton's deploy
    guide): loading models, the repository, shared memory, statistics, trace
    and log settings need a header whose value comes from a required Secret;
    what the gateway uses stays open."""
    _, _, container, f = triton(overlay)
    grpc = restricted(f["--grpc-restricted-protocol"])
    http = restricted(f["--http-restricted-api"])
    assert grpc == http
    protocols, header, value = grpc
    assert protocols == ADMIN_PROTOCOLS and not protocols & GATEWAY_PROTOCOLS
    assert header == "triton-admin-key"
    [source] = [v for v in container["env"] if v["name"] == "TRITON_ADMIN_KEY"]
    ref = source["valueFrom"]["secretKeyRef"]
    assert value == f"<secret {ref['name']}:{ref['key']}>"
    assert not ref.get("optional", False)  # never start with a literal "$(TRITON_ADMIN_KEY)"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert f"secret generic {ref['name']} --from-literal={ref['key']}=" in readme


def test_egress_is_triton_and_dns_for_the_gateway_and_dns_for_triton(overlay: str) -> None:
    r = rendering(overlay)
    gw, tr = r.workload("gateway"), r.workload("triton")
    ns = gw.namespace
    grpc = container_port(tr.container(), "grpc")
    http = container_port(tr.container(), "http")
    dns_labels, dns_ns = DNS
    for source in (gw, tr):
        for protocol in ("UDP", "TCP"):
            assert r.egress_allowed(source, 53, dns_labels, dns_ns, protocol), source.name
        assert not r.egress_allowed(source, 53, dns_labels, "default", "UDP")
        assert not r.egress_allowed(source, 80, {}, "default"), source.name
        assert not r.egress_allowed(source, 6443, {"component": "kube-apiserver"}, "kube-system")
    # The gateway (FFmpeg parses hostile uploads there): Triton's gRPC only.
    assert r.egress_allowed(gw, grpc, tr.labels, ns, to=tr)
    assert not r.egress_allowed(gw, http, tr.labels, ns, to=tr)
    assert not r.egress_allowed(gw, 443, {}, "default")
    assert not r.egress_allowed(gw, grpc, tr.labels, "default")
    # Triton calls nobody in the cluster; object storage only for a remote repository.
    assert not r.egress_allowed(tr, 8080, gw.labels, ns, to=gw)
    storage = "52.216.8.0"  # an S3 address: outside the cluster
    assert r.egress_allowed(tr, 443, {}, "", to_ip=storage) == (overlay in REMOTE_OVERLAYS)
    # Stream URLs: public addresses only, only with components/stream-egress.
    for port in (80, 443, 554, 1935):
        assert r.egress_allowed(gw, port, {}, "", to_ip=storage) == (overlay in STREAM_OVERLAYS)
    for private in ("10.1.2.3", "169.254.169.254", "192.168.1.1", "127.0.0.1"):
        assert not r.egress_allowed(gw, 443, {}, "", to_ip=private), private
    assert not r.egress_allowed(tr, 80, {}, "", to_ip=storage)
    # Spans to the collector only where tracing is on.
    for source in (gw, tr):
        assert r.egress_allowed(source, 4318, {}, MONITORING) == (overlay in TRACED_OVERLAYS)


def test_egress_evaluation_is_not_vacuous(overlay: str) -> None:
    r = rendering(overlay)
    bare = Rendering([o for o in r.objects if o["kind"] != "NetworkPolicy"])
    assert bare.egress_allowed(bare.workload("gateway"), 443, {}, "default")
    assert not r.egress_allowed(r.workload("gateway"), 443, {}, "default")


# -- observability ------------------------------------------------------------------------

ALERTS = {
    "DeepfakeGatewayErrorRate": "gateway_requests_total",
    "TritonQueueTimeHigh": "nv_inference_queue_duration_us",
    "DeepfakePodsUnready": "kube_deployment_status_replicas_unavailable",
    "DeepfakeNoPodAvailable": "kube_deployment_status_replicas_available",
    "DeepfakeRolloutStuck": "kube_deployment_status_condition",
    "DeepfakeAutoscalerAtMaximum": "kube_horizontalpodautoscaler_spec_max_replicas",
    "DeepfakeScrapeTargetDown": "up",
    "TritonGPUMemoryHigh": "nv_gpu_memory_used_bytes",
}
# components/jobs' alerts (Redis, the queue, the workers' own metrics) and
# components/dcgm-monitoring's (GPU faults).
JOBS_ALERTS = {
    "DeepfakeJobsRedisDown": "kube_deployment_status_replicas_available",
    "DeepfakeJobsNoWorker": "gateway_jobs_queued",
    "DeepfakeJobsBacklog": "gateway_jobs_queued",
    "DeepfakeJobsWorkersDown": "gateway_jobs_worker_up",
    "DeepfakeJobsStalled": "gateway_jobs_items_running",
    "DeepfakeJobsBacklogGrowing": "gateway_jobs_queued",
    "DeepfakeJobsItemsFailing": "gateway_jobs_items_total",
}
DCGM_ALERTS = {"DeepfakeGPUXidError": "DCGM_FI_DEV_XID_ERRORS"}
DCGM_OVERLAYS = ("gpu-cluster",)
# kube-state-metrics' names (its documented metrics) and DCGM's (dcgm-exporter's defaults).
KUBE_METRICS = {
    "kube_deployment_status_replicas_unavailable",
    "kube_deployment_status_replicas_available",
    "kube_deployment_status_replicas_updated",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_condition",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_pod_status_ready",
}
DCGM_METRICS = {"DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ROW_REMAP_FAILURE"}


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression reads (gateway_*, nv_*, kube_*, DCGM_*)."""
    pattern = r"\b((?:gateway|nv|kube|DCGM)_[A-Za-z0-9_]+|up)\b(?=\s*[{\[)]|\s*$)"
    return set(re.findall(pattern, expr))


def rendered_queries(r: Rendering) -> list[str]:
    """Every PromQL expression of the alerts and the dashboard."""
    exprs = [
        x["expr"]
        for rule in r.all("PrometheusRule")
        for g in rule["spec"]["groups"]
        for x in g["rules"]
    ]
    dashboard = json.loads(
        r.get("ConfigMap", "grafana-dashboard-deepfake-detect")["data"]["deepfake-detect.json"]
    )
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs


def rendered_alerts(r: Rendering) -> dict[str, Manifest]:
    return {
        x["alert"]: x
        for rule in r.all("PrometheusRule")
        for g in rule["spec"]["groups"]
        for x in g["rules"]
        if "alert" in x
    }


def test_alerts_cover_errors_queues_unready_pods_and_gpu_memory(overlay: str) -> None:
    r = rendering(overlay)
    for rule in r.all("PrometheusRule"):
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = rendered_alerts(r)
    expected = dict(ALERTS)
    expected |= JOBS_ALERTS if overlay in JOBS_OVERLAYS else {}
    expected |= DCGM_ALERTS if overlay in DCGM_OVERLAYS else {}
    assert set(expected) <= set(alerts)
    for name, metric in expected.items():
        assert metric in metric_names(alerts[name]["expr"]), name
    if overlay not in JOBS_OVERLAYS:
        assert not set(JOBS_ALERTS) & set(alerts)
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and quantity(alert["for"].removesuffix("m")) > 0
        # Per namespace, whichever kustomize deploys to: no namespace written in a rule.
        assert "namespace=" not in alert["expr"].replace(" ", ""), alert["alert"]
        assert re.search(r"\bby \([^)]*\bnamespace\b", alert["expr"]), alert["alert"]
    # An unready pod alerts only after the slowest start the startup probe allows.
    startup = probe_budget_s(r.workload("triton").container()["startupProbe"])
    assert quantity(alerts["DeepfakePodsUnready"]["for"].removesuffix("m")) * 60 > startup
    # The dashboard picks the namespace (a variable), never names one.
    dashboard = json.loads(
        r.get("ConfigMap", "grafana-dashboard-deepfake-detect")["data"]["deepfake-detect.json"]
    )
    assert "namespace" in {v["name"] for v in dashboard["templating"]["list"]}
    for expr in rendered_queries(r):
        assert set(re.findall(r'namespace="([^"]+)"', expr)) <= {"$namespace"}, expr


def test_critical_alerts_stay_quiet_through_a_gpu_rollout(overlay: str) -> None:
    """A GPU rollout replaces one Triton pod at a time, each unavailable while it builds
    its engines (up to the startup budget): routine, not an incident. A critical alert
    on Deployments is an outage (no pod available: a rollout keeps one, maxUnavailable 1
    of at least 2) or a rollout past its deadline; pods merely unavailable warn, and
    only when no rollout is under way (every replica updated)."""
    r = rendering(overlay)
    for alert in rendered_alerts(r).values():
        names = metric_names(alert["expr"])
        if alert["labels"]["severity"] != "critical" or not names & KUBE_METRICS:
            continue
        expr = alert["expr"].replace(" ", "").replace("\n", "")
        outage = "kube_deployment_status_replicas_available" in names and ")==0" in expr
        stuck = 'condition="Progressing",status="false"' in expr
        assert outage or stuck, alert["alert"]
        assert "kube_deployment_status_replicas_unavailable" not in names, alert["alert"]
    unready = rendered_alerts(r)["DeepfakePodsUnready"]
    assert unready["labels"]["severity"] == "warning"
    assert re.search(
        r"unless on \(namespace, deployment\) \(\s*kube_deployment_status_replicas_updated"
        r" < kube_deployment_spec_replicas",
        unready["expr"],
    )
    # The rollout that keeps one pod: at least 2 replicas, one unavailable at a time.
    if overlay in GPU_OVERLAYS:
        strategy = r.workload("triton").deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 1
        assert r.get("HorizontalPodAutoscaler", "triton")["spec"]["minReplicas"] >= 2


def test_dashboard_and_alerts_read_metrics_that_exist(overlay: str) -> None:
    """gateway_* against the gateway's own registry; nv_* against the names
    Triton 2.51 exports (checked live in tests/test_deploy_serving.py)."""
    from prometheus_client import REGISTRY

    import gateway.server.metrics  # noqa: F401  (registers the gateway's metrics)

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    gateway_names = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("gateway_")
        for suffix in suffixes.get(family.type, [""])
    }
    assert "gateway_requests_total" in gateway_names
    used = set().union(*(metric_names(e) for e in rendered_queries(rendering(overlay))))
    assert {m for m in used if m.startswith("gateway_")} <= gateway_names
    assert {m for m in used if m.startswith("nv_")} <= TRITON_METRICS
    assert {m for m in used if m.startswith("kube_")} <= KUBE_METRICS
    assert {m for m in used if m.startswith("DCGM_")} <= DCGM_METRICS


def test_grafana_loads_the_dashboard(overlay: str) -> None:
    config = rendering(overlay).get("ConfigMap", "grafana-dashboard-deepfake-detect")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(name, text)] = config["data"].items()
    dashboard = json.loads(text)
    assert name.endswith(".json") and dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    prefixes = {
        m.split("_")[0] for e in rendered_queries(rendering(overlay)) for m in metric_names(e)
    }
    assert {"gateway", "nv"} <= prefixes


def test_dcgm_is_scraped_where_the_gpu_operator_runs_it(overlay: str) -> None:
    monitors = [
        m for m in rendering(overlay).all("ServiceMonitor") if "namespaceSelector" in m["spec"]
    ]
    if overlay != "gpu-cluster":
        assert monitors == []
        return
    [dcgm] = monitors
    assert dcgm["spec"]["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
    assert dcgm["spec"]["selector"] == {"matchLabels": {"app": "nvidia-dcgm-exporter"}}
    assert dcgm["spec"]["endpoints"][0]["port"] == "gpu-metrics"


def test_triton_hpa_also_scales_on_pending_requests(overlay: str) -> None:
    r = rendering(overlay)
    metrics = r.get("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    names = {m["pods"]["metric"]["name"] for m in metrics}
    assert names == {"triton_pending_requests", "triton_queue_time_us"}
    [rule] = [x for x in adapter_rules() if x["name"]["as"] == "triton_pending_requests"]
    assert rule["seriesQuery"].startswith("nv_inference_pending_request_count{")
    assert "nv_inference_pending_request_count{<<.LabelMatchers>>" in rule["metricsQuery"]
    assert "rate(" not in rule["metricsQuery"]  # a gauge: no window to wait for
    for rule in adapter_rules():
        assert set(metric_names(rule["metricsQuery"])) <= TRITON_METRICS


def test_tracing_is_off_unless_the_component_is_added(overlay: str) -> None:
    r, _, _, env = gateway(overlay)
    _, _, _, f = triton(overlay)
    traced = overlay in TRACED_OVERLAYS
    assert bool(env.get("GATEWAY_OTLP_TRACES_ENDPOINT")) == traced
    trace = f.get("--trace-config", [])
    assert ("mode=opentelemetry" in trace) == traced
    if traced:
        [url] = [v.split("=", 1)[1] for v in trace if v.startswith("opentelemetry,url=")]
        assert url == env["GATEWAY_OTLP_TRACES_ENDPOINT"]  # one collector for both
        port = int(re.search(r":(\d+)/", url).group(1))
        for source in (r.workload("gateway"), r.workload("triton")):
            assert r.egress_allowed(source, port, {}, url.split(".")[1])
