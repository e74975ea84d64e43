"""`make bench-gpu` (python -m tests.bench.gpu [BENCH ARGS...]): `make bench` on an NVIDIA
GPU, served as production serves it: each member's config.pbtxt (TensorRT FP16, engines
cached per weights under the local Triton's work dir) and uploads decoded by NVDEC where
PyAV's FFmpeg offers it. Records faces/s (Triton's ensemble, in-process members) and
videos/min (the gateway end to end) in results/bench-gpu/gpu.json, and prints them.

It checks first, and refuses with the reasons (exit 2) before exporting or starting
anything: an NVIDIA GPU (`nvidia-smi -L`), and the TensorRT and CUDA execution providers
in both environments that run the models (`.venv-triton`: the local Triton's ONNX Runtime
backend; `.venv`: the in-process floor), i.e. onnxruntime-gpu and TensorRT's libraries.
"""

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model_repository.local_triton import PYTHON_ENV
from tests.bench.config import BenchConfig
from tests.bench.triton_stage import ENSEMBLE
from tests.stack import ROOT

OUT = ROOT / "results" / "bench-gpu"
# Each member's config.pbtxt: the NGC image's production configuration (TensorRT FP16).
TRITON_CONFIG = "config"
# The prototype is eager PyTorch on the CPU and the live stage a frame rate: neither says
# what the GPU does, and the lent device's minutes are few.
STAGES = "floor,triton,service"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROBE_PROVIDERS = (
    "import json, onnxruntime; print(json.dumps(onnxruntime.get_available_providers()))"
)


@dataclass
class Preflight:
    gpus: list[str]
    providers: dict[str, list[str]]  # environment -> its onnxruntime's providers
    nvdec: bool  # NVDEC opened and decoded a clip here
    problems: list[str] = field(default_factory=list)


def list_gpus() -> list[str]:
    """`nvidia-smi -L`'s lines (one per GPU); none where the tool or the driver is missing."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = listed.stdout.splitlines() if listed.returncode == 0 else []
    return [line for line in lines if line.startswith("GPU ")]


def providers_in(python: Path) -> list[str]:
    """The execution providers of the onnxruntime `python` imports ([] if it cannot)."""
    try:
        probe = subprocess.run(
            [str(python), "-c", PROBE_PROVIDERS], capture_output=True, text=True, timeout=120
        )
        return json.loads(probe.stdout) if probe.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []


def nvdec_decodes(clip: Path) -> bool:
    """Whether NVDEC decodes a frame of `clip` here (no fallback to the CPU allowed)."""
    import av
    from av.codec.hwaccel import HWAccel

    from preprocess.video import hwaccel_offered

    if not hwaccel_offered("cuda"):
        return False
    try:
        hwaccel = HWAccel(device_type="cuda", allow_software_fallback=False)
        with av.open(str(clip), hwaccel=hwaccel) as container:
            return next(container.decode(video=0), None) is not None
    except (av.FFmpegError, OSError):
        return False


def preflight(environments: dict[str, Path], clip: Path) -> Preflight:
    gpus = list_gpus()
    found = Preflight(gpus, {name: providers_in(p) for name, p in environments.items()}, False)
    if not gpus:
        found.problems.append(
            "no NVIDIA GPU here (`nvidia-smi -L` lists none): the GPU bench needs one; "
            "`make bench` measures the CPU"
        )
        return found  # nothing else can be checked without one
    for name, available in found.providers.items():
        lacking = [p for p in GPU_PROVIDERS if p not in available]
        if lacking:
            found.problems.append(
                f"{name}'s onnxruntime lacks {', '.join(lacking)} (it has {available or 'none'}): "
                f"install onnxruntime-gpu and TensorRT's libraries (`tensorrt`) into {name}"
            )
    found.nvdec = nvdec_decodes(clip)
    return found


def bench_args(found: Preflight, extra: list[str], out: Path = OUT) -> list[str]:
    """`make bench`'s BENCH_ARGS: the GPU configuration; NVDEC where it decodes here."""
    args = ["--triton-config", TRITON_CONFIG, "--stages", STAGES, "--out", str(out)]
    return [*args, *(["--hwaccel", "cuda"] if found.nvdec else []), *extra]


def summary(bench: dict) -> dict:
    """faces/s and videos/min from the bench's bench.json, per profile."""
    out: dict = {}
    for profile, models in bench.get("triton", {}).items():
        ensemble = models.get(ENSEMBLE, {})
        out.setdefault(profile, {})["triton_faces_per_s"] = {
            key: round(figures["faces_per_s"], 1) for key, figures in ensemble.items()
        }
    for member, figures in bench.get("floor", {}).get("models", {}).items():
        out.setdefault("floor_faces_per_s", {})[member] = {
            f"b{b}": round(f["faces_per_s"], 1) for b, f in figures.get("batch", {}).items()
        }
    for profile, levels in bench.get("service", {}).items():
        out.setdefault(profile, {})["videos_per_min"] = {
            level: round(figures["videos_per_min"], 1)
            for level, figures in levels.items()
            if isinstance(figures, dict) and "videos_per_min" in figures
        }
    return out


def main(argv: list[str] | None = None) -> int:
    extra = sys.argv[1:] if argv is None else argv
    environments = {".venv-triton": PYTHON_ENV / "bin" / "python", ".venv": Path(sys.executable)}
    found = preflight(environments, BenchConfig().clips[0])
    if found.problems:
        for problem in found.problems:
            print(f"bench-gpu: {problem}", file=sys.stderr)
        return 2
    args = bench_args(found, extra)
    print(f"bench-gpu: {found.gpus}; NVDEC {'on' if found.nvdec else 'not offered'}", flush=True)
    # make bench: both profiles exported (config.pbtxt with them), then python -m tests.bench.
    make = ["make", "-C", str(ROOT), "bench", f"BENCH_ARGS={shlex.join(args)}"]
    if subprocess.run(make, env=os.environ.copy(), check=False).returncode != 0:
        return 1
    bench = json.loads((OUT / "bench.json").read_text())
    record = {"preflight": asdict(found), "bench_args": args, "figures": summary(bench)}
    (OUT / "gpu.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["figures"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
