"""The GPU bench's pieces, without a GPU: `make bench-gpu` refuses cleanly here, and what it
would run renders (the GPU configs' execution providers as the local ONNX Runtime backend
reads them, the bench's arguments, the precision it reports, the figures it records)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from export.repository import read_config
from model_repository.backends import accelerators
from tests.bench import gpu
from tests.bench.config import parse_args
from tests.bench.inputs import members_of, model_path, precision
from tests.stack import ROOT

MEMBERS = ROOT / "model_repository" / "members"
FAKE_NVIDIA_SMI = "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)'\n"


def as_triton_gives_it(path: Path) -> dict:
    """A config as Triton hands it to a Python-based backend: JSON, proto field names."""
    return json_format.MessageToDict(read_config(path), preserving_proto_field_name=True)


def test_without_a_gpu_make_bench_gpu_refuses_with_the_reason() -> None:
    if gpu.list_gpus():
        pytest.skip("a GPU is here: the bench would run")
    made = subprocess.run(
        ["make", "-n", "bench-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "-m tests.bench.gpu" in made.stdout, made.stdout
    run = subprocess.run(
        [sys.executable, "-m", "tests.bench.gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no NVIDIA GPU here" in run.stderr and "make bench" in run.stderr
    assert "starting Triton" not in run.stdout  # refused before anything was started


def test_a_gpu_without_onnxruntime_gpu_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-smi lists a GPU, but the environments' onnxruntime is the CPU build."""
    (tmp_path / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin:/bin")
    found = gpu.preflight({".venv": Path(sys.executable)}, gpu.BenchConfig().clips[0])
    assert found.gpus == ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)"]
    [problem] = found.problems
    assert ".venv's onnxruntime lacks TensorrtExecutionProvider, CUDAExecutionProvider" in problem
    assert "onnxruntime-gpu" in problem


@pytest.mark.parametrize("member", members_of("full"))
def test_a_gpu_config_runs_on_tensorrt_fp16_with_engines_keyed_by_its_weights(
    member: str,
) -> None:
    config = as_triton_gives_it(MEMBERS / member / "config.pbtxt")
    sha = json.loads((MEMBERS / member / "provenance.json").read_text())["weights_sha256"]
    [tensorrt, cuda, cpu] = accelerators.providers(config, 1, "/work/trt-cache")
    name, options = tensorrt
    assert name == "TensorrtExecutionProvider" and options["device_id"] == "1"
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == ("1", "0")
    assert options["trt_engine_cache_enable"] == "1"
    cache = Path(options["trt_engine_cache_path"])
    assert cache.parent == Path("/work/trt-cache") and sha[:12] in cache.name
    assert options["trt_timing_cache_path"] == options["trt_engine_cache_path"]
    assert options["trt_profile_opt_shapes"] == "FACES:8x380x380x3"
    assert cuda == ("CUDAExecutionProvider", {"device_id": "1"}) and cpu == "CPUExecutionProvider"
    # Served as on Kubernetes where no local root is given: the volume's path.
    [(_, kept), _, _] = accelerators.providers(config, 0, None)
    assert kept["trt_engine_cache_path"].startswith(accelerators.CACHE_ROOT + "/")
    # cuda.pbtxt: the GPU without TensorRT; the CPU configs: the CPU only.
    no_trt = as_triton_gives_it(MEMBERS / member / "configs" / "cuda.pbtxt")
    assert accelerators.providers(no_trt) == [
        ("CUDAExecutionProvider", {"device_id": "0"}),
        "CPUExecutionProvider",
    ]
    cpu_config = as_triton_gives_it(MEMBERS / member / "configs" / "cpu.pbtxt")
    assert accelerators.providers(cpu_config) == ["CPUExecutionProvider"]
    assert accelerators.missing(accelerators.providers(config), ["CPUExecutionProvider"]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
    ]


def test_an_accelerator_parameter_it_cannot_read_is_refused_not_dropped() -> None:
    config = as_triton_gives_it(MEMBERS / "meso4" / "config.pbtxt")
    [accelerator] = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    accelerator["parameters"]["trt_dla_enable"] = "1"
    with pytest.raises(ValueError, match="trt_dla_enable"):
        accelerators.providers(config)


def test_the_bench_it_runs_serves_config_pbtxt_in_fp16_and_nvdec_where_it_decodes() -> None:
    found = gpu.Preflight(["GPU 0: X"], {}, nvdec=True)
    args = gpu.bench_args(found, ["--max-clips", "1"], Path("/tmp/out"))
    assert args[args.index("--triton-config") + 1] == "config"
    assert args[args.index("--hwaccel") + 1] == "cuda" and args[-2:] == ["--max-clips", "1"]
    config = parse_args(args)
    assert (config.triton_config, config.hwaccel, config.out) == (
        "config",
        "cuda",
        Path("/tmp/out"),
    )
    assert config.stages == ("floor", "triton", "service")
    assert "--hwaccel" not in gpu.bench_args(gpu.Preflight(["GPU 0: X"], {}, nvdec=False), [])
    for member in members_of("full"):
        assert precision(member, "config")[0] == "fp16 (tensorrt)"
        assert precision(member, "cuda")[0] == "fp32"
        assert model_path(member, "config").name == "model.onnx"


def test_the_figures_it_records_come_from_the_benchs_json() -> None:
    bench = {
        "triton": {"lite": {"deepfake_ensemble": {"b8_c4": {"faces_per_s": 812.34}}}},
        "floor": {"models": {"meso4": {"batch": {"8": {"faces_per_s": 2000.06}}}}},
        "service": {"lite": {"c4": {"videos_per_min": 301.26}, "p50": 0.4}},
    }
    assert gpu.summary(bench) == {
        "lite": {"triton_faces_per_s": {"b8_c4": 812.3}, "videos_per_min": {"c4": 301.3}},
        "floor_faces_per_s": {"meso4": {"b8": 2000.1}},
    }
