"""python -m tests.bench [--help]: the stages on the same clips, then the report."""

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

from tests.bench import report
from tests.bench.config import BenchConfig, parse_args
from tests.bench.floor import run_floor
from tests.bench.inputs import (
    all_crops,
    check_exported,
    choose_precisions,
    load_clips,
    machine_facts,
    members_of,
    precision,
)
from tests.bench.live import run_live
from tests.bench.prototype import run_prototype
from tests.bench.service import cpu_per_request, run_p50, run_service
from tests.bench.triton_stage import ENSEMBLE, run_triton
from tests.stack import local_triton, measured_gateway


def note_load(result: dict, stage: str) -> None:
    """The 1-minute load average as each stage ends: on a shared machine, figures taken
    minutes apart are comparable only if the load was alike."""
    result.setdefault("load_average_1m", {})[stage] = round(os.getloadavg()[0], 2)


def needed_members(profiles: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(m for p in profiles for m in members_of(p)))


def run_served(config: BenchConfig, result: dict, crops: np.ndarray, work: Path) -> None:
    """Triton and the gateway, one profile at a time (the full Triton alone takes ~8 GB)."""
    measured: set[str] = set()
    for profile in sorted(config.profiles, key=lambda p: p != "full"):
        print(f"[{profile}] starting Triton", flush=True)
        with local_triton(profile, work, config.triton_config) as server:
            url = server.settings.grpc_url
            if "triton" in config.stages:
                # Members are the same models in both profiles: measure each once.
                models = [m for m in members_of(profile) if m not in measured] + [ENSEMBLE]
                result.setdefault("triton", {})[profile] = run_triton(config, url, crops, models)
                measured |= set(models)
                note_load(result, f"triton {profile}")
            if {"service", "live"} & set(config.stages):
                in_flight = max(4, *config.concurrency)
                with measured_gateway(
                    url,
                    work,
                    frames=config.frames,
                    max_in_flight=in_flight,
                    detector=config.detector,
                    video_hwaccel=config.hwaccel,
                ) as gw:
                    if "service" in config.stages:
                        processes = (gw.process, psutil.Process(server.process.pid))
                        service = run_service(config, gw.url, profile, processes)
                        result.setdefault("service", {})[profile] = service
                        note_load(result, f"service {profile}")
                        if "c1" in service:
                            cpu = cpu_per_request(service["c1"], ("gateway", "triton"))
                            result.setdefault("service_cpu", {})[profile] = cpu
                        if profile == "lite" and config.p50_runs > 0:
                            result["p50"] = run_p50(config, gw.url)
                            note_load(result, "p50")
                        if profile == "full" and config.p50_runs > 0:
                            # The default full request: only the members that vote run.
                            result["p50_default_full"] = run_p50(config, gw.url, "full")
                            note_load(result, "p50 default full")
                    if "live" in config.stages and profile == "lite":
                        result["live"] = run_live(config, gw.url)
                        note_load(result, "live")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    check_exported(config.profiles)
    choose_precisions(config.triton_config)
    started = time.perf_counter()
    members = needed_members(config.profiles)
    said = {m: precision(m, config.triton_config) for m in members}
    result: dict = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "config": config.to_json(),
        "precision": {m: p for m, (p, _) in said.items()},
        "precision_reason": {m: why for m, (_, why) in said.items()},
    }
    print(
        f"bench: profiles {config.profiles}, stages {config.stages}, {config.frames} frames, "
        f"batches {config.batches}, concurrency {config.concurrency}, repeats "
        f"{config.repeats}; results in {config.out}",
        flush=True,
    )
    print(f"  CPU: {result['machine']['cpu_units']['why']}", flush=True)
    for member, why in result["precision_reason"].items():
        print(f"  {config.triton_config} {member}: {why}", flush=True)
    clips = load_clips(config)
    result["clips"] = [
        {
            "clip": c.name,
            "width": c.info.width,
            "height": c.info.height,
            "duration_s": c.info.duration_s,
            "faces": len(c.crops),
            "decode_cpu_s": c.decode_cpu_s,
            "detect_cpu_s": c.detect_cpu_s,
        }
        for c in clips
    ]
    for c in result["clips"]:
        print(
            f"  clip {c['clip']}: {c['width']}x{c['height']}, {c['duration_s']:.1f} s, "
            f"{c['faces']} faces in {config.frames} frames",
            flush=True,
        )
    if "floor" in config.stages:
        print("[floor] in process, in each member's runtime", flush=True)
        result["floor"] = run_floor(config, clips, needed_members(config.profiles))
        note_load(result, "floor")
    if "prototype" in config.stages:
        print("[prototype] eager PyTorch, frame by frame", flush=True)
        result["prototype"] = {p: run_prototype(config, members_of(p), p) for p in config.profiles}
        note_load(result, "prototype")
    if {"triton", "service", "live"} & set(config.stages):
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            run_served(config, result, all_crops(clips), Path(work))
    result["elapsed_s"] = time.perf_counter() - started
    report.finish(result, config)
    print(f"bench: {result['elapsed_s']:.0f} s; {config.out / 'bench.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
