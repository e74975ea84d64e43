"""The inputs every stage shares: the clips, their face crops, the models, the machine."""

import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import psutil

from export import runtimes
from export.repository import profile_members, read_config
from gateway.server.settings import Settings
from model_repository import cpu_features
from preprocess.faces import load_detector
from preprocess.media import MediaInfo, MediaReader
from preprocess.pipeline import FaceExtractor
from tests.bench.config import ROOT, BenchConfig

REPOSITORY = ROOT / "model_repository"
# Beside the units cpu_fast decides by: the vector widths that bound fp32 speed.
WIDTH_FLAGS = ("avx2", "avx512f", "amx_tile", "amx_int8")
PACKAGES = (
    "onnxruntime",
    "openvino",
    "torch",
    "numpy",
    "opencv-python-headless",
    "tritonclient",
    "fastapi",
)


@dataclass(frozen=True)
class Clip:
    path: Path
    info: MediaInfo
    crops: np.ndarray  # uint8 [faces, 380, 380, 3] RGB, as the gateway sends them
    decode_cpu_s: float = 0.0  # CPU seconds (all threads) to decode and sample the frames
    detect_cpu_s: float = 0.0  # CPU seconds of face detection and crops on them

    @property
    def name(self) -> str:
        return self.path.name


def service_settings(config: BenchConfig) -> Settings:
    """The gateway's settings for this run: its detector and crop, our frame count."""
    return Settings(detector=config.detector, frames=config.frames)


def extractor_for(config: BenchConfig) -> FaceExtractor:
    settings = service_settings(config)
    return FaceExtractor(load_detector(settings.detector_config()), settings.crop_config())


def load_clips(config: BenchConfig) -> list[Clip]:
    """Each clip's faces cut by the project's own preprocess (MediaReader + FaceExtractor),
    so the floor, Triton and the prototype score exactly the faces the gateway would."""
    settings = service_settings(config)
    reader, extractor = MediaReader(settings.media_limits()), extractor_for(config)
    clips = []
    for path in config.clips:
        start = time.process_time()
        media = reader.read(path, config.frames)
        decoded = time.process_time()
        crops = [c for frame in media.frames for c in extractor.extract_frame(frame).crops]
        detected = time.process_time()
        if not crops:
            raise SystemExit(f"{path}: no face found in {config.frames} frames; choose another")
        cpu = {"decode_cpu_s": decoded - start, "detect_cpu_s": detected - decoded}
        clips.append(Clip(path, media.info, np.stack(crops), **cpu))
    return clips


def all_crops(clips: list[Clip]) -> np.ndarray:
    return np.concatenate([c.crops for c in clips])


def members_of(profile: str) -> list[str]:
    return profile_members(REPOSITORY, profile)


def model_path(member: str, config: str = "cpu") -> Path:
    """The graph Triton serves for `member` under --model-config-name=`config` (the int8
    file where configs/cpu_fast.pbtxt names one), so in-process and served run the same."""
    member_dir = REPOSITORY / "members" / member
    configured = member_dir / "configs" / f"{config}.pbtxt"
    name = read_config(configured).default_model_filename if configured.exists() else ""
    return member_dir / "1" / (name or "model.onnx")


def precision(member: str, config: str) -> tuple[str, str]:
    """What `member` computes in under --model-config-name=`config`, and why (its
    `precision` and `precision_reason`, cpu_fast's written by choose_precisions; a GPU
    config's TensorRT precision_mode), Triton's way: configs/<config>.pbtxt, else
    config.pbtxt."""
    member_dir = REPOSITORY / "members" / member
    configured = member_dir / "configs" / f"{config}.pbtxt"
    served = read_config(configured if configured.exists() else member_dir / "config.pbtxt")
    params = served.parameters
    said = {k: params[k].string_value for k in ("precision", "precision_reason") if k in params}
    if "precision" not in said:
        for accelerator in served.optimization.execution_accelerators.gpu_execution_accelerator:
            if "precision_mode" in accelerator.parameters:
                mode = accelerator.parameters["precision_mode"].lower()
                return f"{mode} ({accelerator.name})", "the config's TensorRT precision_mode"
    return said.get("precision", "fp32"), said.get("precision_reason", "")


def choose_precisions(config: str) -> None:
    """Under cpu_fast, each member's configs/cpu_fast.pbtxt for this CPU, as the local
    Triton writes them when it starts: the floor runs what Triton will serve."""
    if config == runtimes.CONFIG_NAME:
        runtimes.write_fast_configs(REPOSITORY)


def cpu_units() -> dict:
    """The flags that decide cpu_fast's precisions (TRITON_CPU_FLAGS stands for them) and
    the kind of CPU they make: a bench on a CPU without BF16 units is not one with them."""
    flags = cpu_features.cpu_flags()
    units = cpu_features.cpu_units(flags)
    decisive = [f for kind in cpu_features.UNIT_FLAGS.values() for f in kind]
    return {
        "kind": units.kind,
        "why": units.describe(),
        "flags": sorted(f for f in flags if f in {*decisive, *WIDTH_FLAGS}),
    }


def check_exported(profiles: tuple[str, ...]) -> None:
    missing = [str(model_path(m)) for p in profiles for m in members_of(p)]
    missing = [m for m in missing if not Path(m).exists()]
    if missing:
        raise SystemExit(f"not exported: {missing}; run `make export PROFILE=full` first")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerators() -> list[str]:
    """What ONNX Runtime and torch could use here; the report says so rather than assume a CPU."""
    import onnxruntime as ort
    import torch

    # Azure's provider calls a remote endpoint: it is in every wheel and is no device.
    not_devices = {"CPUExecutionProvider", "AzureExecutionProvider"}
    found = [p for p in ort.get_available_providers() if p not in not_devices]
    if torch.cuda.is_available():
        found += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return found


def machine_facts() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cpu_units": cpu_units(),
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "accelerators": accelerators(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "opencv": cv2.__version__,
        "packages": versions,
    }
