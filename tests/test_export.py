"""export/: ONNX graphs, in-graph preprocessing, torch/ORT parity, provenance, vote."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import __main__ as cli
from export import efficientnet_b7, meso4, mesoinception4, xception
from export.onnx_writer import FacesToPFake, export_onnx
from export.repository import UNTRAINED, Provenance, vote_weights
from export.vote import build_vote
from export.weights import weights_manifest
from preprocess import assets
from preprocess.tensors import member_output
from tests.conftest import ASSETS, NATIVE_SIZE, REPOSITORY, resized

# The full tier only (make test): exports every member with torch (minutes for B7 on 2 cores).
pytestmark = pytest.mark.stack


ARCHS = {
    "meso4": meso4,
    "mesoinception4": mesoinception4,
    "xception": xception,
    "efficientnet_b7": efficientnet_b7,
}
MESONET_WEIGHTS = {"meso4": "Meso4_DF.h5", "mesoinception4": "MesoInception_DF.h5"}


def wrapper_for(name: str) -> FacesToPFake:
    arch = ARCHS[name]
    model = arch.create_model()
    if name in MESONET_WEIGHTS:
        arch.load_weights(model, ASSETS / "weights/mesonet" / MESONET_WEIGHTS[name])
    return FacesToPFake(model, arch.PRETRAINED_CFG).eval()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FacesToPFake, Path]:
    name = request.param
    wrapper = wrapper_for(name)
    path = tmp_path_factory.mktemp(name) / "model.onnx"
    export_onnx(wrapper, path, {"trained": "test"})
    return name, wrapper, path


def test_graph_signature_is_uint8_faces_to_p_fake(exported_pair: tuple) -> None:
    _, _, path = exported_pair
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "FACES" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["N", "H", "W", ""]
    assert inp.type.tensor_type.shape.dim[3].dim_value == 3
    assert out.name == "P_FAKE" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[1].dim_value == 1
    assert {p.key: p.value for p in model.metadata_props} == {"trained": "test"}


@pytest.mark.parametrize("size", ["native", "380", "200x160"])
def test_torch_and_onnxruntime_agree_on_real_faces(
    exported_pair: tuple, face_crops: list, size: str
) -> None:
    name, wrapper, path = exported_pair
    height, width = {"native": (NATIVE_SIZE[name],) * 2, "380": (380, 380), "200x160": (200, 160)}[
        size
    ]
    faces = resized(face_crops[:4], height, width)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(faces)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["P_FAKE"], {"FACES": faces})[0]
    assert got.shape == (4, 1)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_native_size_input_is_not_resampled(face_crops: list) -> None:
    """At 256x256 the graph's resize must be the identity: the model sees the
    crop's own pixels, as the Keras original did."""
    wrapper = wrapper_for("meso4")
    faces = resized(face_crops[:3], 256)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        direct = 1.0 - wrapper.model(x)
        np.testing.assert_array_equal(wrapper(torch.from_numpy(faces)), direct)


def test_exported_repository_models_match_their_provenance() -> None:
    for name in ARCHS:
        path = REPOSITORY / "members" / name / "1/model.onnx"
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["trained"] in ("true", "false")
        if name in MESONET_WEIGHTS:
            assert props["trained"] == "true"
            assert props["weights_sha256"] == assets.sha256_of(
                ASSETS / "weights/mesonet" / MESONET_WEIGHTS[name]
            )


def test_missing_weights_are_an_error_unless_random_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.ENV_SEARCH_PATH, str(tmp_path))
    monkeypatch.setattr(assets, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(SystemExit, match="--allow-random"):
        cli.find_weights("xception", None, allow_random=False, allow_download=False)
    assert cli.find_weights("xception", None, allow_random=True, allow_download=False) == (
        None,
        UNTRAINED,
    )


def test_found_weights_carry_their_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(assets.ENV_SEARCH_PATH, str(ASSETS))
    path, provenance = cli.find_weights("meso4", None, allow_random=False, allow_download=False)
    assert path is not None and path.name == "Meso4_DF.h5"
    assert provenance.trained and provenance.weights_licence == "Apache-2.0"
    assert provenance.weights_sha256 == weights_manifest()["meso4_df"].sha256


def test_explicit_weights_are_recorded_as_user_supplied(tmp_path: Path) -> None:
    copy = tmp_path / "my_meso.h5"
    copy.write_bytes((ASSETS / "weights/mesonet/Meso4_F2F.h5").read_bytes())
    path, provenance = cli.find_weights("meso4", copy, allow_random=False, allow_download=False)
    assert path == copy and provenance.weights_source == "user-supplied checkpoint"
    assert provenance.weights_sha256 == assets.sha256_of(copy)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("xception", "expected MODEL=PATH"),
        ("resnet=/x", "expected MODEL=PATH"),
        ("xception=/no/such/file.pth", "is not a file"),
    ],
)
def test_bad_weights_arguments_are_refused_up_front(argument: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        cli.parse_weights([argument])


TRAINED = Provenance(True, "w", "abc", "src", "lic")


def test_vote_weights_drop_untrained_members(tmp_path: Path) -> None:
    vote = tmp_path / "vote.toml"
    vote.write_text("count_untrained = false\n[weights]\na = 1.0\nb = 3.0\nc = 2.0\n")
    provenance = {"a": TRAINED, "b": UNTRAINED, "c": TRAINED}
    assert vote_weights(vote, ["a", "b", "c"], provenance) == {"a": 1.0, "b": 0.0, "c": 2.0}
    vote.write_text("count_untrained = true\n[weights]\na = 1.0\nb = 3.0\nc = 2.0\n")
    assert vote_weights(vote, ["a", "b", "c"], provenance) == {"a": 1.0, "b": 3.0, "c": 2.0}


def test_a_vote_without_trained_members_is_refused(tmp_path: Path) -> None:
    vote = tmp_path / "vote.toml"
    vote.write_text("[weights]\na = 1.0\n")
    with pytest.raises(ValueError, match="count_untrained"):
        vote_weights(vote, ["a"], {"a": UNTRAINED})


def test_vote_graph_is_a_weighted_mean_passing_scores_through() -> None:
    model = build_vote({"meso4": 1.0, "xception": 0.0, "efficientnet_b7": 3.0})
    session = ort.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    feeds = {
        n: rng.random((5, 1), dtype=np.float32) for n in ("meso4", "xception", "efficientnet_b7")
    }
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    np.testing.assert_allclose(
        out["P_FAKE"], 0.25 * feeds["meso4"] + 0.75 * feeds["efficientnet_b7"], atol=1e-6
    )
    for name, value in feeds.items():
        np.testing.assert_array_equal(out[member_output(name)], value)
