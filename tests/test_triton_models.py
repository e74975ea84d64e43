"""Every model and the ensemble, served by the real Triton, called over gRPC."""

import functools
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

from gateway.server.model_server import parse_vote_groups, parse_vote_weights
from gateway.server.verdict.aggregate import vote
from model_repository.local_triton import TritonSettings
from preprocess.tensors import member_output
from tests.conftest import MEMBERS, NATIVE_SIZE, REPOSITORY, SHARED, resized
from tests.triton_client import infer, infer_many, model_config, parameters

BATCH = 6


@functools.cache
def session(model: str) -> ort.InferenceSession:
    path = REPOSITORY / "members" / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def in_process(model: str, faces: np.ndarray) -> np.ndarray:
    return session(model).run(["P_FAKE"], {"FACES": faces})[0]


def vote_weights(triton: TritonSettings) -> dict[str, float]:
    return parse_vote_weights(parameters(triton.grpc_url, "deepfake_vote")["vote_weights"])


@pytest.mark.parametrize("model", MEMBERS)
@pytest.mark.parametrize("shape", ["native", "380", "200x160", "batch1"])
def test_member_equals_in_process_onnxruntime(
    triton: TritonSettings, face_crops: list, model: str, shape: str
) -> None:
    if shape == "native":
        faces = resized(face_crops[:BATCH], NATIVE_SIZE[model])
    elif shape == "380":
        faces = resized(face_crops[:BATCH], 380)
    elif shape == "200x160":
        faces = resized(face_crops[:BATCH], 200, 160)
    else:
        faces = resized(face_crops[:1], 380)
    p_fake = infer(triton.grpc_url, model, faces)["P_FAKE"]
    assert p_fake.shape == (len(faces), 1) and p_fake.dtype == np.float32
    assert np.all((p_fake >= 0) & (p_fake <= 1))
    np.testing.assert_allclose(p_fake, in_process(model, faces), atol=1e-5)


def test_concurrent_requests_batched_together_get_their_own_answers(
    triton: TritonSettings, face_crops: list
) -> None:
    """The dynamic batcher hands the backend several requests at once; each
    must get back exactly its own rows, whatever the batch sizes."""
    faces = resized(face_crops, 256)
    sizes = [1, 3, 2, 1, len(faces)]
    batches = [np.roll(faces, i, axis=0)[:n] for i, n in enumerate(sizes)]
    answers = infer_many(triton.grpc_url, "meso4", batches)
    for batch, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer["P_FAKE"], in_process("meso4", batch), atol=1e-5)


def test_trained_mesonet_separates_real_from_fake_crops(triton: TritonSettings) -> None:
    """The four MesoNet crops (2 deepfake, 2 real) through Triton: the DF weights
    must call the fakes fake and the reals real, as they did in Keras."""
    crops = np.load(SHARED / "conformance/mesonet_conformance_inputs.npy")[:4]
    for model in ("meso4", "mesoinception4"):
        p_fake = infer(triton.grpc_url, model, crops)["P_FAKE"].ravel()
        assert np.all(p_fake[:2] > 0.9) and np.all(p_fake[2:] < 0.1), (model, p_fake)


def test_ensemble_is_the_vote_of_its_members_by_the_configured_rule(
    triton: TritonSettings, face_crops: list
) -> None:
    """deepfake_vote computes what the gateway's aggregate.vote does: the rule
    (mean or max_of_groups) and groups its config states."""
    faces = resized(face_crops[:BATCH], 380)
    result = infer(triton.grpc_url, "deepfake_ensemble", faces)
    weights = vote_weights(triton)
    params = parameters(triton.grpc_url, "deepfake_vote")
    groups = parse_vote_groups(params["vote_groups"])
    assert set(weights) == set(groups) == set(MEMBERS)
    assert set(result) == {"P_FAKE", *(member_output(m) for m in MEMBERS)}
    direct = {m: infer(triton.grpc_url, m, faces)["P_FAKE"] for m in weights}
    for member, scores in direct.items():
        np.testing.assert_allclose(result[member_output(member)], scores, atol=1e-6)
    rule_groups = groups if params["vote_rule"] == "max_of_groups" else None
    expected = vote(direct, weights, rule_groups)
    np.testing.assert_allclose(result["P_FAKE"], expected, atol=1e-5)


def test_untrained_members_do_not_vote(triton: TritonSettings) -> None:
    weights = vote_weights(triton)
    for member in MEMBERS:
        if parameters(triton.grpc_url, member)["trained"] == "false":
            assert weights[member] == 0.0, member
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("outputs", [["P_FAKE"], ["P_FAKE_XCEPTION"], ["P_FAKE_MESO4", "P_FAKE"]])
def test_ensemble_answers_any_subset_of_outputs(
    triton: TritonSettings, face_crops: list, outputs: list[str]
) -> None:
    faces = resized(face_crops[:2], 380)
    result = infer(triton.grpc_url, "deepfake_ensemble", faces, outputs)
    assert sorted(result) == sorted(outputs)
    assert all(v.shape == (2, 1) for v in result.values())


def test_provenance_is_readable_from_the_model_config_api(triton: TritonSettings) -> None:
    for model in MEMBERS:
        params = parameters(triton.grpc_url, model)
        assert params["trained"] in ("true", "false")
        assert {"weights_file", "weights_sha256", "weights_source", "weights_licence"} <= set(
            params
        )
        assert (params["trained"] == "true") == bool(params["weights_sha256"])
        assert params["input_size"] == str(NATIVE_SIZE[model])
    meso = parameters(triton.grpc_url, "meso4")
    assert meso["trained"] == "true" and meso["weights_file"] == "Meso4_DF.h5"
    assert meso["weights_licence"] == "Apache-2.0"


def test_served_with_the_cpu_profile(triton: TritonSettings) -> None:
    for model in MEMBERS:
        config = model_config(triton.grpc_url, model)
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["backend"] == "onnxruntime"


def test_wrong_input_is_rejected_and_the_server_stays_up(
    triton: TritonSettings, face_crops: list
) -> None:
    four_channels = np.zeros((1, 64, 64, 4), np.uint8)
    with pytest.raises(InferenceServerException, match=r"(?i)shape|dims"):
        infer(triton.grpc_url, "deepfake_ensemble", four_channels)
    assert infer(triton.grpc_url, "meso4", resized(face_crops[:1], 256))["P_FAKE"].shape == (1, 1)


def test_a_request_the_runtime_cannot_run_fails_alone(
    triton: TritonSettings, face_crops: list
) -> None:
    """A 0x0 image passes Triton's shape check but not the backend: that request gets an
    error naming the runtime, and the backend keeps serving."""
    with pytest.raises(InferenceServerException, match="onnxruntime"):
        infer(triton.grpc_url, "meso4", np.zeros((1, 0, 0, 3), np.uint8))
    assert infer(triton.grpc_url, "meso4", resized(face_crops[:1], 256))["P_FAKE"].shape == (1, 1)


def test_prometheus_metrics_count_inferences(triton: TritonSettings, face_crops: list) -> None:
    infer(triton.grpc_url, "deepfake_ensemble", resized(face_crops[:1], 380))
    url = f"http://{triton.host}:{triton.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('nv_inference_request_success{model="deepfake_ensemble"')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
