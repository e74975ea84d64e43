"""The jobs component (deploy/k8s/components/jobs) hangs together in every overlay: workers
run the gateway's image and settings against the Redis Service, share the uploads volume
with the gateway, may reach Triton and Redis (and nobody else may reach Redis), and their
autoscaler reads the queue length the gateway exports through the adapter's rule."""

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from deploy.manifests import container_port, quantity
from gateway.jobs.api import QUEUED
from tests.test_deploy_invariants import ADAPTER_VALUES, OVERLAYS, ROOT, rendering

ROOT_BASE = "deploy/k8s/base/kustomization.yaml"
COMPONENT = "deploy/k8s/components/jobs/kustomization.yaml"

pytestmark = pytest.mark.parametrize("overlay", OVERLAYS)


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_the_component_uses_the_bases_namespace_and_labels(overlay: str) -> None:
    base, component = load(ROOT_BASE), load(COMPONENT)
    assert component["namespace"] == base["namespace"]
    assert component["labels"] == base["labels"]
    kustomization = load(f"deploy/k8s/overlays/{overlay}/kustomization.yaml")
    assert "../../components/jobs" in kustomization["components"]


def test_workers_run_the_gateways_image_and_settings(overlay: str) -> None:
    r = rendering(overlay)
    gateway, worker = r.workload("gateway"), r.workload("jobs-worker")
    g, w = gateway.container("gateway"), worker.container("worker")
    assert w["image"] == g["image"]
    assert w["command"] == ["python", "-m", "gateway.worker"]
    assert w["envFrom"] == g["envFrom"]
    genv, wenv = r.env(g), r.env(w)
    assert int(genv["GATEWAY_JOBS_WORKERS"]) == 0  # the gateway only queues
    assert int(wenv["GATEWAY_JOBS_WORKERS"]) >= 1
    assert {k: v for k, v in wenv.items() if k != "GATEWAY_JOBS_WORKERS"} == {
        k: v for k, v in genv.items() if k != "GATEWAY_JOBS_WORKERS"
    }
    # SIGTERM lets the items in hand finish before the pod is killed.
    assert worker.spec["terminationGracePeriodSeconds"] >= float(wenv["GATEWAY_SHUTDOWN_TIMEOUT_S"])
    for container in (g, w):  # both sign webhooks with the same optional Secret
        [secret] = [e for e in container["env"] if e["name"] == "GATEWAY_JOBS_WEBHOOK_SECRET"]
        assert secret["valueFrom"]["secretKeyRef"]["name"] == "gateway-jobs"


def test_gateway_and_workers_share_the_uploads_volume(overlay: str) -> None:
    r = rendering(overlay)
    gateway, worker = r.workload("gateway"), r.workload("jobs-worker")
    jobs_dir = r.env(gateway.container("gateway"))["GATEWAY_JOBS_DIR"]
    claims = []
    for workload, name in ((gateway, "gateway"), (worker, "worker")):
        volume = workload.mount(workload.container(name), str(PurePosixPath(jobs_dir)))
        assert volume is not None, f"{name}: {jobs_dir} is not a volume"
        claims.append(volume["persistentVolumeClaim"]["claimName"])
    assert claims[0] == claims[1]
    claim = r.get("PersistentVolumeClaim", claims[0])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on any node
    max_mb = int(r.env(gateway.container("gateway"))["GATEWAY_JOBS_MAX_MB"])
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= quantity(f"{max_mb}Mi")


def test_the_queue_url_is_the_redis_service(overlay: str) -> None:
    r = rendering(overlay)
    url = urlsplit(r.env(r.workload("gateway").container("gateway"))["GATEWAY_JOBS_REDIS_URL"])
    assert url.scheme == "redis"
    service = r.get("Service", url.hostname)
    [backend] = r.backends(service)
    [port] = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert container_port(backend.container("redis"), port["targetPort"]) == url.port
    args = backend.container("redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"  # queued items survive a restart
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # never drop an item
    data = backend.mount(backend.container("redis"), args[args.index("--dir") + 1])
    assert "persistentVolumeClaim" in data


def test_only_the_gateway_and_workers_reach_redis_and_workers_reach_triton(overlay: str) -> None:
    r = rendering(overlay)
    redis, triton = r.workload("redis"), r.workload("triton")
    gateway, worker = r.workload("gateway"), r.workload("jobs-worker")
    ns = redis.namespace
    port = container_port(redis.container("redis"), "redis")
    assert r.ingress_allowed(redis, port, gateway.labels, ns)
    assert r.ingress_allowed(redis, port, worker.labels, ns)
    assert not r.ingress_allowed(redis, port, triton.labels, ns)
    assert not r.ingress_allowed(redis, port, worker.labels, "default")
    assert not r.ingress_allowed(redis, port, {}, "ingress-nginx")
    grpc = container_port(triton.container("triton"), "grpc")
    assert r.ingress_allowed(triton, grpc, worker.labels, ns)
    assert not r.ingress_allowed(
        triton, container_port(triton.container(), "http"), worker.labels, ns
    )


def test_workers_scale_on_the_queue_length_the_gateway_exports(overlay: str) -> None:
    r = rendering(overlay)
    [metric] = r.get("HorizontalPodAutoscaler", "jobs-worker")["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    assert quantity(metric["external"]["target"]["averageValue"]) > 0
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["external"]
    [rule] = [rule for rule in rules if rule["name"]["as"] == name]
    exported = QUEUED._name  # the gauge gateway/jobs/api.py serves at /metrics
    assert re.match(rf"\^?{exported}\$?$", rule["name"]["matches"])
    assert rule["seriesQuery"].startswith(exported + "{")
    assert f"{exported}{{<<.LabelMatchers>>}}" in rule["metricsQuery"]
