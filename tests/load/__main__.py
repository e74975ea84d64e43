"""python -m tests.load [--help]: locust, headless, in phases, with memory sampled.

By default it starts its own stack (a local Triton and the gateway on free loopback
ports) and runs two phases: `steady` (below saturation: every request must succeed) and
`overload` (more uploaders than the gateway admits: it must shed with 429/503, not time
out or fail). `--url` targets a running gateway instead (pass `--triton-url` for the gRPC
user; the processes' memory is found by the ports they listen on).
"""

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from tests.bench.config import MEDIA, ROOT, BenchConfig
from tests.bench.inputs import all_crops, load_clips, machine_facts
from tests.load.memory import MemorySampler, pid_listening_on
from tests.load.plot import plot_run
from tests.stack import local_triton, measured_gateway

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_MEDIA = (
    "videos/fake/dfdc_widuwuoiur.mp4",
    "videos/real/ffpp_c23_original_519.mp4",
    "images/real/face_recognition_obama.jpg",
    "images/fake/dfdc_mqzvfufzoq_fr0.jpg",
)
SHED = {"429", "503"}
OK = {"200", "OK"}


@dataclass
class Phase:
    name: str
    users: int
    run_time_s: int
    expect_shedding: bool


@dataclass
class LoadConfig:
    profile: str = "lite"
    url: str | None = None  # a running gateway; None: start our own stack
    triton_url: str | None = None
    media: list[Path] = field(default_factory=lambda: [MEDIA / m for m in DEFAULT_MEDIA])
    frames: int = 8
    users: int = 3  # below saturation: the gateway admits max_in_flight uploads at once
    overload_users: int = 12  # above it; 0 skips the overload phase
    run_time_s: int = 60
    ramp_s: int = 10
    grpc: bool = True
    max_in_flight: int = 4  # our own gateway's admission limit
    out: Path = ROOT / "results" / "loadtest"

    def phases(self) -> list[Phase]:
        phases = [Phase("steady", self.users, self.run_time_s, False)]
        if self.overload_users:
            phases.append(Phase("overload", self.overload_users, self.run_time_s, True))
        return phases


def parse_args(argv: list[str] | None) -> LoadConfig:
    d = LoadConfig()
    p = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__)
    p.add_argument("--profile", choices=["lite", "full"], default=d.profile)
    p.add_argument("--url", help="a running gateway (loopback), e.g. http://127.0.0.1:8080")
    p.add_argument("--triton-url", help="its Triton's gRPC address, for the gRPC user")
    p.add_argument("--media", help="files separated by commas (default: 2 clips, 2 images)")
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--users", type=int, default=d.users, help="steady phase: users")
    p.add_argument("--overload-users", type=int, default=d.overload_users, help="0: skip")
    p.add_argument("--run-time", type=int, default=d.run_time_s, help="seconds per phase")
    p.add_argument("--ramp", type=int, default=d.ramp_s, help="seconds to reach the users")
    p.add_argument("--no-grpc", action="store_true", help="only the HTTP user")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    p.add_argument("--out", type=Path, default=d.out)
    a = p.parse_args(argv)
    if a.url and urlparse(a.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("the load test targets loopback only")
    return LoadConfig(
        profile=a.profile,
        url=a.url,
        triton_url=a.triton_url,
        media=[Path(m) for m in a.media.split(",")] if a.media else d.media,
        frames=a.frames,
        users=a.users,
        overload_users=a.overload_users,
        run_time_s=a.run_time,
        ramp_s=a.ramp,
        grpc=not a.no_grpc and (a.url is None or a.triton_url is not None),
        max_in_flight=a.max_in_flight,
        out=a.out,
    )


@dataclass(frozen=True)
class Target:
    url: str
    triton_url: str | None
    gateway_pid: int | None
    triton_pid: int | None


@contextlib.contextmanager
def target(config: LoadConfig, work: Path) -> Iterator[Target]:
    if config.url:
        port = urlparse(config.url).port or 80
        tport = int(config.triton_url.rsplit(":", 1)[1]) if config.triton_url else None
        yield Target(
            config.url,
            config.triton_url,
            pid_listening_on(port),
            pid_listening_on(tport) if tport else None,
        )
        return
    with local_triton(config.profile, work) as server:
        url = server.settings.grpc_url
        settings = {"frames": config.frames, "max_in_flight": config.max_in_flight}
        with measured_gateway(url, work, **settings) as gw:
            assert server.process is not None
            yield Target(gw.url, url, gw.pid, server.process.pid)


def stats_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": round(p50), "p95_ms": round(p95), "p99_ms": round(p99)}


def summarise(phase: Phase, prefix: Path, tallies: dict) -> dict:
    status: dict[str, dict[str, int]] = tallies.get("statuses", {})
    ok_ms: dict[str, list[float]] = tallies.get("ok_ms", {})
    rows = stats_rows(prefix.with_name(prefix.name + "_stats.csv"))
    per_name = {}
    for row in rows:
        name = row["Name"]
        counts = status.get(name, {}) if name != "Aggregated" else {}
        if name == "Aggregated":
            for c in status.values():
                for k, v in c.items():
                    counts[k] = counts.get(k, 0) + v
        total = sum(counts.values())
        shed = sum(v for k, v in counts.items() if k in SHED)
        errors = sum(v for k, v in counts.items() if k not in SHED | OK)
        per_name[name] = {
            # locust's CSV is written a moment before the last answers land; the tally is whole
            "requests": total or int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "statuses": counts,
            "ok": sum(v for k, v in counts.items() if k in OK),
            "shed": shed,
            "errors": errors,
            "error_rate": errors / total if total else 0.0,
            "shed_rate": shed / total if total else 0.0,
            "throughput_rps": float(row["Requests/s"]),
            "p50_ms": float(row["50%"] or 0),
            "p95_ms": float(row["95%"] or 0),
            "p99_ms": float(row["99%"] or 0),
            "answered": percentiles_ms(
                [v for vs in ok_ms.values() for v in vs]
                if name == "Aggregated"
                else ok_ms.get(name, [])
            ),
        }
    history = stats_rows(prefix.with_name(prefix.name + "_stats_history.csv"))
    return {**asdict(phase), "by_request": per_name, "history": history}


def run_phase(config: LoadConfig, phase: Phase, tgt: Target, crops: Path, work: Path) -> dict:
    prefix = work / phase.name
    status_file = work / f"{phase.name}-status.json"
    env = dict(os.environ) | {
        "LOAD_MEDIA": os.pathsep.join(str(m) for m in config.media),
        "LOAD_FRAMES": str(config.frames),
        "LOAD_TRITON_URL": tgt.triton_url or "",
        "LOAD_CROPS": str(crops),
        "LOAD_STATUS_FILE": str(status_file),
    }
    users = ["GatewayUser", "JobUser"]
    users += ["EnsembleUser"] if config.grpc and tgt.triton_url else []
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        # +1: the JobUser (fixed_count 1) beside the phase's uploaders and gRPC users.
        "--host", tgt.url, "-u", str(phase.users + 1),
        "-r", f"{(phase.users + 1) / max(config.ramp_s, 1):.3f}",
        "-t", f"{phase.run_time_s}s", "--stop-timeout", "120",
        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
        "--exit-code-on-error", "0", *users,
    ]  # fmt: skip
    print(
        f"[{phase.name}] {phase.users} users over {config.ramp_s} s, {phase.run_time_s} s: "
        f"{' '.join(users)}",
        flush=True,
    )
    log = work / f"{phase.name}-locust.log"
    with log.open("wb") as out:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=phase.run_time_s + 300,
        )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"locust failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    return summarise(phase, prefix, status)


def verdict(phase: dict) -> str:
    total = phase["by_request"].get("Aggregated", {})
    if total.get("errors", 0):
        return f"FAIL: {total['errors']} errors (timeouts, resets or 5xx other than 503)"
    if not phase["expect_shedding"] and total.get("shed", 0):
        return f"saturated: {total['shed']} shed below the expected saturation point"
    return "ok"


def crops_file(config: LoadConfig, work: Path) -> Path:
    """Real faces from the same clips, cut by the project's preprocess, for the gRPC user."""
    videos = [m for m in config.media if m.suffix.lower() in {".mp4", ".avi", ".mov", ".mkv"}]
    bench = BenchConfig(clips=videos or config.media, frames=min(config.frames, 8))
    path = work / "crops.npy"
    np.save(path, all_crops(load_clips(bench)))
    return path


def print_phase(phase: dict) -> None:
    print(f"[{phase['name']}] {verdict(phase)}")
    for name, x in phase["by_request"].items():
        print(
            f"  {name:<42} n={x['requests']:<5} {x['throughput_rps']:6.2f} req/s  "
            f"p50 {x['p50_ms']:7.0f}  p95 {x['p95_ms']:7.0f}  p99 {x['p99_ms']:7.0f} ms  "
            f"errors {x['error_rate']:.1%}  shed {x['shed_rate']:.1%}  {x['statuses']}"
        )
        a = x["answered"]
        print(
            f"  {'':<42} answered only: p50 {a['p50_ms']:7.0f}  p95 {a['p95_ms']:7.0f}  "
            f"p99 {a['p99_ms']:7.0f} ms"
        )
    mem = phase["memory_peak_mb"]
    print(
        f"  peak RSS: gateway {mem.get('gateway', 0):.0f} MB, triton {mem.get('triton', 0):.0f} MB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result: dict = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "config": asdict(config),
        "phases": [],
    }
    config.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, \
            target(config, Path(tmp)) as tgt:  # fmt: skip
        work = Path(tmp)
        crops = crops_file(config, work)
        pids = {"gateway": tgt.gateway_pid, "triton": tgt.triton_pid}
        with MemorySampler({k: v for k, v in pids.items() if v}) as sampler:
            for phase in config.phases():
                began = sampler.elapsed()
                summary = run_phase(config, phase, tgt, crops, work)
                summary["window_s"] = [began, sampler.elapsed()]
                summary["memory_peak_mb"] = sampler.peak_mb(began)
                summary["verdict"] = verdict(summary)
                result["phases"].append(summary)
                print_phase(summary)
        result["memory"] = sampler.samples
    plot = config.out / "loadtest.png"
    plot_run(result, plot)
    result["plot"] = str(plot)
    (config.out / "loadtest.json").write_text(json.dumps(result, indent=2, default=str))
    failed = [p["name"] for p in result["phases"] if p["verdict"].startswith("FAIL")]
    print(
        "LOADTEST "
        + " ".join(f"{p['name']}={p['verdict'].split(':')[0]}" for p in result["phases"])
        + f"; {config.out / 'loadtest.json'}, {plot}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
