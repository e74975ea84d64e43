"""The int8 CPU configuration (export/quantize.py): quantized from the exported fp32 graph,
validated against it, refused when it moves the scores, and served by a real Triton under
--model-config-name=cpu_int8 with its precision reported.

Xception alone (the member that gains most), in a repository of its own in a tmp folder:
a Triton whose ensemble is Xception and a one-member vote.
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

from export import quantize
from export.vote import write_vote
from gateway.model_server import ModelServer
from model_repository.local_triton import LocalTriton, TritonSettings
from preprocess.assets import sha256_of
from tests.conftest import ASSETS, MEDIA, REPOSITORY, free_port

MEMBER = "xception"
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
    repo = tmp_path_factory.mktemp("int8") / "repository"
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


def test_the_committed_int8_configs_are_what_export_generates(tmp_path: Path) -> None:
    copy = tmp_path / "repository"
    shutil.copytree(REPOSITORY / "members", copy / "members", ignore=shutil.ignore_patterns("1"))
    quantize.write_int8_configs(copy)
    for config in sorted((copy / "members").glob("*/configs/cpu_int8.pbtxt")):
        member = config.parent.parent.name
        committed = REPOSITORY / "members" / member / "configs" / "cpu_int8.pbtxt"
        assert committed.read_text() == config.read_text(), "run python -m export.quantize"
        quantized = member in quantize.QUANTIZED
        assert ('default_model_filename: "model.int8.onnx"' in config.read_text()) is quantized


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


@pytest.fixture(scope="module")
def int8_triton(
    solo_repository: Path, crops: quantize.Crops, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonSettings, quantize.Check]]:
    check = quantize.quantize_member(solo_repository, MEMBER, crops)
    settings = TritonSettings(
        profile="solo",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name=quantize.CONFIG_NAME,
        repository=solo_repository,
        work_dir=tmp_path_factory.mktemp("triton-int8"),
    )
    with LocalTriton(settings) as server:
        yield server.settings, check


def test_triton_serves_the_int8_graph_within_tolerance(
    int8_triton: tuple[TritonSettings, quantize.Check],
    solo_repository: Path,
    crops: quantize.Crops,
) -> None:
    settings, check = int8_triton
    fp32 = solo_repository / "members" / MEMBER / "1" / "model.onnx"
    int8 = fp32.with_name(quantize.INT8_FILE)
    assert check.quantized_from == sha256_of(fp32)
    assert check.max_delta <= quantize.MAX_DELTA and check.verdicts_kept == check.clips
    # Measured, never asserted: the speed is what the int8 file is for.
    print("cpu ms per face", check.cpu_ms_per_face)

    faces = crops.images[:8]
    client = grpc.InferenceServerClient(settings.grpc_url)
    tensor = grpc.InferInput("FACES", list(faces.shape), "UINT8")
    tensor.set_data_from_numpy(faces)
    served = client.infer(MEMBER, [tensor]).as_numpy("P_FAKE").reshape(-1)
    local_int8 = quantize.p_fake(quantize.session(int8), faces)
    local_fp32 = quantize.p_fake(quantize.session(fp32), faces)
    assert served == pytest.approx(local_int8, abs=1e-5)  # Triton runs the int8 file
    assert np.abs(served - local_fp32).max() <= quantize.MAX_DELTA
    config = client.get_model_config(MEMBER, as_json=True)["config"]
    assert config["default_model_filename"] == quantize.INT8_FILE


def test_the_gateway_reports_each_members_precision(
    int8_triton: tuple[TritonSettings, quantize.Check],
) -> None:
    settings, _ = int8_triton

    async def read() -> dict[str, str]:
        server = ModelServer(settings.grpc_url, "deepfake_ensemble", 30, 0, 32)
        try:
            return {m.name: m.precision for m in (await server.ensemble()).members}
        finally:
            await server.close()

    assert asyncio.run(read()) == {MEMBER: "int8"}


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
        props = {"quantized_from": json.dumps(sha256_of(source))}
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(int8))
        quantize.refresh(tmp_path, MEMBER, clips=tmp_path / "no clips")
        assert int8.exists() is kept
