"""Each member's CPU runtime under --model-config-name=cpu_fast, and the comparison that
chose it.

    python -m export.runtimes                       # compare every exported member
    python -m export.runtimes --members xception,efficientnet_b7
    python -m export.runtimes --write-configs       # write cpu_fast for this CPU, and say

`model_repository/cpu_fast.toml` names the precision each member runs at on each kind of
CPU (model_repository/cpu_features.py): on one with BF16 units (AVX-512 BF16 or AMX) its
`bf16_units` table, on one with VNNI only its `vnni_units` table, elsewhere fp32. "bf16" is
OpenVINO, bfloat16 (Triton's openvino backend reads the same model.onnx), "int8" ONNX
Runtime on the validated file of export/quantize.py, and every member a table does not
name runs fp32 (ONNX Runtime, as under cpu).

The choice is made for the CPU that serves, when it starts: local_triton calls
write_fast_configs, which writes every member's configs/cpu_fast.pbtxt (git-ignored) from
its committed configs/cpu.pbtxt, with the `precision` and a `precision_reason` the gateway
shows in /api/models ("bf16: avx512_bf16, amx_bf16 present"). Nothing committed depends on
the machine export ran on.

A choice is served only where it keeps the scores. A trained bf16 member is checked
when export writes its graph (refresh): max |ΔP_FAKE| <= quantize.MAX_DELTA on crops the
project's pipeline cuts from the shared clips and the same verdict on every clip, kept
as `1/model.bf16.json`; an int8 member needs an int8 file quantized from its graph.
Otherwise its cpu_fast config is fp32 and says why. With random weights only the speed
means something, and the check runs when real weights come.

The comparison runs each member in process as Triton serves it (2 threads, idle threads
asleep): ONNX Runtime fp32 and int8 (where model.int8.onnx exists), OpenVINO fp32, bf16
and int8; CPU ms per face at batch 1 and 8 and max |ΔP_FAKE| against ONNX Runtime fp32.
It prints a table and writes results/runtimes.json.
"""

import argparse
import json
import logging
import os
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import openvino as ov
from tritonclient.grpc.model_config_pb2 import ModelConfig

from export import quantize
from export.repository import quoted, read_config
from model_repository.cpu_features import (
    BF16_UNITS,
    NO_UNITS,
    VNNI_UNITS,
    CpuUnits,
    cpu_flags,
    cpu_units,
)
from preprocess.tensors import INPUT_NAME

log = logging.getLogger("export.runtimes")
CONFIG_NAME = "cpu_fast"
CHOICE_FILE = "cpu_fast.toml"
PRECISIONS = ("fp32", "int8", "bf16")
# What each table of cpu_fast.toml may choose: bf16 only where BF16 units exist.
ALLOWED = {BF16_UNITS: PRECISIONS, VNNI_UNITS: ("fp32", "int8")}
BF16_CHECK = "model.bf16.json"
CHECKED_ON = "checked_on"  # the kind of CPU a bf16 check ran on (model.bf16.json)
RESULTS = quantize.ROOT / "results" / "runtimes.json"
CONFIG_HEADER = (
    "# Written for this CPU when the local Triton starts (export/runtimes.py), from\n"
    "# configs/cpu.pbtxt and model_repository/cpu_fast.toml (--model-config-name=cpu_fast).\n"
)


def choices(repo: Path) -> dict[str, dict[str, str]]:
    """{kind of CPU: {member: precision}} from cpu_fast.toml (empty without the file)."""
    path = repo / CHOICE_FILE
    tables = tomllib.loads(path.read_text()) if path.exists() else {}
    unknown_kinds = sorted(set(tables) - set(ALLOWED))
    if unknown_kinds:
        raise ValueError(f"{CHOICE_FILE}: no such kind of CPU {unknown_kinds}: {list(ALLOWED)}")
    for kind, chosen in tables.items():
        wrong = {m: p for m, p in chosen.items() if p not in ALLOWED[kind]}
        if wrong:  # bf16 without BF16 units runs at fp32 speed: the very mistake to avoid
            raise ValueError(
                f"{CHOICE_FILE} [{kind}]: precision must be one of {ALLOWED[kind]}: {wrong}"
            )
        unknown = [m for m in chosen if not (repo / "members" / m).is_dir()]
        if unknown:  # a misspelt member would silently stay fp32
            raise ValueError(f"{CHOICE_FILE} [{kind}]: no such member {unknown}")
    return tables


def choice(repo: Path, units: CpuUnits) -> dict[str, str]:
    """{member: precision} on a CPU with `units`; members not named run fp32."""
    return choices(repo).get(units.kind, {})


def openvino_runner(path: Path, bf16: bool, threads: int = 2) -> quantize.Runner:
    """OpenVINO on the CPU with the properties Triton's openvino backend sets."""
    properties = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
    }
    request = ov.Core().compile_model(str(path), "CPU", properties).create_infer_request()
    return lambda faces: request.infer({INPUT_NAME: faces})[0].reshape(-1)


def _served_config(member_dir: Path, config_name: str) -> ModelConfig | None:
    configured = member_dir / "configs" / f"{config_name}.pbtxt"
    return read_config(configured) if configured.exists() else None


def served_backend(member_dir: Path, config_name: str) -> str:
    """The backend Triton runs `member_dir` with under configs/<config_name>.pbtxt."""
    config = _served_config(member_dir, config_name)
    return config.backend if config else "onnxruntime"


def served_runner(member_dir: Path, config_name: str, threads: int = 2) -> quantize.Runner:
    """A member run in process as Triton serves it under configs/<config_name>.pbtxt."""
    config = _served_config(member_dir, config_name)
    filename = (config.default_model_filename if config else "") or "model.onnx"
    path = member_dir / "1" / filename
    if config is not None and config.backend == "openvino":
        bf16 = config.parameters["HINT_BF16"].string_value == "YES"
        return openvino_runner(path, bf16, threads)
    return quantize.onnxruntime_runner(path, threads)


def check_bf16(
    repo: Path, member: str, crops: quantize.Crops, units: CpuUnits | None = None
) -> quantize.Check:
    """OpenVINO bf16 against ONNX Runtime fp32 on `crops`, kept as 1/model.bf16.json with
    the kind of CPU it ran on (`units`, default this one's)."""
    units = units or cpu_units(cpu_flags())
    fp32 = repo / "members" / member / "1" / "model.onnx"
    reference = quantize.onnxruntime_runner(fp32)
    candidate = ("bf16", openvino_runner(fp32, bf16=True))
    check = quantize.compare(fp32, reference, candidate, crops, quantize.is_trained(repo, member))
    record = asdict(check) | {CHECKED_ON: units.kind}
    fp32.with_name(BF16_CHECK).write_text(json.dumps(record, indent=1) + "\n")
    log.info("%s: bf16 %s", member, json.dumps(record))
    return check


def checked_on(record: Path) -> str | None:
    """The kind of CPU a bf16 check ran on (None: unknown, a record from before it was kept).
    Only a check on a CPU with BF16 units is evidence: elsewhere the bf16 hint computes fp32
    and the difference is 0 whatever bf16 would do to the scores."""
    try:
        return json.loads(record.read_text()).get(CHECKED_ON)
    except (OSError, ValueError):
        return None


def refresh(
    repo: Path, member: str, clips: Path = quantize.CLIPS, units: CpuUnits | None = None
) -> None:
    """After export, on a CPU with BF16 units (`units`, default this one's): a trained member
    some kind of CPU serves in bf16, without a check of its graph as it is now made on such
    a CPU, is checked (cpu_fast serves it fp32 where that cannot be done)."""
    units = units or cpu_units(cpu_flags())
    fp32 = repo / "members" / member / "1" / "model.onnx"
    record = fp32.with_name(BF16_CHECK)
    bf16 = any(table.get(member) == "bf16" for table in choices(repo).values())
    needed = bf16 and quantize.is_trained(repo, member) and units.kind == BF16_UNITS
    kept = quantize.Check.kept_with(record, fp32) and checked_on(record) == BF16_UNITS
    if not needed or kept:
        return
    if not clips.is_dir():
        log.warning("%s: no clips to check bf16 against fp32; cpu_fast serves fp32", member)
        return
    check = check_bf16(repo, member, quantize.pipeline_crops(clips))
    if not quantize.keeps_the_scores(check):
        log.warning("%s: bf16 moves the scores (%s); cpu_fast serves fp32", member, check)


def served_precision(repo: Path, member: str, units: CpuUnits) -> tuple[str, str]:
    """The precision cpu_fast serves `member` at on a CPU with `units`, and why: the
    units that make it pay, or what kept it fp32."""
    chosen = choice(repo, units).get(member, "fp32")
    if chosen == "fp32":
        if units.kind == NO_UNITS:
            return "fp32", f"fp32: {units.describe()}"
        return "fp32", f"fp32: {CHOICE_FILE} chose fp32 for it on this CPU ({units.describe()})"
    served = chosen, f"{chosen}: {units.describe()}"
    fp32 = repo / "members" / member / "1" / "model.onnx"
    if (chosen == "bf16" and not quantize.is_trained(repo, member)) or not fp32.exists():
        return served  # random weights: no score to keep; not exported: never loaded
    evidence = fp32.with_name(quantize.INT8_FILE if chosen == "int8" else BF16_CHECK)
    if chosen == "int8" and not evidence.exists():
        return "fp32", "fp32: no int8 file (python -m export.quantize makes it)"
    check = quantize.Check.kept_with(evidence, fp32)
    if check is None:
        return "fp32", f"fp32: {chosen} not checked against this graph"
    if chosen == "bf16" and checked_on(evidence) != BF16_UNITS:
        return "fp32", "fp32: bf16 checked on a CPU without BF16 units (export checks it again)"
    if not quantize.keeps_the_scores(check):
        return "fp32", f"fp32: {chosen} moved P_FAKE by up to {check.max_delta:.4f}"
    return served


# cpu.pbtxt's own statement of its precision, which cpu_fast.pbtxt states anew.
OWN_PRECISION = ('parameters { key: "precision"', 'parameters { key: "precision_reason"')


def fast_config(cpu_config: str, precision: str, why: str) -> str:
    """configs/cpu_fast.pbtxt from configs/cpu.pbtxt: ONNX Runtime on the fp32 or int8
    file, or OpenVINO in bf16 with the native backend's parameter names; its `precision`
    and `precision_reason` (`why`) parameters are what /api/models reports."""
    lines = cpu_config.splitlines(keepends=True)
    # cpu.pbtxt's own header goes (this file has its own); every other line stays, the
    # markers of the provenance and version blocks that export and export.versions rewrite too.
    header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    body = lines[header:]
    out = []
    openvino = precision == "bf16"
    for line in body:
        if openvino and line.startswith('parameters { key: "allow_spinning"'):
            continue  # an OpenVINO thread pool does not spin-wait
        if line.startswith(OWN_PRECISION):
            continue
        if line.startswith("# provenance"):
            if openvino:
                out += [_param("PERFORMANCE_HINT", "LATENCY"), _param("NUM_STREAMS", "1")]
                out.append(_param("HINT_BF16", "YES"))
            out += [_param("precision", precision), _param("precision_reason", why)]
        if openvino and line.startswith('backend: "onnxruntime"'):
            line = 'backend: "openvino"\n'
        if openvino:
            line = line.replace('"intra_op_thread_count"', '"INFERENCE_NUM_THREADS"')
        out.append(line)
        if line.startswith("backend:") and precision != "fp32":
            filename = quantize.INT8_FILE if precision == "int8" else "model.onnx"
            out.append(f'default_model_filename: "{filename}"\n')
    return CONFIG_HEADER + "".join(out)


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: {quoted(value)} }} }}\n'


def write_fast_configs(
    repo: Path, flags: frozenset[str] | None = None
) -> dict[str, tuple[str, str]]:
    """configs/cpu_fast.pbtxt of every member for the CPU with `flags` (default: this one,
    cpu_features.cpu_flags), fp32 ones too (Triton falls back to config.pbtxt, the GPU one,
    where a config name is missing); {member: (precision, why)}. Each file is replaced
    whole, so a Triton loading meanwhile reads the old or the new one."""
    units = cpu_units(cpu_flags() if flags is None else flags)
    served = {}
    for cpu in sorted((repo / "members").glob("*/configs/cpu.pbtxt")):
        member = cpu.parent.parent.name
        served[member] = served_precision(repo, member, units)
        target = cpu.parent / f"{CONFIG_NAME}.pbtxt"
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        part.write_text(fast_config(cpu.read_text(), *served[member]))
        part.replace(target)
    return served


def compare_member(member_dir: Path, crops: quantize.Crops) -> dict[str, dict[str, float]]:
    """{runtime: {"b1": ms, "b8": ms, "max_delta": d}} for one member."""
    fp32 = member_dir / "1" / "model.onnx"
    runners = {
        "onnxruntime_fp32": quantize.onnxruntime_runner(fp32),
        "openvino_fp32": openvino_runner(fp32, bf16=False),
        "openvino_bf16": openvino_runner(fp32, bf16=True),
    }
    int8 = fp32.with_name(quantize.INT8_FILE)
    if int8.exists():
        runners["onnxruntime_int8"] = quantize.onnxruntime_runner(int8)
        runners["openvino_int8"] = openvino_runner(int8, bf16=False)
    reference = quantize.p_fake(runners["onnxruntime_fp32"], crops.images)
    return {
        name: {
            **{f"b{b}": quantize.cpu_ms_per_face(run, crops.images, b) for b in (1, 8)},
            "max_delta": float(np.abs(quantize.p_fake(run, crops.images) - reference).max()),
        }
        for name, run in runners.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.runtimes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=quantize.REPOSITORY)
    parser.add_argument("--members", default="", help="comma-separated; default: all exported")
    parser.add_argument("--clips", type=Path, default=quantize.CLIPS)
    parser.add_argument("--frames", type=int, default=2, help="sampled frames per clip")
    parser.add_argument(
        "--write-configs",
        action="store_true",
        help="only write configs/cpu_fast.pbtxt for this CPU (as local_triton does at start-up, "
        "for a Triton started otherwise) and print each member's precision and why",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    units = cpu_units(cpu_flags())
    if args.write_configs:
        for member, (precision, why) in write_fast_configs(args.repository).items():
            print(f"{member:20} {precision:5} {why}")
        return 0
    members_dir = args.repository / "members"
    exported = sorted(p.parent.parent.name for p in members_dir.glob("*/1/model.onnx"))
    members = [m for m in args.members.split(",") if m] or exported
    crops = quantize.pipeline_crops(args.clips, args.frames)
    figures = {m: compare_member(members_dir / m, crops) for m in members}
    chosen = choice(args.repository, units)
    crops_count = len(crops.clips)
    print(f"CPU ms per face (b1 / b8), max |ΔP_FAKE| vs onnxruntime_fp32, {crops_count} crops")
    print(f"this CPU: {units.describe()}")
    for member, runtimes in figures.items():
        print(f"{member} (cpu_fast: {chosen.get(member, 'fp32')})")
        for name, f in runtimes.items():
            print(f"  {name:18} {f['b1']:7.1f} / {f['b8']:7.1f}   {f['max_delta']:.1e}")
    RESULTS.parent.mkdir(exist_ok=True)
    measured = {"cpu_units": asdict(units), "crops": len(crops.clips), "members": figures}
    RESULTS.write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
