"""Members as data: manifests, ONNX classifiers wrapped and checked at export,
the F2F members, the profiles' ensembles and votes written by export."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import __main__ as cli
from export import meso4
from export.members import (
    ManifestError,
    check_classifier,
    find_onnx,
    parse_manifest,
    wrap_classifier,
)
from export.onnx_writer import FacesToPFake
from export.repository import profile_members, read_config, vote_rule
from export.vote import build_vote
from gateway.server.verdict.aggregate import vote
from tests.conftest import ASSETS, MANIFEST_MEMBERS, REPOSITORY, resized

CLASSIFIER_MANIFEST = """
name = "{name}"
onnx = "classifier.onnx"
input_size = 256
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
output = "{output}"
trained_on = "FaceForensics++ Deepfakes faces"
source = "DariusAf/MesoNet Meso4_DF, as an ONNX classifier"
licence = "Apache-2.0"
group = "df2"
profiles = ["lite"]
"""


def meso4_df() -> torch.nn.Module:
    model = meso4.create_model()
    meso4.load_weights(model, ASSETS / "weights/mesonet/Meso4_DF.h5")
    return model.eval()


def classifier_onnx(path: Path, model: torch.nn.Module, shape: tuple, opset: int = 17) -> Path:
    """A plain NCHW float classifier, as someone would drop it in."""
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.rand(*shape),),
            str(path),
            input_names=["input"],
            output_names=["prob"],
            dynamic_axes={"input": {0: "batch"}, "prob": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def manifest(folder: Path, name: str = "meso4_onnx", output: str = "p_real") -> Path:
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "member.toml").write_text(CLASSIFIER_MANIFEST.format(name=name, output=output))
    return folder / "member.toml"


def test_an_onnx_classifier_wrapped_scores_as_the_built_in_member(
    tmp_path: Path, face_crops: list
) -> None:
    model = meso4_df()
    member = parse_manifest(manifest(tmp_path))
    classifier = classifier_onnx(member.folder / "classifier.onnx", model, (2, 3, 256, 256))
    wrapped = wrap_classifier(member, onnx.load(str(classifier)))
    session = ort.InferenceSession(wrapped.SerializeToString())
    for faces in (
        resized(face_crops, 256),
        resized(face_crops, 380),
        resized(face_crops, 200, 160),
    ):
        (p_fake,) = session.run(["P_FAKE"], {"FACES": faces})
        with torch.no_grad():
            expected = FacesToPFake(model, meso4.PRETRAINED_CFG)(torch.from_numpy(faces)).numpy()
        np.testing.assert_allclose(p_fake, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("output", '"maybe"', "output 'maybe' must be one of"),
        ("input_size", '"big"', "'input_size' must be a int"),
        ("architecture", '"meso4"', "either architecture"),
        ("profiles", '["tiny"]', "profiles"),
        ("mean", "[0.5]", "3 numbers"),
        ("weight", "-1", "must be >= 0"),
    ],
)
def test_bad_manifests_are_clear_errors(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    path = manifest(tmp_path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{field} =")]
    path.write_text("\n".join([*lines, f"{field} = {value}"]) + "\n")
    with pytest.raises(ManifestError, match=message):
        parse_manifest(path)


def test_manifest_name_must_be_its_folder_and_not_a_built_in(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    path.write_text(path.read_text().replace('name = "meso4_onnx"', 'name = "other"'))
    with pytest.raises(ManifestError, match="its folder's name"):
        parse_manifest(path)
    with pytest.raises(ManifestError, match="built-in"):
        parse_manifest(manifest(tmp_path, name="meso4"))


def test_missing_licence_of_an_onnx_member_is_an_error(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    path.write_text(path.read_text().replace('licence = "Apache-2.0"\n', ""))
    with pytest.raises(ManifestError, match="missing 'licence'"):
        parse_manifest(path)


class NHWC(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2)).mean(dim=1, keepdim=True)


class TwoClasses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, :2]


@pytest.mark.parametrize(
    ("model", "shape", "output", "message"),
    [
        (NHWC(), (2, 256, 256, 3), "p_fake", r"input shape .* must be \[N, 3, 256, 256\]"),
        (NHWC(), (2, 3, 128, 128), "p_fake", r"input shape .* must be \[N, 3, 256, 256\]"),
        (TwoClasses(), (2, 3, 256, 256), "p_fake", r"output shape .* must be \[N, 1\]"),
    ],
)
def test_onnx_that_does_not_fit_is_refused_at_export(
    tmp_path: Path, model: torch.nn.Module, shape: tuple, output: str, message: str
) -> None:
    member = parse_manifest(manifest(tmp_path, output=output))
    path = classifier_onnx(tmp_path / "c.onnx", model, shape)
    with pytest.raises(ManifestError, match=message):
        check_classifier(member, onnx.load(str(path)))


def test_onnx_with_a_wrong_dtype_or_opset_is_refused(tmp_path: Path) -> None:
    member = parse_manifest(manifest(tmp_path, output="p_fake"))
    model = onnx.load(str(classifier_onnx(tmp_path / "c.onnx", NHWC(), (2, 3, 256, 256))))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    with pytest.raises(ManifestError, match="must be float32"):
        check_classifier(member, model)
    model = onnx.load(str(tmp_path / "c.onnx"))
    model.opset_import[0].version = 5
    with pytest.raises(ManifestError, match="opset 5 is outside"):
        check_classifier(member, model)


def test_a_two_class_classifier_reads_class_1_as_fake(tmp_path: Path) -> None:
    member = parse_manifest(manifest(tmp_path, output="softmax_index1"))
    path = classifier_onnx(tmp_path / "c.onnx", TwoClasses(), (2, 3, 256, 256), opset=13)
    session = ort.InferenceSession(
        wrap_classifier(member, onnx.load(str(path))).SerializeToString()
    )
    faces = np.zeros((1, 256, 256, 3), np.uint8)
    faces[..., 1] = 255  # channel 1 (the "fake" logit) high: P(fake) = softmax(0, 1)[1]
    (p_fake,) = session.run(["P_FAKE"], {"FACES": faces})
    np.testing.assert_allclose(p_fake, [[1 / (1 + np.exp(-1))]], atol=1e-5)


def test_export_adds_a_dropped_member_to_the_profile(tmp_path: Path) -> None:
    """`python -m export` on a copy of the repository with one more member:
    its ONNX, configs with provenance, and the lite ensemble's steps and vote."""
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    for name in MANIFEST_MEMBERS:  # keep this test to the MesoNet DF pair and the new one
        shutil.rmtree(repo / "members" / name)
    member = parse_manifest(manifest(repo / "members"))
    classifier_onnx(member.folder / "classifier.onnx", meso4_df(), (2, 3, 256, 256), opset=13)
    cli.main(["--profile", "lite", "--repository", str(repo), "--no-download"])
    assert profile_members(repo, "lite") == ["meso4", "mesoinception4", "meso4_onnx"]
    assert (repo / "members/meso4_onnx/1/model.onnx").is_file()
    for config in ("config.pbtxt", "configs/cpu.pbtxt", "configs/cuda.pbtxt"):
        parsed = read_config(repo / "members/meso4_onnx" / config)
        params = {k: v.string_value for k, v in parsed.parameters.items()}
        assert parsed.name == "meso4_onnx"
        assert params["trained"] == "true" and params["weights_file"] == "classifier.onnx"
        assert params["trained_on"] == "FaceForensics++ Deepfakes faces"
        assert params["weights_licence"] == "Apache-2.0" and len(params["weights_sha256"]) == 64
    vote_config = read_config(repo / "lite/deepfake_vote/config.pbtxt")
    assert [i.name for i in vote_config.input] == ["meso4", "mesoinception4", "meso4_onnx"]
    params = {k: v.string_value for k, v in vote_config.parameters.items()}
    assert params["vote_groups"] == "meso4=swap,mesoinception4=swap,meso4_onnx=df2"
    # The ensemble's vote and member outputs, run as Triton's steps would.
    faces = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    scores = {
        m: ort.InferenceSession(str(repo / "members" / m / "1/model.onnx")).run(
            ["P_FAKE"], {"FACES": faces}
        )[0]
        for m in ("meso4", "meso4_onnx")
    }
    np.testing.assert_allclose(scores["meso4_onnx"], scores["meso4"], atol=1e-4)
    # Removing the manifest removes the member from the profile again.
    (member.folder / "member.toml").unlink()
    cli.main(["--profile", "lite", "--repository", str(repo), "--no-download"])
    assert profile_members(repo, "lite") == ["meso4", "mesoinception4"]


def test_a_bad_manifest_stops_export_before_any_work(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    path = manifest(repo / "members")
    path.write_text(path.read_text().replace('"p_real"', '"p_maybe"'))
    with pytest.raises(SystemExit, match=r"member manifest: .*p_maybe"):
        cli.main(["--profile", "lite", "--repository", str(repo), "--no-download"])
    assert not (repo / "members/meso4/1/model.onnx").exists()


def test_the_f2f_members_carry_their_own_provenance() -> None:
    for name, asset in (
        ("meso4_f2f", "Meso4_F2F.h5"),
        ("mesoinception4_f2f", "MesoInception_F2F.h5"),
    ):
        assert name in MANIFEST_MEMBERS
        params = {
            k: v.string_value
            for k, v in read_config(
                REPOSITORY / "members" / name / "config.pbtxt"
            ).parameters.items()
        }
        assert params["weights_file"] == asset and "Face2Face" in params["weights_source"]
        assert "Face2Face" in params["trained_on"] and params["weights_licence"] == "Apache-2.0"


def test_max_of_groups_vote_graph_and_gateway_agree() -> None:
    weights = {"meso4": 1.0, "mesoinception4": 1.0, "meso4_f2f": 1.0, "mesoinception4_f2f": 1.0}
    _, groups = vote_rule(
        REPOSITORY / "vote.toml", list(weights), {"meso4_f2f": "f2f", "mesoinception4_f2f": "f2f"}
    )
    assert groups == {
        "meso4": "swap",
        "mesoinception4": "swap",
        "meso4_f2f": "f2f",
        "mesoinception4_f2f": "f2f",
    }
    session = ort.InferenceSession(build_vote(weights, groups).SerializeToString())
    rng = np.random.default_rng(1)
    scores = {m: rng.random((5, 1), dtype=np.float32) for m in weights}
    (p_fake, *_) = session.run(None, scores)
    expected = np.maximum(
        (scores["meso4"] + scores["mesoinception4"]) / 2,
        (scores["meso4_f2f"] + scores["mesoinception4_f2f"]) / 2,
    )
    np.testing.assert_allclose(p_fake, expected, atol=1e-6)
    np.testing.assert_allclose(vote(scores, weights, groups), expected, atol=1e-6)


# -- a manifest is data from whoever drops the folder: it cannot write configs of its own

# Closes the string, the parameter and adds a field a reader would take as configuration.
INJECTION = (
    'x" } }\ninstance_group [{ kind: KIND_CPU count: 64 }]\n'
    'parameters { key: "y" value: { string_value: "z'
)


class Tiny(torch.nn.Module):
    """A classifier of the right shape, in no time: [N, 3, 256, 256] -> [N, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.mean(dim=(1, 2, 3))).unsqueeze(1)


def with_fields(path: Path, **fields: str) -> Path:
    """The manifest with these fields set (TOML strings: JSON's escapes are TOML's)."""
    lines = [line for line in path.read_text().splitlines() if line.split(" =")[0] not in fields]
    path.write_text("\n".join([*lines, *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]))
    return path


@pytest.mark.parametrize(
    "texts",
    [
        {"trained_on": INJECTION},
        {"source": 'a "quoted" \\ source', "licence": "MIT\n\tétoile \x01"},
    ],
)
def test_free_text_is_escaped_into_the_configs_not_read_as_fields(
    tmp_path: Path, texts: dict[str, str]
) -> None:
    """trained_on, source and licence go into every config as written; the injected
    instance_group is no field of the config Triton's reader parses."""
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY / "members/meso4", repo / "members/meso4")
    shutil.copytree(REPOSITORY / "templates", repo / "templates")
    member = parse_manifest(with_fields(manifest(repo / "members"), **texts))
    assert all(getattr(member, key) == text for key, text in texts.items())
    classifier_onnx(member.folder / "classifier.onnx", Tiny(), (2, 3, 256, 256))
    cli.export_manifest_member(repo, member, False, False, force=True)
    expected = {"trained_on": member.trained_on, "weights_source": member.source}
    expected["weights_licence"] = member.licence
    for config in ("config.pbtxt", "configs/cpu.pbtxt", "configs/cuda.pbtxt"):
        template = read_config(repo / "members/meso4" / config)
        parsed = read_config(repo / "members/meso4_onnx" / config)
        assert list(parsed.instance_group) == list(template.instance_group), config
        assert all(group.count != 64 for group in parsed.instance_group)
        params = {k: v.string_value for k, v in parsed.parameters.items()}
        assert "y" not in params
        assert {k: params[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"template": "../../lite/deepfake_ensemble"}, "template '../../lite/deepfake_ensemble'"),
        ({"template": "meso4_f2f"}, "template 'meso4_f2f' must be one of"),
        ({"onnx": "/etc/ssl/model.onnx"}, "not absolute"),
        ({"onnx": "../meso4/1/model.onnx"}, r"must not leave its folder \(\.\.\)"),
        ({"onnx": "*.onnx"}, "must be a .onnx file named with"),
        ({"onnx": "weights/model.bin"}, "must be a .onnx file named with"),
        ({"group": "a,b=c"}, "group 'a,b=c' must be"),
        ({"trained_on": "x" * 501}, "'trained_on' is over 500 characters"),
    ],
)
def test_manifests_name_only_built_in_templates_and_their_own_files(
    tmp_path: Path, fields: dict, message: str
) -> None:
    path = with_fields(manifest(tmp_path), **fields)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(path)


def test_an_onnx_in_a_subfolder_of_the_member_is_found(tmp_path: Path) -> None:
    member = parse_manifest(with_fields(manifest(tmp_path), onnx="weights/classifier.onnx"))
    (member.folder / "weights").mkdir()
    path = classifier_onnx(member.folder / "weights/classifier.onnx", Tiny(), (2, 3, 256, 256))
    assert find_onnx(member) == path.resolve()


def test_an_onnx_linked_out_of_the_member_folder_is_refused(tmp_path: Path) -> None:
    outside = classifier_onnx(tmp_path / "elsewhere.onnx", Tiny(), (2, 3, 256, 256))
    member = parse_manifest(manifest(tmp_path / "members"))
    (member.folder / "classifier.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match="links out of"):
        find_onnx(member)


def custom_op(model: onnx.ModelProto, domain: str) -> onnx.ModelProto:
    """The classifier's output passed through one op of `domain`, as a plugin would."""
    (output,) = model.graph.output
    inner = output.name + "_raw"
    for node in model.graph.node:
        node.output[:] = [inner if o == output.name else o for o in node.output]
    model.graph.node.append(
        onnx.helper.make_node("Passthrough", [inner], [output.name], domain=domain)
    )
    model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return model


@pytest.mark.parametrize("domain", ["com.example.custom", "com.microsoft"])
def test_a_custom_op_domain_is_refused_at_export_and_named(tmp_path: Path, domain: str) -> None:
    member = parse_manifest(manifest(tmp_path, output="p_fake"))
    path = classifier_onnx(tmp_path / "c.onnx", Tiny(), (2, 3, 256, 256))
    model = custom_op(onnx.load(str(path)), domain)
    with pytest.raises(ManifestError, match=f"op domain '{domain}' is not a standard one"):
        check_classifier(member, model)
    # The standard domains pass: the same model without the op is wrapped.
    assert wrap_classifier(member, onnx.load(str(path))).graph.output[0].name == "P_FAKE"
