"""The jobs component (deploy/k8s/components/jobs) hangs together where an overlay adds it
(opt-in: JOBS_OVERLAYS; the others run the gateway without a queue or volume): workers
run the gateway's image and settings against the Redis Service, share the uploads volume
with the gateway, may reach Triton and Redis (and nobody else may reach Redis), and their
autoscaler reads the queue length the gateway exports through the adapter's rule. Out of
the namespace, only the workers may go, to public web addresses: they POST the webhooks."""

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from deploy import validate
from gateway.programs.worker import ALIVE_INTERVAL_S, alive_file, keep_alive
from gateway.server.metrics import JOBS_QUEUED as QUEUED
from gateway.server.settings import Settings
from tests.manifests import Rendering, container_port, expand, quantity, selector_matches
from tests.stack import free_port
from tests.test_deploy_invariants import (
    ADAPTER_VALUES,
    DNS,
    JOBS_OVERLAYS,
    OVERLAYS,
    ROOT,
    STREAM_OVERLAYS,
    rendering,
)

ROOT_BASE = "deploy/k8s/base/kustomization.yaml"
COMPONENT = "deploy/k8s/components/jobs/kustomization.yaml"

pytestmark = pytest.mark.parametrize("overlay", JOBS_OVERLAYS)


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_the_component_uses_the_bases_namespace_and_labels(overlay: str) -> None:
    base, component = load(ROOT_BASE), load(COMPONENT)
    assert component["namespace"] == base["namespace"]
    assert component["labels"] == base["labels"]
    kustomization = load(f"deploy/k8s/overlays/{overlay}/kustomization.yaml")
    assert "../../components/jobs" in kustomization["components"]
    # Opt-in: only the overlays that name it have it.
    for other in OVERLAYS:
        components = load(f"deploy/k8s/overlays/{other}/kustomization.yaml")["components"]
        assert ("../../components/jobs" in components) == (other in JOBS_OVERLAYS), other


def test_every_shared_claim_names_its_storage_class(overlay: str) -> None:
    """A ReadWriteMany claim left to the default class (block storage on most clusters)
    stays Pending, and with it every pod mounting it: the overlay names the class."""
    claims = rendering(overlay).all("PersistentVolumeClaim")
    shared = [c for c in claims if "ReadWriteMany" in c["spec"]["accessModes"]]
    assert {c["metadata"]["name"] for c in shared} >= {"job-uploads"}
    for claim in shared:
        assert claim["spec"].get("storageClassName"), claim["metadata"]["name"]
    assert "storageClassName" in (ROOT / "deploy" / "README.md").read_text()


def test_without_the_component_the_gateway_starts_with_jobs_off(
    overlay: str, tmp_path: Path
) -> None:
    """The overlays without jobs: no claim for the gateway to wait on, jobs off in its
    ConfigMap; and the gateway so configured starts with an unwritable jobs folder and
    answers /api/jobs with 404 jobs_disabled, writing nothing."""
    from tests.conftest import inprocess_gateway

    def jobs_enabled(r: Rendering) -> bool:
        env = r.env(r.workload("gateway").container("gateway"))
        return Settings.model_validate({"jobs_enabled": env["GATEWAY_JOBS_ENABLED"]}).jobs_enabled

    assert jobs_enabled(rendering(overlay))
    for other in set(OVERLAYS) - set(JOBS_OVERLAYS):
        r = rendering(other)
        assert not jobs_enabled(r), other
        assert not [
            c
            for c in r.all("PersistentVolumeClaim")
            if c["metadata"]["name"] in ("job-uploads", "redis-data")
        ], other
        volumes = r.workload("gateway").spec["volumes"]
        assert not [v for v in volumes if "persistentVolumeClaim" in v], other
    jobs_dir = tmp_path / "nowhere" / "jobs"
    (tmp_path / "nowhere").mkdir(mode=0o500)  # as the image's read-only root
    with inprocess_gateway(tmp_path, jobs_enabled=False, jobs_dir=jobs_dir) as g:
        answer = g.client.get("/api/jobs/abc", headers={"X-API-Key": "k"})
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "jobs_disabled"
        assert g.client.get("/healthz").status_code == 200
    assert not jobs_dir.exists()


def test_workers_run_the_gateways_image_and_settings(overlay: str) -> None:
    r = rendering(overlay)
    gateway, worker = r.workload("gateway"), r.workload("jobs-worker")
    g, w = gateway.container("gateway"), worker.container("worker")
    assert w["image"] == g["image"]
    assert w["command"] == ["python", "-m", "gateway.programs.worker"]
    # The same ConfigMap; the API keys stay with the gateway, the one pod that checks them.
    assert [e for e in w["envFrom"] if "configMapRef" in e] == [
        e for e in g["envFrom"] if "configMapRef" in e
    ]
    assert not [e for e in w["envFrom"] if "secretRef" in e]
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
    # full, it refuses writes before its container is OOM-killed (room for a rewrite's fork)
    maxmemory = quantity(args[args.index("--maxmemory") + 1].upper().replace("MB", "Mi"))
    limit = quantity(backend.container("redis")["resources"]["limits"]["memory"])
    assert 0 < maxmemory <= limit / 2
    data = backend.mount(backend.container("redis"), args[args.index("--dir") + 1])
    assert "persistentVolumeClaim" in data


REDIS_SECRET = "<secret jobs-redis:password>"  # Rendering.env's name for the Secret's value


def test_redis_wants_the_secrets_password_in_protected_mode(overlay: str) -> None:
    """Whoever reaches port 6379 without the password gets nothing; the gateway and the
    workers read it from the same required Secret as Redis."""
    r = rendering(overlay)
    redis = r.workload("redis").container("redis")
    args = r.args(redis)
    assert args[args.index("--requirepass") + 1] == REDIS_SECRET
    assert args[args.index("--protected-mode") + 1] == "yes"
    assert r.env(redis)["REDISCLI_AUTH"] == REDIS_SECRET  # the probes' redis-cli
    for workload, name in (("gateway", "gateway"), ("jobs-worker", "worker")):
        container = r.workload(workload).container(name)
        assert r.env(container)["GATEWAY_JOBS_REDIS_PASSWORD"] == REDIS_SECRET, workload
    for workload in ("redis", "gateway", "jobs-worker"):
        for container in r.workload(workload).containers():
            refs = [s for s in r.secret_refs(container) if s["name"] == "jobs-redis"]
            assert refs and not any(s.get("optional") for s in refs), workload  # required
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "create secret generic jobs-redis --from-literal=password=" in readme


@pytest.mark.stack
def test_the_rendered_redis_refuses_clients_without_the_password(
    overlay: str, tmp_path: Path
) -> None:
    """Debian's redis-server run with the rendered arguments (here: a free loopback port, a
    temporary --dir): no password, no command; the probes pass with REDISCLI_AUTH."""
    import redis as redis_client

    r = rendering(overlay)
    container = r.workload("redis").container("redis")
    password, port = "rendered-test-password", free_port()
    env = {k: v.replace(REDIS_SECRET, password) for k, v in r.env(container).items()}
    args = [expand(a, env) for a in container["args"]]
    args[args.index("--dir") + 1] = str(tmp_path)
    args += ["--port", str(port), "--bind", "127.0.0.1"]
    assert args[0] == "redis-server"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = container["readinessProbe"]["exec"]["command"]
        probe = [*probe[:-1], probe[-1].replace("redis-cli", f"redis-cli -p {port}")]
        with_auth = os.environ | {"REDISCLI_AUTH": env["REDISCLI_AUTH"]}
        deadline = time.monotonic() + 20
        while subprocess.run(probe, env=with_auth, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None, "redis not ready"
            time.sleep(0.1)
        without = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        assert subprocess.run(probe, env=without, capture_output=True).returncode != 0
        with pytest.raises(redis_client.AuthenticationError):
            redis_client.Redis(port=port).lpush("huey.redis.deepfakejobs", b"x")
        assert redis_client.Redis(port=port, password=password).ping()
    finally:
        process.terminate()
        process.wait(10)


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
    exported = QUEUED._name  # the gauge the gateway (and each worker) serves at /metrics
    assert re.match(rf"\^?{exported}\$?$", rule["name"]["matches"])
    assert rule["seriesQuery"].startswith(exported + "{")
    assert f"{exported}{{<<.LabelMatchers>>}}" in rule["metricsQuery"]


PUBLIC = ("93.184.215.14", "2606:4700::6810:84e5")  # a web host's v4 and v6 addresses
INTERNAL = (
    "10.96.0.1",  # a Service
    "172.20.3.4",
    "192.168.1.10",
    "100.64.0.7",  # carrier-grade NAT, used for pods by some CNIs
    "169.254.169.254",  # the cloud metadata endpoint
    "127.0.0.1",
    "fd00::1",
    "fe80::1",
)


def test_egress_of_the_jobs_pods(overlay: str) -> None:
    """The workers (which send the webhooks: the gateway runs no huey tasks,
    GATEWAY_JOBS_WORKERS=0) reach Triton's gRPC, Redis, DNS and public web hosts;
    the gateway reaches Redis but still no outside host; Redis calls nobody."""
    r = rendering(overlay)
    gateway, worker = r.workload("gateway"), r.workload("jobs-worker")
    redis, triton = r.workload("redis"), r.workload("triton")
    ns = worker.namespace
    port = container_port(redis.container("redis"), "redis")
    grpc = container_port(triton.container("triton"), "grpc")
    dns_labels, dns_ns = DNS
    for source in (gateway, worker):
        assert r.egress_allowed(source, port, redis.labels, ns, to=redis), source.name
        assert r.egress_allowed(source, grpc, triton.labels, ns, to=triton), source.name
        for protocol in ("UDP", "TCP"):
            assert r.egress_allowed(source, 53, dns_labels, dns_ns, protocol), source.name
        assert not r.egress_allowed(source, port, redis.labels, "default")
    assert not r.egress_allowed(triton, port, redis.labels, ns, to=redis)
    assert not r.egress_allowed(worker, 8000, triton.labels, ns, to=triton)  # Triton's HTTP
    assert not r.egress_allowed(worker, 8080, gateway.labels, ns, to=gateway)
    assert not r.egress_allowed(worker, 6443, {"component": "kube-apiserver"}, "kube-system")
    for ip in PUBLIC:
        for web in (80, 443):
            assert r.egress_allowed(worker, web, {}, "", to_ip=ip), (ip, web)
            # The gateway only with components/stream-egress (test_deploy_invariants.py).
            gateway_out = r.egress_allowed(gateway, web, {}, "", to_ip=ip)
            assert gateway_out == (overlay in STREAM_OVERLAYS), (ip, web)
        assert not r.egress_allowed(worker, 22, {}, "", to_ip=ip)
    for ip in INTERNAL:
        assert not r.egress_allowed(worker, 443, {}, "", to_ip=ip), ip
    for web in (80, 443):  # pods go by selectors: none of another namespace
        assert not r.egress_allowed(worker, web, {}, "default")
    assert not r.egress_allowed(redis, 53, dns_labels, dns_ns, "UDP")
    assert not r.egress_allowed(redis, 443, {}, "", to_ip=PUBLIC[0])
    # Nothing calls a worker; Prometheus scrapes its metrics port, and nothing else does.
    metrics = container_port(worker.container("worker"), "metrics")
    for labels, namespace in ((gateway.labels, ns), ({}, "ingress-nginx"), ({}, "monitoring")):
        assert not r.ingress_allowed(worker, 8080, labels, namespace)
    assert r.ingress_allowed(worker, metrics, {}, "monitoring")
    for labels, namespace in ((gateway.labels, ns), ({}, "ingress-nginx"), ({}, "default")):
        assert not r.ingress_allowed(worker, metrics, labels, namespace)


def probe_command(container: dict, probe: str, alive: Path) -> list[str]:
    """The probe's exec command, run here: this Python, the file at `alive`."""
    command = container[probe]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    return [sys.executable, "-c", command[2].replace("/tmp/jobs-worker-alive", str(alive))]


def probe_passes(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def test_worker_probes_read_the_file_the_worker_touches(overlay: str, tmp_path: Path) -> None:
    r = rendering(overlay)
    worker = r.workload("jobs-worker")
    container = worker.container("worker")
    env = r.env(container)
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    commands = [container[p]["exec"]["command"] for p in probes]
    assert commands[0] == commands[1] == commands[2]
    settings = Settings(_env_file=None, tmp_dir=env["GATEWAY_TMP_DIR"])
    assert f"'{alive_file(settings)}'" in commands[0][2]
    assert worker.mount(container, env["GATEWAY_TMP_DIR"]) is not None  # written there
    # Stale after more than a touch interval plus the loop's time to answer.
    max_age = float(re.search(r"st_mtime > (\d+)", commands[0][2]).group(1))
    assert max_age > 2 * ALIVE_INTERVAL_S
    alive = tmp_path / "alive"
    command = probe_command(container, "livenessProbe", alive)
    assert not probe_passes(command)  # not started: no file yet

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    stop = threading.Event()
    toucher = threading.Thread(target=keep_alive, args=(alive, loop, stop, 0.05), daemon=True)
    toucher.start()
    try:
        deadline = time.monotonic() + 10
        while not alive.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert probe_passes(command)
        # The analysis loop stops answering: the file ages and the probe fails.
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=5)
        old = time.time() - max_age - 1
        os.utime(alive, (old, old))
        time.sleep(0.3)  # several touch intervals
        assert alive.stat().st_mtime == old
        assert not probe_passes(command)
    finally:
        stop.set()
        toucher.join(timeout=5)
        loop.close()


def test_the_readmes_patch_drops_only_the_webhook_egress(overlay: str, tmp_path: Path) -> None:
    """deploy/README.md ("Jobs") tells how to run without webhooks: its patch, on
    top of the overlay, must remove the internet rule and keep the others."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    [snippet] = re.findall(r"```yaml\n(\s*patches:\n.*?name: jobs-worker\}.*?)```", readme, re.S)
    patches = yaml.safe_load(textwrap.dedent(snippet))["patches"]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(validate.OVERLAYS / overlay, tmp_path)],
                "patches": patches,
            }
        )
    )
    r = Rendering(validate.render(tmp_path))
    worker, redis = r.workload("jobs-worker"), r.workload("redis")
    for ip in PUBLIC:
        assert not r.egress_allowed(worker, 443, {}, "", to_ip=ip)
    assert r.egress_allowed(worker, 6379, redis.labels, worker.namespace, to=redis)
    assert r.egress_allowed(worker, 53, *DNS, "UDP")


# What only a worker exports (gateway/server/metrics.py; the gateway runs no workers here).
WORKER_METRICS = {
    "gateway_jobs_items_total",
    "gateway_jobs_item_seconds",
    "gateway_jobs_items_running",
    "gateway_jobs_worker_up",
    "gateway_jobs_worker_threads",
}


def test_the_jobs_alerts_read_each_metric_from_the_pods_that_export_it(overlay: str) -> None:
    """Prometheus names a ServiceMonitor's targets job="<Service name>": each `job` an alert
    selects is a scraped Service, and the workers' own metrics are read from the workers'
    (job="jobs-worker", their metrics port), the queue from the gateway's."""
    r = rendering(overlay)
    scraped = {
        s["metadata"]["name"]
        for m in r.all("ServiceMonitor")
        for s in r.all("Service")
        if "namespaceSelector" not in m["spec"]
        and selector_matches(m["spec"]["selector"], s["metadata"].get("labels", {}))
    }
    assert {"gateway", "jobs-worker"} <= scraped
    [rule] = [x for x in r.all("PrometheusRule") if x["metadata"]["name"] == "deepfake-detect-jobs"]
    read: dict[str, set[str]] = {}
    for alert in rule["spec"]["groups"][0]["rules"]:
        for name, job in re.findall(r'\b(gateway_\w+|up)\{[^}]*\bjob="([^"]+)"', alert["expr"]):
            read.setdefault(name.removesuffix("_bucket"), set()).add(job)
    assert set(read) >= {"gateway_jobs_queued", "gateway_jobs_items_total", "up"}
    for name, jobs in read.items():
        assert jobs <= scraped, (name, jobs)
        expected = {"jobs-worker"} if name in WORKER_METRICS | {"up"} else {"gateway"}
        assert jobs == expected, (name, jobs)
    # The worker's Service selects the worker pods, by the port the worker serves on.
    service = r.get("Service", "jobs-worker")
    [backend] = r.backends(service)
    [port] = service["spec"]["ports"]
    env = r.env(backend.container("worker"))
    assert backend.name == "jobs-worker" and service["spec"]["clusterIP"] == "None"
    assert container_port(backend.container("worker"), port["targetPort"]) == int(
        env["GATEWAY_JOBS_METRICS_PORT"]
    )
