"""Stage 3: end to end through the gateway (upload → decode → detect → Triton → verdict).

At each concurrency `c`, c clients send the clips round-robin, `waves` clips each; the
answers' own `timings_ms` give the per-stage times.
"""

from pathlib import Path

import httpx
import psutil

from gateway.clients.client import GatewayClient
from tests.bench.config import BenchConfig
from tests.bench.measure import Run, latency_summary, median, run_concurrently

STAGES = ("upload", "decode", "detect", "infer", "aggregate", "total")
TIMEOUT = httpx.Timeout(900.0, connect=10.0)
ALL = "all"  # every member, also those that cannot vote


def measured(url: str, path: Path, frames: int, models: str | None = None) -> dict:
    """One request's record: its clip, faces, verdict and the answer's own stage timings."""
    with GatewayClient(url, TIMEOUT) as client:
        # ClientError if refused: a benchmark figure from a failed request means nothing.
        answer = client.detect(path, models=models, frames=frames)
    return {
        "clip": path.name,
        "faces": sum(len(f["faces"]) for f in answer["frames"]),
        "verdict": answer["verdict"],
        "timings_ms": answer["timings_ms"],
    }


def stage_medians(answers: list[dict]) -> dict[str, float]:
    return {
        s: median([a["timings_ms"][s] for a in answers if a["timings_ms"].get(s) is not None])
        for s in STAGES
        if any(a["timings_ms"].get(s) is not None for a in answers)
    }


def run_level(
    url: str, clips: list[Path], frames: int, concurrency: int, waves: int, models: str | None
) -> dict:
    sends = [clips[i % len(clips)] for i in range(max(len(clips), concurrency) * waves)]
    jobs = [lambda p=p: measured(url, p, frames, models) for p in sends]
    run = run_concurrently(jobs, concurrency)
    return level_figures(run, len(sends), clips)


def level_figures(run: Run, requests: int, clips: list[Path]) -> dict:
    return {
        "requests": requests,
        "wall_s": run.wall_s,
        "videos_per_min": 60 * requests / run.wall_s,
        **latency_summary(run.latencies_s),
        "stages_ms": stage_medians(run.results),
        "per_clip_total_ms": {
            p.name: median([a["timings_ms"]["total"] for a in run.results if a["clip"] == p.name])
            for p in clips
        },
        "answers": run.results,
    }


def run_service(
    config: BenchConfig, url: str, profile: str, processes: tuple[psutil.Process, ...]
) -> dict:
    """Every member of the profile (models=all), as the prototype baseline runs them: by default
    the gateway skips the members that cannot vote (see run_p50 for that request). At one
    client, each request's CPU seconds in `processes` (the gateway, Triton) too."""
    measured(url, config.clips[0], config.frames, ALL)  # warm-up: detector sessions, channel
    result: dict = {}
    for c in config.concurrency:
        if c == 1:
            level = run_alone(url, config, processes)
        else:
            level = run_level(url, config.clips, config.frames, c, config.waves, ALL)
        result[f"c{c}"] = level
        print(
            f"  service {profile} c{c}: {level['videos_per_min']:.2f} videos/min, "
            f"p50 {level['p50_ms'] / 1000:.2f} s, stages {level['stages_ms']}",
            flush=True,
        )
    return result


def run_p50(config: BenchConfig, url: str, profile: str = "lite") -> dict:
    """The latency of one clip at the service's own frame count, one request at a time: the
    default request (only the members that vote)."""
    measured(url, config.p50_clip, config.p50_frames)  # warm-up at this frame count
    jobs = [lambda: measured(url, config.p50_clip, config.p50_frames)] * config.p50_runs
    run = run_concurrently(jobs, 1)
    runs = run.results
    totals = run.latencies_s  # as the client sees it: upload and answer included
    figures = {
        "clip": config.p50_clip.name,
        "frames": config.p50_frames,
        "runs": len(runs),
        "p50_s": median(totals),
        "totals_s": totals,
        "stages_ms": stage_medians(runs),
    }
    print(
        f"  service {profile} p50 {figures['clip']} @ {figures['frames']} frames: "
        f"{figures['p50_s']:.2f} s",
        flush=True,
    )
    return figures


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds of `process` and its children (Triton's python backend stubs)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_alone(url: str, config: BenchConfig, processes: tuple[psutil.Process, ...]) -> dict:
    """The one-client level, each request alone: its answer with the CPU seconds each of
    `processes` spent on it (`cpu_s`, in their order)."""
    sends = [config.clips[i % len(config.clips)] for i in range(len(config.clips) * config.waves)]

    def timed(path: Path) -> dict:
        before = [cpu_s(p) for p in processes]
        answer = measured(url, path, config.frames, ALL)
        return answer | {"cpu_s": [cpu_s(p) - b for p, b in zip(processes, before, strict=True)]}

    run = run_concurrently([lambda p=p: timed(p) for p in sends], 1)
    return level_figures(run, len(sends), config.clips)


def cpu_per_request(level: dict, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{clip: {"<name>_cpu_s": median}} from a level run by run_alone."""
    clips = dict.fromkeys(a["clip"] for a in level["answers"])
    return {
        clip: {
            f"{name}_cpu_s": median([a["cpu_s"][i] for a in level["answers"] if a["clip"] == clip])
            for i, name in enumerate(names)
        }
        for clip in clips
    }
