"""int8 CPU copies of the members, validated against their fp32 graphs.

    python -m export.quantize                        # the member that gains: Xception
    python -m export.quantize --members xception --clips ../shared/media/videos

ONNX Runtime static quantization in QDQ form: per-channel int8 weights, uint8
activations, for Conv, Gemm and MatMul only (the graph's own resize and
normalisation stay fp32). Activation ranges are calibrated on face crops that the
project's own pipeline (decode, SCRFD, DFDC crop) cuts from the clips in --clips:
the even sampled frames calibrate, the odd ones validate; no label is read.

A quantized file is written next to the fp32 one as `1/model.int8.onnx` only if it
keeps the scores: max |ΔP_FAKE| <= MAX_DELTA on the validation crops and, for a
trained member, the same verdict (the gateway's confident strategy over each clip's
faces, cut where the gateway cuts: preprocess/tensors.py's is_fake) on every clip. For
random weights only the speed means something; the check runs again (`python -m export`
calls `refresh`) when real weights come.
A member that `model_repository/cpu_fast.toml` sets to "int8" for the serving CPU's kind
(`vnni_units`: VNNI, no BF16 units) serves this file under `--model-config-name=cpu_fast`
(export/runtimes.py writes the configs when the local Triton starts). Where BF16 units
exist, OpenVINO's bf16 beat it for Xception (`python -m export.runtimes` compares them).

What int8 saves per member (only Xception gains: EfficientNet-B7's depthwise convolutions
and SiLU/sigmoid gates stay fp32 between quantize/dequantize pairs, the MesoNets'
convolutions are too small to pay for the pairs): tests/bench/README.md, "bf16 and int8 on
the CPU".
"""

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.repository import read_config
from preprocess.assets import sha256_of
from preprocess.tensors import INPUT_NAME, is_fake

log = logging.getLogger("export.quantize")
ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
CLIPS = ROOT.parent / "shared" / "media" / "videos"
INT8_FILE = "model.int8.onnx"
# The member whose int8 graph is faster under ONNX Runtime (tests/bench/README.md);
# which precision each member serves at is model_repository/cpu_fast.toml's choice.
QUANTIZED = ("xception",)
MAX_DELTA = 0.02  # largest |ΔP_FAKE| an int8 graph may add on one face
FRAMES_PER_CLIP = 4  # sampled frames per clip: 2 calibrate, 2 validate
BATCH = 4


class QuantizationRefused(Exception):
    """The int8 graph moved the scores beyond the tolerance: nothing was written."""


@dataclass(frozen=True)
class Crops:
    """Face crops (uint8 [N, H, W, 3]) and the clip each comes from."""

    images: np.ndarray
    clips: list[str]

    def part(self, keep: np.ndarray) -> "Crops":
        return Crops(self.images[keep], [c for c, k in zip(self.clips, keep, strict=True) if k])


@dataclass(frozen=True)
class Check:
    """What validation found: written into the int8 file's metadata and printed."""

    quantized_from: str  # sha256 of the fp32 model.onnx
    trained: bool
    crops: int
    max_delta: float
    clips: int
    verdicts_kept: int  # clips whose verdict int8 keeps (trained members only)
    cpu_ms_per_face: dict[str, float]  # "fp32_b1", "int8_b1", "fp32_b8", "int8_b8"

    def metadata(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def kept_with(cls, path: Path, fp32: Path) -> "Check | None":
        """The check kept with a lower-precision copy (an int8 file's metadata, or a bf16
        member's JSON) if it was made against `fp32` as it is now."""
        if not path.exists():
            return None
        if path.suffix == ".json":  # a bf16 check: the check's fields, and where it ran
            kept = json.loads(path.read_text())
            fields = {k: v for k, v in kept.items() if k in cls.__annotations__}
        else:
            props = onnx.load(str(path), load_external_data=False).metadata_props
            fields = {p.key: json.loads(p.value) for p in props if p.key in cls.__annotations__}
        if set(fields) != set(cls.__annotations__) or fields["quantized_from"] != sha256_of(fp32):
            return None
        return cls(**fields)


@functools.cache
def pipeline_crops(clips_dir: Path, frames_per_clip: int = FRAMES_PER_CLIP) -> Crops:
    """The largest face of `frames_per_clip` sampled frames of every clip, cut by the
    project's own pipeline with its default settings (once per run: every member that is
    quantized or checked uses the same crops)."""
    from preprocess.crop import CropConfig
    from preprocess.faces import DetectorConfig, load_detector
    from preprocess.media import MediaReader
    from preprocess.pipeline import FaceExtractor

    clips = sorted(clips_dir.glob("*/*.mp4")) or sorted(clips_dir.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no .mp4 clips under {clips_dir}: pass --clips DIR")
    extractor = FaceExtractor(load_detector(DetectorConfig()), CropConfig())
    images, names = [], []
    for clip in clips:
        for frame in MediaReader().read(clip, frames_per_clip).frames:
            crops = extractor.extract_frame(frame).crops
            if crops:
                images.append(crops[0])
                names.append(clip.name)
    return Crops(np.stack(images), names)


def split(crops: Crops) -> tuple[Crops, Crops]:
    """Alternate faces: even ones calibrate, odd ones validate."""
    odd = np.arange(len(crops.clips)) % 2 == 1
    return crops.part(~odd), crops.part(odd)


class _Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.batches: Iterator[np.ndarray] = iter(
            [images[i : i + BATCH] for i in range(0, len(images), BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


Runner = Callable[[np.ndarray], np.ndarray]  # uint8 faces [N, H, W, 3] -> P_FAKE [N]


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: Path, threads: int = 2) -> Runner:
    sess = session(path, threads)
    return lambda faces: sess.run(None, {INPUT_NAME: faces})[0].reshape(-1)


def p_fake(run: Runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([run(images[i : i + 8]) for i in range(0, len(images), 8)])


def cpu_ms_per_face(run: Runner, images: np.ndarray, batch: int) -> float:
    """CPU time (this process, all threads), not wall time: the machine may be shared."""
    x = images[:batch]
    run(x)
    runs = max(2, 8 // batch)
    start = time.process_time()
    for _ in range(runs):
        run(x)
    return round((time.process_time() - start) / (runs * len(x)) * 1000, 1)


def clip_verdicts(scores: np.ndarray, clips: list[str]) -> dict[str, bool]:
    """Each clip's verdict from one member's face scores, as the gateway reaches it."""
    from gateway.server.verdict.aggregate import Strategy

    strategy = Strategy()
    return {clip: is_fake(strategy(scores[[c == clip for c in clips]])) for clip in set(clips)}


def quantize(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static QDQ quantization of `fp32` into `out`, calibrated on `calibration`."""
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and constant folding first: folded BatchNorm biases become
        # initializers, which per-channel quantization needs.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(out),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
        )


def compare(
    fp32: Path, reference: Runner, candidate: tuple[str, Runner], crops: Crops, trained: bool
) -> Check:
    """A lower-precision run of `fp32`'s graph against the graph itself, on `crops`:
    max |ΔP_FAKE|, clip verdicts kept, CPU ms per face at batch 1 and 8."""
    name, run = candidate
    a, b = p_fake(reference, crops.images), p_fake(run, crops.images)
    verdicts = clip_verdicts(a, crops.clips), clip_verdicts(b, crops.clips)
    kept = sum(verdicts[0][c] == verdicts[1][c] for c in verdicts[0])
    speed = {
        f"{label}_b{batch}": cpu_ms_per_face(r, crops.images, batch)
        for batch in (1, 8)
        for label, r in (("fp32", reference), (name, run))
    }
    delta = float(np.abs(a - b).max())
    return Check(sha256_of(fp32), trained, len(a), delta, len(verdicts[0]), kept, speed)


def keeps_the_scores(check: Check) -> bool:
    """Random weights: only the speed means something. Trained: within MAX_DELTA on every
    face, and every clip's verdict kept."""
    return not check.trained or (
        check.max_delta <= MAX_DELTA and check.verdicts_kept == check.clips
    )


def validate(fp32: Path, int8: Path, crops: Crops, trained: bool) -> Check:
    """The int8 graph against its fp32 one; QuantizationRefused if it moves the scores."""
    reference = onnxruntime_runner(fp32)
    check = compare(fp32, reference, ("int8", onnxruntime_runner(int8)), crops, trained)
    if not keeps_the_scores(check):
        raise QuantizationRefused(
            f"{fp32.parent.parent.name}: int8 moves P_FAKE by up to {check.max_delta:.4f} "
            f"(at most {MAX_DELTA}) and keeps {check.verdicts_kept} of {check.clips} clip verdicts"
        )
    return check


def is_trained(repo: Path, member: str) -> bool:
    config = read_config(repo / "members" / member / "configs" / "cpu.pbtxt")
    return config.parameters["trained"].string_value == "true"


def quantize_member(repo: Path, member: str, crops: Crops) -> Check:
    """Quantize, validate and (only if it holds) write members/<member>/1/model.int8.onnx."""
    fp32 = repo / "members" / member / "1" / "model.onnx"
    target = fp32.with_name(INT8_FILE)
    partial = target.with_suffix(".onnx.part")  # Triton never sees half a file
    calibration, validation = split(crops)
    try:
        quantize(fp32, partial, calibration.images)
        check = validate(fp32, partial, validation, is_trained(repo, member))
        model = onnx.load(str(partial))
        onnx.helper.set_model_props(
            model,
            {p.key: p.value for p in model.metadata_props} | check.metadata(),
        )
        onnx.save(model, str(partial))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    log.info("%s: wrote %s (%s)", member, target, json.dumps(asdict(check)))
    return check


def refresh(repo: Path, member: str, clips: Path = CLIPS) -> None:
    """After export: an int8 file quantized from other fp32 weights is quantized and
    checked again (removed if that cannot be done here, or if it fails)."""
    target = repo / "members" / member / "1" / INT8_FILE
    if not target.exists() or Check.kept_with(target, target.with_name("model.onnx")):
        return
    target.unlink()
    if not clips.is_dir():
        log.warning(
            "%s: removed %s, quantized from other weights (no clips to redo it)", member, target
        )
        return
    try:
        quantize_member(repo, member, pipeline_crops(clips))
    except QuantizationRefused as exc:
        log.warning("%s; cpu_fast serves it in fp32", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--members", default=",".join(QUANTIZED))
    parser.add_argument("--clips", type=Path, default=CLIPS, help="calibration clips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    members = tuple(m for m in args.members.split(",") if m)
    crops = pipeline_crops(args.clips)
    failed = []
    for member in members:
        try:
            quantize_member(args.repository, member, crops)
        except QuantizationRefused as exc:
            failed.append(str(exc))
    for message in failed:
        log.error("refused: %s", message)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
