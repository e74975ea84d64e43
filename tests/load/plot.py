"""The load test's plot: memory over the run, latency percentiles and throughput per phase."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt


def plot_run(result: dict, path: Path) -> None:
    fig, (mem, lat) = plt.subplots(1, 2, figsize=(13, 4.5))
    samples = result.get("memory", [])
    for name in ("gateway", "triton"):
        points = [(s["t"], s[name]) for s in samples if name in s]
        if points:
            mem.plot(*zip(*points, strict=True), label=f"{name} RSS")
    for phase in result["phases"]:
        start, end = phase["window_s"]
        mem.axvspan(start, end, alpha=0.08, color="red" if phase["expect_shedding"] else "green")
        mem.text(
            start,
            0.02,
            f" {phase['name']} ({phase['users']} users)",
            transform=mem.get_xaxis_transform(),  # x in seconds, y in axes fraction
            fontsize=8,
        )
    mem.set_xlabel("seconds")
    mem.set_ylabel("MB (process + children)")
    mem.set_title("memory over the run")
    mem.legend()
    labels, p50, p95, p99, rps = [], [], [], [], []
    for phase in result["phases"]:
        for name, x in phase["by_request"].items():
            if name == "Aggregated":
                continue
            kind = "gRPC" if name.startswith("gRPC") else name.rsplit("[", 1)[-1].rstrip("]")
            labels.append(f"{phase['name']}\n{kind}")
            answered = x["answered"]  # shed requests answer at once: they would hide the load
            p50.append(answered["p50_ms"] / 1000)
            p95.append(answered["p95_ms"] / 1000)
            p99.append(answered["p99_ms"] / 1000)
            rps.append(x["throughput_rps"])
    positions = range(len(labels))
    width = 0.27
    lat.bar([i - width for i in positions], p50, width, label="p50")
    lat.bar(list(positions), p95, width, label="p95")
    lat.bar([i + width for i in positions], p99, width, label="p99")
    lat.set_xticks(list(positions), labels, fontsize=7)
    lat.set_ylabel("seconds")
    lat.set_title("latency of answered requests (all requests/s above)")
    for i, r in enumerate(rps):
        lat.text(i, max(p99[i], 0), f"{r:.2f}/s", ha="center", va="bottom", fontsize=7)
    lat.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
