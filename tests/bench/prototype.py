"""Stage 4: what the prototype server (the project's first version) did, written honestly:
one process, eager PyTorch.

OpenCV reads the video frame by frame; on each sampled frame the same detector finds
the faces, the same crop cuts them, and every model of the profile scores each face,
one model after another, one face at a time — no batching, no server. The models are
export/'s own torch modules with the weights the export used (the MesoNet .h5 files;
Xception and B7 from the same fixed seed when no checkpoint exists), under
torch.inference_mode() with as many torch threads as the machine has cores.
"""

import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from export.__main__ import ARCHITECTURES, find_weights
from export.members import discover
from export.onnx_writer import FacesToPFake
from export.weights import weights_manifest
from model_repository.local_triton import REPOSITORY
from preprocess.assets import AssetError, resolve
from preprocess.media import Frame, sample_indices
from preprocess.pipeline import FaceExtractor
from tests.bench.config import BenchConfig
from tests.bench.inputs import extractor_for
from tests.bench.measure import median


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def member_weights(member: str) -> tuple[str, Path | None]:
    """(architecture, weights file or None) of a built-in member or of a manifest member
    built on one (members/<name>/member.toml); an ONNX-only member has no PyTorch module."""
    manifest = {m.name: m for m in discover(REPOSITORY)}.get(member)
    if manifest is None:
        return member, find_weights(member, None, allow_random=True, allow_download=False)[0]
    if not manifest.architecture:
        raise SystemExit(f"{member}: an ONNX-only member; the prototype runs PyTorch modules")
    try:
        asset = weights_manifest()[manifest.weights_asset]
        return manifest.architecture, resolve(asset, allow_download=False)
    except AssetError:
        return manifest.architecture, None  # exported with random weights too


def load_model(member: str) -> torch.nn.Module:
    """The module export/ turns into ONNX: architecture, weights, uint8-in / P(fake)-out."""
    architecture, weights = member_weights(member)
    arch = ARCHITECTURES[architecture]
    model = arch.create_model()
    if weights is not None:
        arch.load_weights(model, weights)
    return FacesToPFake(model, arch.PRETRAINED_CFG).eval().to(device())


def sampled_frames(path: Path, frames: int) -> list[Frame]:
    """Read the clip in order, keeping the evenly spaced frames the service samples."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        wanted = set(sample_indices(count, frames))
        kept = []
        for index in range(max(wanted) + 1):
            if not capture.grab():
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    kept.append(Frame(index, index / fps if fps else 0.0, rgb))
        return kept
    finally:
        capture.release()


def analyse_clip(
    path: Path, frames: int, extractor: FaceExtractor, models: dict[str, torch.nn.Module]
) -> dict:
    start = time.perf_counter()
    scores: dict[str, list[float]] = {m: [] for m in models}
    model_s = 0.0
    with torch.inference_mode():
        for frame in sampled_frames(path, frames):
            for crop in extractor.extract_frame(frame).crops:
                face = torch.from_numpy(np.ascontiguousarray(crop[None])).to(device())
                for name, model in models.items():
                    t = time.perf_counter()
                    scores[name].append(float(model(face).item()))
                    model_s += time.perf_counter() - t
    seconds = time.perf_counter() - start
    faces = len(next(iter(scores.values())))
    means = {m: float(np.mean(s)) if s else None for m, s in scores.items()}
    return {
        "clip": path.name,
        "seconds": seconds,
        "model_s": model_s,
        "faces": faces,
        "mean_p_fake": means,
    }


def run_prototype(config: BenchConfig, members: list[str], profile: str) -> dict:
    torch.set_num_threads(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    models = {m: load_model(m) for m in members}
    extractor = extractor_for(config)
    analyse_clip(config.clips[0], 1, extractor, models)  # warm-up: one frame
    clips = [analyse_clip(p, config.frames, extractor, models) for p in config.clips]
    total = sum(c["seconds"] for c in clips)
    result = {
        "device": str(device()),
        "torch_threads": torch.get_num_threads(),
        "clips": clips,
        "videos_per_min": 60 * len(clips) / total,
        "median_clip_s": median([c["seconds"] for c in clips]),
    }
    print(
        f"  prototype {profile}: {result['videos_per_min']:.2f} videos/min, "
        f"median {result['median_clip_s']:.2f} s per clip",
        flush=True,
    )
    return result
