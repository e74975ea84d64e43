"""`make bench` and `make loadtest` end to end in their smallest configuration.

Real processes (a lite Triton, the gateway, locust), one clip, two frames, a few seconds
of load: the outputs must be complete and consistent. No figure is compared with a
speed: these machines are shared and noisy; the figures only have to exist and be sane.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.repository import profile_members
from model_repository.local_triton import REPOSITORY

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(module: str, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.fixture(scope="module")
def bench(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    stdout = run(
        "tests.bench",
        "--profiles=lite",
        "--max-clips=1",
        "--frames=2",
        "--batches=1,2",
        "--concurrency=1,2",
        "--repeats=1",
        "--waves=1",
        "--p50-runs=1",
        "--p50-frames=2",
        "--live-seconds=2",
        f"--out={out}",
    )
    return stdout, json.loads((out / "bench.json").read_text()), out


def test_bench_measures_every_stage_on_the_same_faces(bench: tuple[str, dict, Path]) -> None:
    _, result, _ = bench
    assert {
        "machine",
        *("config", "clips", "floor", "triton", "service", "prototype", "p50", "live"),
        *("service_cpu", "cpu_per_clip", "precision"),
    } <= set(result)
    for rate in result["live"]["rates"].values():
        assert rate["judged"] >= 1 and rate["judged"] + rate["dropped"] == rate["sent"]
    assert result["machine"]["logical_cores"] >= 1 and result["machine"]["cpu"]
    faces = result["clips"][0]["faces"]
    assert faces >= 1
    lite = profile_members(REPOSITORY, "lite")
    for member in lite:
        floor = result["floor"]["models"][member]
        assert set(floor["batch"]) == {"1", "2"}  # JSON keys
        assert all(x["faces"] == faces and x["faces_per_s"] > 0 for x in floor["batch"].values())
        assert floor["clip_compute_s"][result["clips"][0]["clip"]] > 0
        levels = result["triton"]["lite"][member]
        assert set(levels) == {"b1_c1", "b1_c2", "b2_c1", "b2_c2"}
    ensemble = result["triton"]["lite"]["deepfake_ensemble"]
    # each client has a request: the crops go round again when there are fewer batches
    assert all(x["faces"] % faces == 0 and x["faces_per_s"] > 0 for x in ensemble.values())
    assert all(x["requests"] >= 2 for k, x in ensemble.items() if k.endswith("_c2"))
    service = result["service"]["lite"]
    assert set(service) == {"c1", "c2"}
    for level in service.values():
        assert level["videos_per_min"] > 0
        assert {"decode", "detect", "infer", "aggregate"} <= set(level["stages_ms"])
        # the service scored the faces the floor and Triton were given
        assert all(a["faces"] == faces for a in level["answers"])
    prototype = result["prototype"]["lite"]
    assert prototype["clips"][0]["faces"] == faces and prototype["videos_per_min"] > 0
    assert set(prototype["clips"][0]["mean_p_fake"]) == set(lite)
    assert result["p50"]["p50_s"] > 0 and result["p50"]["clip"] == "dfdc_widuwuoiur.mp4"
    # every stage's CPU seconds next to its floor: the gateway's against decode + detection
    # alone, Triton's against the members alone, on the same clip and frames
    cpu = result["cpu_per_clip"]["lite"][result["clips"][0]["clip"]]
    assert set(cpu["floor"]) == {"decode_cpu_s", "detect_cpu_s", "models_cpu_s"}
    assert all(v > 0 for v in cpu["floor"].values())
    assert cpu["gateway_cpu_s"] > 0 and cpu["triton_cpu_s"] > 0
    assert result["precision"] == {m: "fp32" for m in lite}
    # the CPU's units, and why each member computed in what it did on them
    units = result["machine"]["cpu_units"]
    assert units["kind"] in {"bf16_units", "vnni_units", "none"} and units["why"]
    assert set(result["precision_reason"]) == set(lite)
    assert all(why.startswith("fp32: ") for why in result["precision_reason"].values())


def test_bench_prints_the_ratios_and_draws_the_plots(bench: tuple[str, dict, Path]) -> None:
    stdout, result, out = bench
    line = next(x for x in stdout.splitlines() if x.startswith("RATIOS "))
    printed = dict(item.split("=") for item in line.split()[1:])
    expected = {
        "service_vs_prototype_lite_c2",
        "triton_vs_inprocess_lite_c2",
        "lite_vs_compute_c1",
        "lite_total_vs_infer_c1",
        "lite_p50_s_10s_1080p",
    }
    assert set(printed) == expected == set(result["ratios"])
    assert all(float(v) > 0 for v in printed.values())
    for name in ("throughput", "service"):
        assert_png(out / f"{name}.png")
    assert (out / "summary.txt").read_text().strip().endswith(line)


def test_loadtest_holds_low_load_and_sheds_above_it(exported: Path, tmp_path: Path) -> None:
    stdout = run(
        "tests.load",
        "--profile=lite",
        "--frames=2",
        "--users=2",
        "--overload-users=6",
        "--max-in-flight=1",
        "--run-time=6",
        "--ramp=1",
        f"--out={tmp_path}",
    )
    result = json.loads((tmp_path / "loadtest.json").read_text())
    assert "LOADTEST " in stdout
    assert_png(tmp_path / "loadtest.png")
    steady, overload = result["phases"]
    assert steady["name"] == "steady" and overload["name"] == "overload"
    for phase in (steady, overload):
        names = set(phase["by_request"])
        assert "Aggregated" in names and any(n.startswith("gRPC") for n in names)
        total = phase["by_request"]["Aggregated"]
        assert total["requests"] > 0 and total["throughput_rps"] > 0
        assert total["errors"] == 0, total["statuses"]  # no timeout, reset or 500
        assert set(total["statuses"]) <= {"200", "OK", "429", "503"}
        assert phase["memory_peak_mb"]["gateway"] > 0 and phase["memory_peak_mb"]["triton"] > 0
    assert steady["by_request"]["Aggregated"]["ok"] > 0
    # six uploaders against an admission limit of one: the gateway must refuse some
    assert overload["by_request"]["Aggregated"]["shed"] > 0
    assert len(result["memory"]) > 1
