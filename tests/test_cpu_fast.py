"""The CPU configuration beside fp32 (--model-config-name=cpu_fast, export/runtimes.py):
each member at the precision cpu_fast.toml chose for the CPU's units (injected here;
tests/test_cpu_precision.py covers the choice), served by a real Triton within tolerance
of its fp32 graph, with its precision reported; int8 files (export/quantize.py) quantized
from the exported graph, validated against it, refused when they move the scores.

Xception alone (the member that gains most), in a repository of its own in a tmp folder:
a Triton whose ensemble is Xception and a one-member vote, served once in OpenVINO bf16
(the shipped choice, through the local Python-based openvino backend) and once in int8.
"""

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpc

from export import quantize, runtimes, versions
from export.repository import read_config
from export.vote import write_vote
from gateway.server.model_server import ModelServer
from model_repository.cpu_features import BF16_UNITS, NO_UNITS, VNNI_UNITS, CpuUnits
from model_repository.local_triton import LocalTriton, TritonSettings
from preprocess.assets import sha256_of
from tests.conftest import ASSETS, MEDIA, REPOSITORY
from tests.stack import on_free_ports

MEMBER = "xception"
# The CPU each precision is served for (injected: this machine may have either or neither).
UNITS = {BF16_UNITS: frozenset({"avx512_bf16"}), VNNI_UNITS: frozenset({"avx512_vnni"})}
BF16_CPU = CpuUnits(BF16_UNITS, ("avx512_bf16",))
NO_CPU = CpuUnits(NO_UNITS, ())
SOLO_ENSEMBLE = """name: "deepfake_ensemble"
platform: "ensemble"
max_batch_size: 32
input [{ name: "FACES" data_type: TYPE_UINT8 dims: [-1, -1, 3] }]
output [{ name: "P_FAKE" data_type: TYPE_FP32 dims: [1] }]
ensemble_scheduling { step [
  { model_name: "xception" model_version: -1
    input_map { key: "FACES" value: "FACES" } output_map { key: "P_FAKE" value: "xception" } },
  { model_name: "deepfake_vote" model_version: -1
    input_map { key: "xception" value: "xception" } output_map { key: "P_FAKE" value: "P_FAKE" } }
] }
"""
SOLO_VOTE = """name: "deepfake_vote"
backend: "onnxruntime"
max_batch_size: 32
input [{ name: "xception" data_type: TYPE_FP32 dims: [1] }]
output [
  { name: "P_FAKE" data_type: TYPE_FP32 dims: [1] },
  { name: "P_FAKE_XCEPTION" data_type: TYPE_FP32 dims: [1] }
]
parameters { key: "vote_weights" value: { string_value: "xception=1" } }
"""


@pytest.fixture(scope="module")
def crops() -> quantize.Crops:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
        return quantize.pipeline_crops(MEDIA / "videos", frames_per_clip=2)


@pytest.fixture(scope="module")
def solo_repository(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """members/xception (its configs, the exported fp32 graph linked) and a `solo` profile."""
    repo = tmp_path_factory.mktemp("cpu_fast") / "repository"
    member = repo / "members" / MEMBER
    shutil.copytree(REPOSITORY / "members" / MEMBER, member, ignore=shutil.ignore_patterns("1"))
    (member / "1").mkdir()
    fp32 = exported / "members" / MEMBER / "1" / "model.onnx"
    os.symlink(fp32, member / "1" / "model.onnx")
    for name, config in (("deepfake_ensemble", SOLO_ENSEMBLE), ("deepfake_vote", SOLO_VOTE)):
        (repo / "solo" / name / "1").mkdir(parents=True)
        (repo / "solo" / name / "config.pbtxt").write_text(config)
    write_vote({MEMBER: 1.0}, repo / "solo" / "deepfake_vote" / "1" / "model.onnx")
    return repo


def test_a_version_pin_survives_the_cpu_fast_configs_and_is_lifted_from_them(
    tmp_path: Path,
) -> None:
    """export.versions writes and removes its policy block in every config of a member;
    cpu_fast.pbtxt, written again from cpu.pbtxt at each start of the local Triton, must keep
    that block whole, or `serve latest` could not lift the pin there."""
    member = tmp_path / "members" / "meso4"
    shutil.copytree(REPOSITORY / "members" / "meso4", member, ignore=shutil.ignore_patterns("1"))
    for version in ("1", "2"):
        (member / version).mkdir()
    versions.serve(tmp_path, "meso4", "1")
    runtimes.write_fast_configs(tmp_path, frozenset())  # as the next start does after a pin
    fast = member / "configs" / "cpu_fast.pbtxt"
    assert list(read_config(fast).version_policy.specific.versions) == [1]
    versions.serve(tmp_path, "meso4", "latest")
    assert "version_policy" not in fast.read_text()
    assert not read_config(fast).HasField("version_policy")


def test_an_int8_graph_that_moves_the_scores_is_refused(
    solo_repository: Path, crops: quantize.Crops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if Xception were trained and the tolerance were 0: nothing is written."""
    monkeypatch.setattr(quantize, "MAX_DELTA", 0.0)
    monkeypatch.setattr(quantize, "is_trained", lambda repo, member: True)
    target = solo_repository / "members" / MEMBER / "1" / quantize.INT8_FILE
    target.unlink(missing_ok=True)
    with pytest.raises(quantize.QuantizationRefused, match="moves P_FAKE"):
        quantize.quantize_member(solo_repository, MEMBER, crops)
    assert not target.exists() and not list(target.parent.glob("*.part"))


@pytest.fixture(scope="module", params=["bf16", "int8"])
def fast_triton(
    request: pytest.FixtureRequest,
    solo_repository: Path,
    crops: quantize.Crops,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TritonSettings, quantize.Check, str]]:
    """Triton serving Xception under cpu_fast at a precision, its check against fp32, and
    the precision."""
    precision = request.param
    kind = {"bf16": BF16_UNITS, "int8": VNNI_UNITS}[precision]
    choice = f'[{kind}]\n{MEMBER} = "{precision}"\n'
    (solo_repository / runtimes.CHOICE_FILE).write_text(choice)
    if precision == "int8":
        check = quantize.quantize_member(solo_repository, MEMBER, crops)
    else:
        check = runtimes.check_bf16(solo_repository, MEMBER, crops)
    settings = on_free_ports(
        profile="solo",
        config_name=runtimes.CONFIG_NAME,
        repository=solo_repository,
        work_dir=tmp_path_factory.mktemp(f"triton-{precision}"),
        cpu_flags=UNITS[kind],  # a CPU with those units, whatever this one has
    )
    with LocalTriton(settings) as server:
        yield server.settings, check, precision


def test_triton_serves_the_chosen_precision_within_tolerance(
    fast_triton: tuple[TritonSettings, quantize.Check, str],
    solo_repository: Path,
    crops: quantize.Crops,
) -> None:
    settings, check, precision = fast_triton
    member_dir = solo_repository / "members" / MEMBER
    fp32 = member_dir / "1" / "model.onnx"
    assert check.quantized_from == sha256_of(fp32)
    assert check.max_delta <= quantize.MAX_DELTA and check.verdicts_kept == check.clips
    # Measured, never asserted: the speed is what the precision is for.
    print("cpu ms per face", check.cpu_ms_per_face)

    faces = crops.images[:8]
    client = grpc.InferenceServerClient(settings.grpc_url)
    tensor = grpc.InferInput("FACES", list(faces.shape), "UINT8")
    tensor.set_data_from_numpy(faces)
    served = client.infer(MEMBER, [tensor]).as_numpy("P_FAKE").reshape(-1)
    in_process = quantize.p_fake(runtimes.served_runner(member_dir, runtimes.CONFIG_NAME), faces)
    local_fp32 = quantize.p_fake(quantize.onnxruntime_runner(fp32), faces)
    assert served == pytest.approx(in_process, abs=1e-5)  # Triton runs what was checked
    assert np.abs(served - local_fp32).max() <= quantize.MAX_DELTA
    config = client.get_model_config(MEMBER, as_json=True)["config"]
    assert config["parameters"]["precision"]["string_value"] == precision
    expected = {"bf16": ("openvino", "model.onnx"), "int8": ("onnxruntime", quantize.INT8_FILE)}
    assert (config["backend"], config["default_model_filename"]) == expected[precision]


def test_a_request_the_runtime_cannot_run_fails_alone(
    fast_triton: tuple[TritonSettings, quantize.Check, str], crops: quantize.Crops
) -> None:
    """A 0x0 image passes Triton's shape check but not the runtime: that request gets an
    error naming the runtime, and the backend keeps serving."""
    settings, _, precision = fast_triton
    client = grpc.InferenceServerClient(settings.grpc_url)

    def infer(faces: np.ndarray) -> np.ndarray:
        tensor = grpc.InferInput("FACES", list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(faces)
        return client.infer(MEMBER, [tensor]).as_numpy("P_FAKE")

    runtime = {"bf16": "openvino", "int8": "onnxruntime"}[precision]
    with pytest.raises(grpc.InferenceServerException, match=runtime):
        infer(np.zeros((1, 0, 0, 3), np.uint8))
    assert infer(crops.images[:1]).shape == (1, 1)


def test_the_gateway_reports_each_members_precision(
    fast_triton: tuple[TritonSettings, quantize.Check, str],
) -> None:
    settings, _, precision = fast_triton

    async def read() -> dict[str, tuple[str, str, dict[str, str]]]:
        server = ModelServer(settings.grpc_url, "deepfake_ensemble", 30, 0, 32)
        try:
            members = (await server.ensemble()).members
            return {m.name: (m.precision, m.precision_reason, m.weights) for m in members}
        finally:
            await server.close()

    [(name, (served, why, weights))] = asyncio.run(read()).items()
    assert (name, served) == (MEMBER, precision)
    expected = {
        "bf16": "bf16: avx512_bf16 present",
        "int8": "int8: avx512_vnni present, no BF16 units",
    }
    assert why == expected[precision]
    # the provenance export wrote into the cpu config travels with the precision
    cpu = read_config(REPOSITORY / "members" / MEMBER / "configs" / "cpu.pbtxt").parameters
    assert weights == {k: cpu[f"weights_{k}"].string_value for k in weights}
    assert set(weights) >= {"source", "sha256", "licence"}


def test_a_trained_member_whose_bf16_check_fails_is_served_fp32(
    solo_repository: Path, crops: quantize.Crops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if Xception were trained and its bf16 check had moved the scores beyond the
    tolerance: cpu_fast keeps it in fp32 and says why; a check within the tolerance lets
    bf16 through. The recorded difference is set, not measured: without BF16 units the
    CPU computes the bf16 hint in fp32 and the real difference is exactly 0."""
    monkeypatch.setattr(quantize, "is_trained", lambda repo, member: True)
    (solo_repository / runtimes.CHOICE_FILE).write_text(f'[bf16_units]\n{MEMBER} = "bf16"\n')
    four = quantize.Crops(crops.images[:4], crops.clips[:4])
    runtimes.check_bf16(solo_repository, MEMBER, four, BF16_CPU)
    record = solo_repository / "members" / MEMBER / "1" / runtimes.BF16_CHECK
    measured = json.loads(record.read_text())

    def record_delta(max_delta: float) -> None:
        record.write_text(json.dumps({**measured, "max_delta": max_delta}))

    record_delta(quantize.MAX_DELTA * 2)
    precision, why = runtimes.served_precision(solo_repository, MEMBER, BF16_CPU)
    assert (precision, why.split(" by ")[0]) == ("fp32", "fp32: bf16 moved P_FAKE")
    cpu = (solo_repository / "members" / MEMBER / "configs" / "cpu.pbtxt").read_text()
    config = runtimes.fast_config(cpu, precision, why)
    assert 'backend: "onnxruntime"' in config
    assert f'key: "precision_reason" value: {{ string_value: "{why}" }}' in config
    record_delta(quantize.MAX_DELTA)
    assert runtimes.served_precision(solo_repository, MEMBER, BF16_CPU) == (
        "bf16",
        "bf16: avx512_bf16 present",
    )
    # a check made where the bf16 hint computes fp32 (a difference of 0) is no evidence
    record.write_text(json.dumps({**measured, runtimes.CHECKED_ON: NO_UNITS}))
    assert runtimes.served_precision(solo_repository, MEMBER, BF16_CPU) == (
        "fp32",
        "fp32: bf16 checked on a CPU without BF16 units (export checks it again)",
    )
    record.unlink()
    assert (
        runtimes.served_precision(solo_repository, MEMBER, BF16_CPU)[1]
        == "fp32: bf16 not checked against this graph"
    )


def test_export_checks_a_trained_bf16_member_once_per_graph(
    solo_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m export` calls runtimes.refresh: a trained bf16 member is checked against
    fp32 on the clips, once for a given graph; without clips nothing is recorded and
    cpu_fast serves it fp32."""
    monkeypatch.setattr(quantize, "is_trained", lambda repo, member: True)
    monkeypatch.setenv("DEEPFAKE_ASSETS", str(ASSETS))
    (solo_repository / runtimes.CHOICE_FILE).write_text(f'[bf16_units]\n{MEMBER} = "bf16"\n')
    record = solo_repository / "members" / MEMBER / "1" / runtimes.BF16_CHECK
    record.unlink(missing_ok=True)
    runtimes.refresh(solo_repository, MEMBER, clips=tmp_path / "no clips", units=BF16_CPU)
    assert not record.exists()
    assert runtimes.served_precision(solo_repository, MEMBER, BF16_CPU)[0] == "fp32"
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "one.mp4").symlink_to(MEDIA / "videos" / "fake" / "cvprw2019_demo_fake.mp4")
    runtimes.refresh(solo_repository, MEMBER, clips=clips, units=NO_CPU)  # no evidence there
    assert not record.exists()
    runtimes.refresh(solo_repository, MEMBER, clips=clips, units=BF16_CPU)
    checked = json.loads(record.read_text())
    assert checked["trained"] and checked["clips"] == 1 and checked["max_delta"] <= 0.02
    assert checked[runtimes.CHECKED_ON] == BF16_UNITS
    assert runtimes.served_precision(solo_repository, MEMBER, BF16_CPU)[0] == "bf16"
    written = record.stat().st_mtime_ns
    runtimes.refresh(solo_repository, MEMBER, clips=clips, units=BF16_CPU)  # not again
    assert record.stat().st_mtime_ns == written
    record.write_text(json.dumps({**checked, runtimes.CHECKED_ON: NO_UNITS}))
    runtimes.refresh(solo_repository, MEMBER, clips=clips, units=BF16_CPU)  # checked anew
    assert json.loads(record.read_text())[runtimes.CHECKED_ON] == BF16_UNITS


def test_export_drops_an_int8_file_made_from_other_weights(tmp_path: Path) -> None:
    """`python -m export` calls refresh: an int8 file quantized from the fp32 graph now in
    place stays; one from other weights goes (without clips here to quantize it again)."""
    weights = tmp_path / "members" / MEMBER / "1"
    weights.mkdir(parents=True)
    fp32, int8 = weights / "model.onnx", weights / quantize.INT8_FILE
    write_vote({MEMBER: 1.0}, fp32)  # any small graph stands for the weights
    for source, kept in ((fp32, True), (tmp_path / "other.onnx", False)):
        write_vote({MEMBER: 1.0, "other": 1.0}, tmp_path / "other.onnx")
        model = onnx.load(str(fp32))
        check = quantize.Check(sha256_of(source), False, 2, 0.0, 1, 1, {})
        onnx.helper.set_model_props(model, check.metadata())
        onnx.save(model, str(int8))
        quantize.refresh(tmp_path, MEMBER, clips=tmp_path / "no clips")
        assert int8.exists() is kept
