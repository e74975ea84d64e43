"""Stage 1, the floor: each model in-process as Triton runs it under the bench's config
(ONNX Runtime, or OpenVINO for a cpu_fast bf16 member), no server in between.

Also the "pure model compute" of each clip: the seconds its faces take through each
model in-process, batched as the gateway batches them (GATEWAY_MAX_BATCH).
"""

import time

import numpy as np
import onnxruntime as ort

from export import runtimes
from export.quantize import Runner
from gateway.server.settings import Settings
from preprocess.tensors import INPUT_NAME
from tests.bench.config import BenchConfig
from tests.bench.inputs import Clip, all_crops, model_path
from tests.bench.measure import batches, latency_summary, median, run_concurrently


def providers() -> list[str]:
    """The best execution provider this onnxruntime build has (CUDA on a GPU machine), CPU last."""
    preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    available = ort.get_available_providers()
    chosen = [p for p in preferred[1:] if p in available]  # TensorRT builds engines for minutes
    return chosen or available


def runner(member: str, config: str = "cpu") -> Runner:
    """The member's graph under `config`, with the machine's default threads (as Triton's
    native backends): OpenVINO where the config says so, else ONNX Runtime."""
    path = model_path(member, config)
    if runtimes.served_backend(path.parent.parent, config) == "openvino":
        return runtimes.served_runner(path.parent.parent, config, threads=0)
    sess = ort.InferenceSession(str(path), providers=providers())
    return lambda faces: sess.run(None, {INPUT_NAME: faces})[0]


def run_batches(run: Runner, parts: list[np.ndarray]) -> list[float]:
    latencies = []
    for part in parts:
        start = time.perf_counter()
        run(part)
        latencies.append(time.perf_counter() - start)
    return latencies


def throughput(run: Runner, crops: np.ndarray, batch: int, repeats: int) -> dict:
    parts = batches(crops, batch)
    run_batches(run, parts[:1])  # warm-up: arena allocation, first-run kernel choice
    walls, latencies = [], []
    for _ in range(repeats):
        timed = run_concurrently([lambda p=p: run_batches(run, [p]) for p in parts], 1)
        walls.append(timed.wall_s)
        latencies += timed.latencies_s
    wall = median(walls)
    return {"faces": len(crops), "faces_per_s": len(crops) / wall, **latency_summary(latencies)}


def clip_compute_s(run: Runner, clip: Clip, repeats: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of the clip's faces through one member."""
    parts = batches(clip.crops, Settings().max_batch)
    walls, cpus = [], []
    for _ in range(repeats):
        start = time.process_time()
        walls.append(sum(run_batches(run, parts)))
        cpus.append(time.process_time() - start)
    return median(walls), median(cpus)


def run_floor(config: BenchConfig, clips: list[Clip], members: list[str]) -> dict:
    """{"models": {member: {"batch": {b: figures}, "clip_compute_s": {clip: s},
    "clip_cpu_s": {clip: s}}}, "providers": [...]}"""
    crops = all_crops(clips)
    result: dict = {"providers": providers(), "models": {}}
    for member in members:
        run = runner(member, config.triton_config)
        figures = {b: throughput(run, crops, b, config.repeats) for b in config.batches}
        compute = {c.name: clip_compute_s(run, c, config.repeats) for c in clips}
        result["models"][member] = {
            "batch": figures,
            "clip_compute_s": {clip: wall for clip, (wall, _) in compute.items()},
            "clip_cpu_s": {clip: cpu for clip, (_, cpu) in compute.items()},
        }
        print(
            f"  floor {member}: "
            + ", ".join(f"b{b} {f['faces_per_s']:.2f} faces/s" for b, f in figures.items()),
            flush=True,
        )
        del run
    return result


def ensemble_faces_per_s(floor: dict, members: list[str], batch: int) -> float:
    """An in-process ensemble runs its members one after another on the same faces."""
    per_face = sum(1 / floor["models"][m]["batch"][batch]["faces_per_s"] for m in members)
    return 1 / per_face


def clip_compute(floor: dict, members: list[str], clip: str, key: str = "clip_compute_s") -> float:
    return sum(floor["models"][m][key][clip] for m in members)
