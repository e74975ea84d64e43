"""What one bench run measures: every knob in one dataclass, filled from the command line."""

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.stack import FAKE_CLIP, MEDIA, ROOT

STAGES = ("floor", "triton", "service", "prototype", "live")
PROFILES = ("lite", "full")
# Three short clips of different sizes and people: a 10 s 1080p DFDC clip (the lite
# latency target's size), a 720p face swap and a 480p FF++ clip.
DEFAULT_CLIPS = (
    "videos/fake/dfdc_widuwuoiur.mp4",
    "videos/fake/cvprw2019_demo_fake.mp4",
    "videos/real/ffpp_c23_original_519.mp4",
)
# The shared clip that is exactly 10.0 s of 1920x1080 (see ../shared/README.md).
TEN_SECOND_1080P = "videos/fake/dfdc_widuwuoiur.mp4"


@dataclass
class BenchConfig:
    clips: list[Path] = field(default_factory=lambda: [MEDIA / c for c in DEFAULT_CLIPS])
    # 8 frames keeps the full profile (B7 + Xception, ~0.55 s per face on 2 CPU cores)
    # inside ~15 minutes for every stage; the gateway's own default is 32.
    frames: int = 8
    profiles: tuple[str, ...] = PROFILES
    stages: tuple[str, ...] = STAGES
    batches: tuple[int, ...] = (1, 8)
    concurrency: tuple[int, ...] = (1, 4)
    repeats: int = 2  # timed passes over the crops per floor/Triton measurement (median kept)
    waves: int = 2  # service: each client sends this many clips per concurrency level
    # The lite latency target is for the service as shipped: its default frame count.
    p50_clip: Path = MEDIA / TEN_SECOND_1080P
    p50_frames: int = 32
    p50_runs: int = 5
    detector: str = "scrfd"
    # --model-config-name: cpu_fast (each member at the precision model_repository/cpu_fast.toml
    # chose: the service's CPU configuration), cpu (all fp32); on a GPU (tests/bench/gpu.py)
    # config (each member's config.pbtxt: TensorRT FP16) or cuda (fp32, no TensorRT)
    triton_config: str = "cpu_fast"
    # The gateway's GATEWAY_VIDEO_HWACCEL: cuda decodes on NVDEC; "" on the CPU.
    hwaccel: str = ""
    # Live: frames sent on /api/live at each rate (the page's default range), lite only.
    live_clip: Path = FAKE_CLIP
    live_rates: tuple[float, ...] = (2.0, 5.0)
    live_seconds: float = 20.0
    out: Path = ROOT / "results" / "bench"

    def to_json(self) -> dict:
        return asdict(self)  # Paths are written with json's default=str


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--clips", type=_csv, help="comma-separated video paths (default: 3 clips)")
    p.add_argument("--max-clips", type=int, help="use only the first N clips")
    p.add_argument("--frames", type=int, default=d.frames, help="frames sampled per clip")
    p.add_argument("--profiles", type=_csv, default=list(d.profiles), help="lite,full")
    p.add_argument("--stages", type=_csv, default=list(d.stages), help=",".join(STAGES))
    p.add_argument("--batches", type=_csv, default=[str(b) for b in d.batches], help="1,8")
    p.add_argument(
        "--concurrency", type=_csv, default=[str(c) for c in d.concurrency], help="clients: 1,4"
    )
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed passes (median kept)")
    p.add_argument(
        "--waves", type=int, default=d.waves, help="service: rounds of max(clips, clients) requests"
    )
    p.add_argument("--p50-clip", type=Path, default=d.p50_clip, help="the lite p50 clip")
    p.add_argument("--p50-frames", type=int, default=d.p50_frames, help="its frame count")
    p.add_argument("--p50-runs", type=int, default=d.p50_runs, help="0 skips the lite p50")
    p.add_argument("--detector", choices=["scrfd", "yunet"], default=d.detector)
    p.add_argument(
        "--triton-config",
        default=d.triton_config,
        help="cpu_fast, cpu (all fp32); on a GPU: config (TensorRT FP16), cuda",
    )
    p.add_argument("--hwaccel", choices=["", "cuda"], default=d.hwaccel, help="cuda: NVDEC")
    p.add_argument("--live-clip", type=Path, default=d.live_clip, help="live: frames of")
    p.add_argument(
        "--live-rates", type=_csv, default=[f"{r:g}" for r in d.live_rates], help="frames/s"
    )
    p.add_argument("--live-seconds", type=float, default=d.live_seconds, help="per rate")
    p.add_argument("--out", type=Path, default=d.out)
    a = p.parse_args(argv)
    clips = [Path(c) for c in a.clips] if a.clips else d.clips
    unknown = sorted(set(a.stages) - set(STAGES)) + sorted(set(a.profiles) - set(PROFILES))
    if unknown:
        p.error(f"unknown stage or profile: {unknown}")
    return BenchConfig(
        clips=clips[: a.max_clips] if a.max_clips else clips,
        frames=a.frames,
        profiles=tuple(p for p in PROFILES if p in a.profiles),
        stages=tuple(s for s in STAGES if s in a.stages),
        batches=tuple(int(b) for b in a.batches),
        concurrency=tuple(int(c) for c in a.concurrency),
        repeats=a.repeats,
        waves=a.waves,
        p50_clip=a.p50_clip,
        p50_frames=a.p50_frames,
        p50_runs=a.p50_runs,
        detector=a.detector,
        triton_config=a.triton_config,
        hwaccel=a.hwaccel,
        live_clip=a.live_clip,
        live_rates=tuple(float(r) for r in a.live_rates),
        live_seconds=a.live_seconds,
        out=a.out,
    )
