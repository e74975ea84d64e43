"""The rendered overlays hang together as a cluster would need them to: probes
and Services point at the ports Triton and the gateway listen on, selectors
pick the pods they are meant to, the network policy lets in exactly the
intended traffic, autoscaling reads a metric the adapter serves, and every
container is locked down.
"""

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import validate
from deploy.dockerfile import args_of, env_of, final_user, instruction
from deploy.manifests import (
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
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
OVERLAYS = ("cpu", "gpu", "gpu-remote")
REPOSITORY = ROOT / "model_repository"
ADAPTER_VALUES = ROOT / "deploy" / "monitoring" / "prometheus-adapter-values.yaml"
GPU_OVERLAYS = ("gpu", "gpu-remote")
MONITORING = "monitoring"
INGRESS_NAMESPACE = "ingress-nginx"


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
    assert (REPOSITORY / profile / "deepfake_ensemble" / "config.pbtxt").is_file()
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
    profile = r.env(container)["MODEL_PROFILE"]
    members = ensemble_members(profile)
    assert members
    gpu_limit = container["resources"]["limits"].get("nvidia.com/gpu")
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
        assert int(gpu_limit) == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in workload.spec["tolerations"])
        for member in members:
            config = (REPOSITORY / "members" / member / "config.pbtxt").read_text()
            assert "KIND_GPU" in config and '"tensorrt"' in config, member
            assert re.search(r'"precision_mode"\s+value:\s*"FP16"', config), member


def test_tensorrt_engine_cache_is_a_writable_volume(overlay: str) -> None:
    _, workload, container, _ = triton(overlay)
    if overlay not in GPU_OVERLAYS:  # the CPU configs use no TensorRT
        assert workload.mount(container, "/trt-cache") is None
        return
    for member in ("meso4", "mesoinception4", "xception", "efficientnet_b7"):
        config = (REPOSITORY / "members" / member / "config.pbtxt").read_text()
        [path] = re.findall(r'"trt_engine_cache_path"\s+value:\s*"([^"]+)"', config)
        cache = workload.mount(container, str(Path(path).parent))
        assert cache is not None and "emptyDir" in cache, member


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
    image_env = env_of(TRITON_DOCKERFILE)
    assert env["MODEL_PROFILE"] == args_of(TRITON_DOCKERFILE)["PROFILE"]
    if overlay == "gpu-remote":
        # Triton's own remote repositories, on the stock image it is built on.
        assert re.match(r"(s3|gs)://", env["MODEL_REPOSITORY"])
        assert container["image"] == TRITON_IMAGE == one(instruction(TRITON_DOCKERFILE, "FROM"))
    else:
        assert env["MODEL_REPOSITORY"] == image_env["MODEL_REPOSITORY"]
        assert container["image"].endswith("/triton:0.1.0")


# -- gateway ------------------------------------------------------------------------------


def test_gateway_settings_come_from_its_configmap(overlay: str) -> None:
    r, _, container, env = gateway(overlay)
    [source] = container["envFrom"]
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

    from gateway.settings import Settings

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
        "readinessProbe": "/readyz",
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
    assert len(containers) == 2
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
        for kind in ("cpu", "memory"):
            request, limit = resources["requests"][kind], resources["limits"][kind]
            assert 0 < quantity(request) <= quantity(limit), f"{where} {kind}"
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
    assert allowed({}, INGRESS_NAMESPACE, gateway_http, gateway_pod)
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
    [rule] = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/api", "Prefix")]
    backend = paths[0]["backend"]["service"]
    service = r.get("Service", backend["name"])
    assert [b.name for b in r.backends(service)] == ["gateway"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    assert container_port(container, port["targetPort"]) == int(env["GATEWAY_PORT"])
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


# -- autoscaling --------------------------------------------------------------------------


def adapter_rules() -> list[Manifest]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def test_hpas_target_the_deployments(overlay: str) -> None:
    r = rendering(overlay)
    hpas = {h["metadata"]["name"]: h for h in r.all("HorizontalPodAutoscaler")}
    assert set(hpas) == {"gateway", "triton"}
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
    [metric] = r.get("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
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
    assert {p["metadata"]["name"] for p in pdbs} == {"gateway", "triton"}
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
    monitors = r.all("ServiceMonitor")
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
