"""The bench's results: a table, the ratios line, JSON and PNG plots in results/bench/."""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt

from tests.bench.config import BenchConfig
from tests.bench.floor import clip_compute, ensemble_faces_per_s
from tests.bench.inputs import members_of
from tests.bench.measure import median
from tests.bench.triton_stage import ENSEMBLE

# The issue's targets, as (comparison, bound); a ratio not measured this run is skipped.
TARGETS = {
    "service_vs_prototype_full_c4": (">=", 3.0),
    "triton_vs_inprocess_full_c4": (">=", 0.9),
    "lite_p50_s_10s_1080p": ("<=", 1.5),
    "full_vs_compute_c1": ("<=", 1.15),
    "triton_vs_inprocess_lite_c4": (">=", 0.9),
    "default_full_p50_vs_lite": ("<=", 1.2),
}
SERVICE_STAGES = ("decode", "detect", "infer", "aggregate")


def ratios(result: dict, config: BenchConfig) -> dict[str, float]:
    """Same-run ratios: service vs prototype, Triton vs in-process, service vs pure compute."""
    out: dict[str, float] = {}
    c, b = max(config.concurrency), max(config.batches)
    floor, prototype = result.get("floor"), result.get("prototype", {})
    service, triton = result.get("service", {}), result.get("triton", {})
    for p in config.profiles:
        members = members_of(p)
        if p in service and p in prototype:
            out[f"service_vs_prototype_{p}_c{c}"] = (
                service[p][f"c{c}"]["videos_per_min"] / prototype[p]["videos_per_min"]
            )
        if floor and p in triton:
            out[f"triton_vs_inprocess_{p}_c{c}"] = triton[p][ENSEMBLE][f"b{b}_c{c}"][
                "faces_per_s"
            ] / ensemble_faces_per_s(floor, members, b)
        if floor and p in service and "c1" in service[p]:
            per_clip = service[p]["c1"]["per_clip_total_ms"]
            out[f"{p}_vs_compute_c1"] = median(
                [per_clip[clip] / 1000 / clip_compute(floor, members, clip) for clip in per_clip]
            )
        if p in service and "c1" in service[p]:
            # The same quantity from one process in one time window: robust to a load that
            # changed between the floor stage and this one, on a shared machine.
            stages = service[p]["c1"]["stages_ms"]
            out[f"{p}_total_vs_infer_c1"] = stages["total"] / stages["infer"]
    if "p50" in result:
        out["lite_p50_s_10s_1080p"] = result["p50"]["p50_s"]
        if "p50_default_full" in result:
            out["default_full_p50_vs_lite"] = (
                result["p50_default_full"]["p50_s"] / result["p50"]["p50_s"]
            )
    return out


def cpu_per_clip(result: dict, config: BenchConfig) -> dict:
    """Each clip's CPU seconds in the service, next to its floor: the gateway's (decode,
    detection, crops and the rest) against decode alone + detection alone in process,
    Triton's (every member, the vote) against the members alone in process."""
    floor, clips = result.get("floor"), {c["clip"]: c for c in result.get("clips", [])}
    out: dict = {}
    for p, per_clip in result.get("service_cpu", {}).items():
        for clip, served in per_clip.items():
            floors = {
                "decode_cpu_s": clips[clip]["decode_cpu_s"],
                "detect_cpu_s": clips[clip]["detect_cpu_s"],
            }
            if floor:
                floors["models_cpu_s"] = clip_compute(floor, members_of(p), clip, "clip_cpu_s")
            preprocess = floors["decode_cpu_s"] + floors["detect_cpu_s"]
            row = served | {"floor": floors}
            row["gateway_vs_floor"] = served["gateway_cpu_s"] / preprocess
            if "models_cpu_s" in floors:
                row["triton_vs_floor"] = served["triton_cpu_s"] / floors["models_cpu_s"]
            out.setdefault(p, {})[clip] = row
    return out


def cpu_table(cpu: dict) -> str:
    lines = [
        "CPU seconds per clip (models=all, one request at a time): service vs in-process floor",
        f"{'profile':<8} {'clip':<30} {'gateway':>8} {'decode+detect':>14} "
        f"{'triton':>8} {'models':>8}",
    ]
    for p, per_clip in cpu.items():
        for clip, row in per_clip.items():
            floors = row["floor"]
            models = floors.get("models_cpu_s", math.nan)
            lines.append(
                f"{p:<8} {clip[:30]:<30} {row['gateway_cpu_s']:>8.2f} "
                f"{floors['decode_cpu_s']:>6.2f}+{floors['detect_cpu_s']:<7.2f} "
                f"{row['triton_cpu_s']:>8.2f} {models:>8.2f}"
            )
    return "\n".join(lines)


def target_status(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    met = value >= bound if op == ">=" else value <= bound
    return f"target {op} {bound:g}: {'met' if met else 'NOT met'}"


def table(result: dict, config: BenchConfig) -> str:
    rows = [
        f"{'stage':<8} {'what':<22} {'config':<8} {'faces/s':>8} {'videos/min':>10} "
        f"{'p50 ms':>9} {'p95 ms':>9}  per-stage ms (median)"
    ]

    def row(
        stage: str,
        what: str,
        cfg: str,
        fps: float | None,
        vpm: float | None,
        p50: float | None,
        p95: float | None,
        extra: str = "",
    ) -> None:
        def f(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        rows.append(
            f"{stage:<8} {what:<22} {cfg:<8} {f(fps, '8.2f'):>8} {f(vpm, '10.2f'):>10} "
            f"{f(p50, '9.0f'):>9} {f(p95, '9.0f'):>9}  {extra}"
        )

    floor = result.get("floor")
    if floor:
        for m, figures in floor["models"].items():
            for b, x in figures["batch"].items():
                row("floor", m, f"b{b}", x["faces_per_s"], None, x["p50_ms"], x["p95_ms"])
        for p in config.profiles:
            for b in config.batches:
                fps = ensemble_faces_per_s(floor, members_of(p), b)
                row("floor", f"{p} members in turn", f"b{b}", fps, None, None, None)
    for p, models in result.get("triton", {}).items():
        for m, levels in models.items():
            what = f"{p} ensemble" if m == ENSEMBLE else m
            for cfg, x in levels.items():
                row("triton", what, cfg, x["faces_per_s"], None, x["p50_ms"], x["p95_ms"])
    for p, levels in result.get("service", {}).items():
        for cfg, x in levels.items():
            stages = " ".join(f"{s} {x['stages_ms'].get(s, 0):.0f}" for s in SERVICE_STAGES)
            row("service", p, cfg, None, x["videos_per_min"], x["p50_ms"], x["p95_ms"], stages)
    for p, x in result.get("prototype", {}).items():
        row(
            "prototype",
            p,
            "serial",
            None,
            x["videos_per_min"],
            x["median_clip_s"] * 1000,
            None,
            f"model {median([c['model_s'] for c in x['clips']]) * 1000:.0f} per clip",
        )
    if "p50" in result:
        x = result["p50"]
        row(
            "service",
            f"lite {x['clip'][:17]}",
            f"{x['frames']}fr",
            None,
            None,
            x["p50_s"] * 1000,
            None,
            " ".join(f"{s} {x['stages_ms'].get(s, 0):.0f}" for s in SERVICE_STAGES),
        )
    for cfg, x in result.get("live", {}).get("rates", {}).items():
        extra = f"sent {x['sent']}, judged {x['judged']}, dropped {x['dropped']}"
        row("live", "lite /api/live", cfg, None, None, x["p50_ms"], x["p95_ms"], extra)
    return "\n".join(rows)


def ratios_line(values: dict[str, float]) -> str:
    return "RATIOS " + " ".join(f"{k}={v:.3g}" for k, v in values.items())


def plot_throughput(result: dict, config: BenchConfig, path: Path) -> None:
    """Ensemble faces/s: in-process floor vs Triton at each batch and concurrency."""
    profiles = [p for p in config.profiles if p in result.get("triton", {})]
    fig, axes = plt.subplots(
        1, max(1, len(profiles)), figsize=(6 * max(1, len(profiles)), 4), squeeze=False
    )
    for ax, p in zip(axes[0], profiles, strict=False):
        labels, values, colours = [], [], []
        if result.get("floor"):
            for b in config.batches:
                labels.append(f"ORT b{b}")
                values.append(ensemble_faces_per_s(result["floor"], members_of(p), b))
                colours.append("tab:grey")
        for cfg, x in result["triton"][p][ENSEMBLE].items():
            labels.append(f"Triton {cfg}")
            values.append(x["faces_per_s"])
            colours.append("tab:blue")
        ax.bar(labels, values, color=colours)
        ax.set_title(f"{p}: ensemble throughput (faces/s)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_service(result: dict, path: Path) -> None:
    """Left: videos/min, service vs prototype. Right: the service's stage times."""
    service, prototype = result.get("service", {}), result.get("prototype", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"prototype {p}" for p in prototype] + [
        f"service {p} {c}" for p in service for c in service[p]
    ]
    values = [x["videos_per_min"] for x in prototype.values()] + [
        service[p][c]["videos_per_min"] for p in service for c in service[p]
    ]
    left.bar(
        labels,
        values,
        color=["tab:red"] * len(prototype) + ["tab:blue"] * (len(values) - len(prototype)),
    )
    left.set_title("videos per minute")
    left.tick_params(axis="x", rotation=30)
    names = [f"{p} {c}" for p in service for c in service[p]]
    bottom = [0.0] * len(names)
    for stage in SERVICE_STAGES:
        heights = [
            service[p][c]["stages_ms"].get(stage, 0) / 1000 for p in service for c in service[p]
        ]
        right.bar(names, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set_title("service: median seconds per stage")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def precision_lines(result: dict, config: BenchConfig) -> str:
    """The CPU's units and what each member computed in: figures from a CPU without BF16
    units are not comparable with figures from one with them."""
    units = result["machine"]["cpu_units"]
    lines = [f"CPU: {units['why']} (flags {' '.join(units['flags']) or 'none of note'})"]
    lines += [
        f"  {config.triton_config} {member}: {why or result['precision'][member]}"
        for member, why in result.get("precision_reason", {}).items()
    ]
    return "\n".join(lines)


def finish(result: dict, config: BenchConfig) -> dict[str, float]:
    """Print the table and ratios, write JSON and plots; returns the ratios."""
    values = {k: v for k, v in ratios(result, config).items() if math.isfinite(v)}
    result["ratios"] = values
    result["targets"] = {k: target_status(k, v) for k, v in values.items() if k in TARGETS}
    result["cpu_per_clip"] = cpu_per_clip(result, config)
    text = precision_lines(result, config) + "\n" + table(result, config)
    if result["cpu_per_clip"]:
        text += "\n\n" + cpu_table(result["cpu_per_clip"])
    config.out.mkdir(parents=True, exist_ok=True)
    plots = {"throughput": config.out / "throughput.png", "service": config.out / "service.png"}
    if result.get("triton"):
        plot_throughput(result, config, plots["throughput"])
    if result.get("service") or result.get("prototype"):
        plot_service(result, plots["service"])
    result["plots"] = {k: str(v) for k, v in plots.items() if v.exists()}
    (config.out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    (config.out / "summary.txt").write_text(text + "\n" + ratios_line(values) + "\n")
    print(text)
    if "load_average_1m" in result:
        print("  load average (1 min) as each stage ended:", result["load_average_1m"])
    for k, status in result["targets"].items():
        print(f"  {k} = {values[k]:.3g}  ({status})")
    print(ratios_line(values), flush=True)
    return values
