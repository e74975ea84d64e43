"""make images-test: the stack run from the built images, as the manifests run it.

    .venv/bin/python -m tests.images [--profile lite] [--tag dev]

Podman (deploy/images/build.sh set it up) starts, on loopback ports:
  - Triton from the CPU image, with the `cpu` overlay's own arguments (rendered from
    deploy/k8s/overlays/cpu), as uid 1000, /dev/shm 2 GiB and a /tmp tmpfs;
  - the gateway as shipped (the ConfigMap's and the jobs component's environment, YuNet
    baked in, API keys, jobs in a loopback redis-server) and a job worker from the same
    image, both as uid 10001 with a /tmp tmpfs; the uploads folder (a PVC in the cluster)
    is a host folder both mount;
  - a second gateway with SCRFD mounted read-only from $DEEPFAKE_ASSETS (never baked in),
    for the golden record (tests/golden/lite.json is SCRFD's);
every container with a read-only root, no capabilities and no-new-privileges. It checks
/readyz, a clip against the golden record, a job whose webhook is signed, a live frame
over the WebSocket, /metrics and a report, and records the images' sizes and each
container's cold start to ready in results/images.json.
"""

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.validate import render
from gateway.clients.client import GatewayClient
from gateway.server.jobs.engine import webhook_secret_for_key
from tests import golden
from tests.jobs_support import Receiver, redis_server, submit, wait_job
from tests.live_client import LiveSocket, jpeg_frames
from tests.stack import ASSETS, FAKE_CLIP, MEDIA, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "images.json"
# What every container gets: the manifests' securityContext, and the host's loopback.
LOCKED_DOWN = [
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--network=host",
]
API_KEY = "images-test-key"
GOLDEN_CLIP = "videos/real/ffpp_c23_original_004.mp4"
READY_TIMEOUT_S = 600.0  # the cpu overlay's startup budget


def podman(*args: str) -> str:
    return subprocess.run(
        ["podman", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Containers:
    """Containers started by this run: logs kept, all removed at the end."""

    logs: Path
    names: list[str] = field(default_factory=list)

    def run(self, name: str, image: str, *options: str, command: list[str] | None = None) -> float:
        """Start a container; its start time (monotonic) for the cold start."""
        name = f"deepfake-images-{name}-{os.getpid()}"
        self.names.append(name)
        started = time.monotonic()
        podman("run", "-d", "--name", name, *LOCKED_DOWN, *options, image, *(command or []))
        return started

    def locked_down(self) -> dict:
        """What each running container really got: a non-root uid, a root filesystem it
        cannot write, no effective capabilities."""
        seen = {}
        for name in self.names:
            uid = int(podman("exec", name, "id", "-u"))
            wrote = subprocess.run(["podman", "exec", name, "touch", "/probe"], capture_output=True)
            caps = podman("exec", name, "grep", "CapEff", "/proc/self/status").split()[-1]
            assert uid != 0 and wrote.returncode != 0 and int(caps, 16) == 0, (name, uid, caps)
            seen[name.split("-", 2)[2].rsplit("-", 1)[0]] = {"uid": uid, "root": "read-only"}
        return seen

    def save_logs(self) -> None:
        for name in self.names:
            result = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
            (self.logs / f"{name}.log").write_text(result.stdout + result.stderr)

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["podman", "rm", "-f", "-t", "10", name], capture_output=True)


def wait_ready(url: str, started: float, what: str) -> float:
    """Seconds from the container's start to `url` answering 200."""
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return round(time.monotonic() - started, 1)
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {READY_TIMEOUT_S:.0f}s ({url})")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a container argument."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


def cpu_overlay_triton_args(ports: dict[str, int]) -> list[str]:
    """The cpu overlay's Triton arguments, expanded as the kubelet would, listening on
    loopback on `ports` instead of the pod's 8000-8002."""
    [deployment] = [
        m
        for m in render(ROOT / "deploy" / "k8s" / "overlays" / "cpu")
        if m["kind"] == "Deployment" and m["metadata"]["name"] == "triton"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"TRITON_ADMIN_KEY": secrets.token_hex(16), "TRITON_CPUS": str(os.cpu_count())}
    args = []
    for arg in container["args"]:
        port = re.fullmatch(r"--(http|grpc|metrics)-port=\d+", arg)
        args.append(f"--{port[1]}-port={ports[port[1]]}" if port else expand(arg, env))
    args += [f"--{kind}-address=127.0.0.1" for kind in ports]
    return args


def gateway_env(triton_grpc: int, port: int) -> list[str]:
    """The ConfigMap's environment (base/gateway/gateway.env, then the jobs component's),
    pointed at loopback."""
    options = []
    for env_file in ("base/gateway/gateway.env", "components/jobs/jobs.env"):
        options += ["--env-file", str(ROOT / "deploy" / "k8s" / env_file)]
    overrides = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TRITON_URL": f"127.0.0.1:{triton_grpc}",
    }
    return options + [f"--env={k}={v}" for k, v in overrides.items()]


def check_golden(url: str) -> dict:
    path = MEDIA / GOLDEN_CLIP
    expected = json.loads(golden.RECORD.read_text())[GOLDEN_CLIP]
    with GatewayClient(url) as client:
        got = golden.summarise(client.detect(path, frames=golden.FRAMES))
    differences = golden.differences(expected, got)
    assert not differences, f"{GOLDEN_CLIP} differs from the golden record: {differences}"
    return {"clip": GOLDEN_CLIP, "verdict": got["verdict"], "score": round(got["score"], 4)}


def check_job(url: str, master_secret: str) -> dict:
    key = {"X-API-Key": API_KEY}
    image = MEDIA / "images/real/face_recognition_obama.jpg"
    with Receiver(secret=webhook_secret_for_key(master_secret, API_KEY)).serving() as receiver:
        response = submit(url, [(image.name, image.read_bytes())], key, callback_url=receiver.url)
        assert response.status_code == 202, response.text
        job = wait_job(url, response.json()["id"], key, timeout=300)
        assert receiver.received.wait(60), "no webhook delivered"
    assert job["status"] == "done", job
    [delivery] = receiver.deliveries
    assert delivery["valid"], "the webhook's signature does not verify"
    assert delivery["body"]["id"] == job["id"] and delivery["body"]["status"] == "done"
    return {"id": job["id"], "status": job["status"], "webhook": "signed, verified"}


def check_live(url: str) -> dict:
    session = LiveSocket.open(url, header=[f"X-API-Key: {API_KEY}"])
    try:
        started = session.start(window=4)
        assert started["event"] == "started", started
        session.frame(jpeg_frames(FAKE_CLIP, 1)[0])
        answer = session.next("frame", "error")
        assert answer["event"] == "frame" and answer["faces"], answer
    finally:
        session.ws.close()
    return {"faces": len(answer["faces"]), "verdict": answer.get("verdict")}


def check_metrics(url: str, triton_metrics: int) -> dict:
    text = httpx.get(url + "/metrics", timeout=10).text
    assert "gateway_verdicts_total" in text, text[:500]
    triton = httpx.get(f"http://127.0.0.1:{triton_metrics}/metrics", timeout=10).text
    assert "nv_inference_request_success" in triton, triton[:500]
    return {"gateway": "gateway_verdicts_total", "triton": "nv_inference_request_success"}


def check_report(url: str) -> dict:
    key = {"X-API-Key": API_KEY}
    with GatewayClient(url) as client:
        client.http.headers.update(key)
        answer = client.detect(MEDIA / GOLDEN_CLIP, frames=8)
        html = client.report(answer, "html").decode()
        pdf = client.http.post("/api/report", params={"format": "pdf"}, json=answer)
        reports = client.http.get("/api").json()["pdf_reports"]
    assert html.lower().startswith("<!doctype html") and answer["verdict"] in html
    # No browser in the image: the gateway says so (the page hides its PDF button) and a PDF
    # is a clear 4xx refusal, not a 5xx that feeds the alert.
    if reports:
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF"), pdf.text[:300]
        return {"html_bytes": len(html), "pdf": "printed"}
    assert (pdf.status_code, pdf.json()["error"]["code"]) == (406, "pdf_unavailable"), pdf.text
    return {"html_bytes": len(html), "pdf": "pdf_unavailable (no Chromium in the image)"}


def image_size_mb(image: str) -> float:
    return round(int(podman("image", "inspect", "--format", "{{.Size}}", image)) / 1e6, 1)


def run(gateway_image: str, triton_image: str, work: Path) -> dict:
    containers = Containers(work)
    master = secrets.token_hex(16)
    uploads = work / "jobs"
    uploads.mkdir()
    os.chown(uploads, 10001, 10001)
    result: dict = {
        "images": {i: {"size_mb": image_size_mb(i)} for i in (gateway_image, triton_image)},
        "cold_start_s": {},
        "checks": {},
    }
    try:
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        triton_started = containers.run(
            "triton", triton_image, "--user=1000:1000", "--shm-size=2g",
            "--tmpfs=/tmp:rw,size=4g", command=cpu_overlay_triton_args(ports),
        )  # fmt: skip
        result["cold_start_s"]["triton"] = wait_ready(
            f"http://127.0.0.1:{ports['http']}/v2/health/ready", triton_started, "Triton"
        )
        with redis_server(work) as redis_url:
            shipped, scrfd = free_port(), free_port()
            jobs = [
                f"--env=GATEWAY_JOBS_REDIS_URL={redis_url}",
                f"--env=GATEWAY_API_KEYS={API_KEY}",
                f"--env=GATEWAY_JOBS_WEBHOOK_SECRET={master}",
                "--env=GATEWAY_JOBS_ALLOW_PRIVATE_CALLBACKS=true",
                f"--volume={uploads}:/var/lib/deepfake-jobs",
            ]
            common = ["--user=10001:10001", "--tmpfs=/tmp:rw,size=2g"]
            gateway_started = containers.run(
                "gateway", gateway_image, *common, *gateway_env(ports["grpc"], shipped), *jobs
            )
            result["cold_start_s"]["gateway"] = wait_ready(
                f"http://127.0.0.1:{shipped}/readyz", gateway_started, "gateway"
            )
            containers.run(
                "worker", gateway_image, *common, *gateway_env(ports["grpc"], free_port()),
                *jobs, "--env=GATEWAY_JOBS_WORKERS=2",
                "--entrypoint=python", command=["-m", "gateway.programs.worker"],
            )  # fmt: skip
            golden_started = containers.run(
                "gateway-scrfd", gateway_image, *common,
                *gateway_env(ports["grpc"], scrfd), "--env=GATEWAY_JOBS_ENABLED=false",
                "--env=GATEWAY_DETECTOR=scrfd", "--env=DEEPFAKE_ASSETS=/opt/shared-assets",
                f"--volume={ASSETS}:/opt/shared-assets:ro",
            )  # fmt: skip
            wait_ready(f"http://127.0.0.1:{scrfd}/readyz", golden_started, "SCRFD gateway")
            url = f"http://127.0.0.1:{shipped}"
            checks = result["checks"]
            checks["readyz"] = httpx.get(url + "/readyz", timeout=10).json()
            checks["golden"] = check_golden(f"http://127.0.0.1:{scrfd}")
            checks["job"] = check_job(url, master)
            checks["live"] = check_live(url)
            checks["metrics"] = check_metrics(url, ports["metrics"])
            checks["report"] = check_report(url)
            checks["locked_down"] = containers.locked_down()
    finally:
        containers.save_logs()
        containers.remove()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.images", description=__doc__)
    parser.add_argument("--tag", default=os.environ.get("TAG", "dev"))
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "lite"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    gateway_image = f"localhost/deepfake/gateway:{args.tag}"
    triton_image = f"localhost/deepfake/triton-cpu:{args.tag}-{args.profile}"
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="images-test-"))
    try:
        result = run(gateway_image, triton_image, work)
    except BaseException:
        print(f"failed; the containers' logs are in {work}")
        raise
    result["run_s"] = round(time.monotonic() - began, 1)
    result["host"] = {"cpus": os.cpu_count(), "podman": podman("--version")}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
