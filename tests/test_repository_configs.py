"""model_repository/: the committed configs are what Triton (local and NGC 24.10)
loads; checked against Triton's own ModelConfig protobuf and each other."""

import json
import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export import configs, profiles
from export.members import BUILTIN
from export.repository import config_files, profile_members, read_config, write_parameters
from tests.conftest import MANIFEST_MEMBERS, MEMBERS, REPOSITORY

PROFILES = ("full", "lite")
GPU = mc.ModelInstanceGroup.Kind.KIND_GPU
CPU = mc.ModelInstanceGroup.Kind.KIND_CPU


def io(config: mc.ModelConfig) -> tuple:
    return (
        [(i.name, i.data_type, list(i.dims)) for i in config.input],
        [(o.name, o.data_type, list(o.dims)) for o in config.output],
    )


@pytest.mark.parametrize("member", MEMBERS)
def test_member_configs_agree_across_runtimes(member: str) -> None:
    model_dir = REPOSITORY / "members" / member
    gpu, cpu, cuda = (
        read_config(model_dir / f)
        for f in ("config.pbtxt", "configs/cpu.pbtxt", "configs/cuda.pbtxt")
    )
    for config in (gpu, cpu, cuda):
        assert config.name == member and config.backend == "onnxruntime"
        assert io(config) == io(gpu)
        assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert io(gpu) == ([("FACES", mc.TYPE_UINT8, [-1, -1, 3])], [("P_FAKE", mc.TYPE_FP32, [1])])
    assert [g.kind for g in gpu.instance_group] == [GPU]
    assert [g.kind for g in cuda.instance_group] == [GPU]
    assert [g.kind for g in cpu.instance_group] == [CPU]
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    max_shape = trt.parameters["trt_profile_max_shapes"]
    assert max_shape.startswith(f"FACES:{gpu.max_batch_size}x"), max_shape
    assert not cuda.optimization.execution_accelerators.gpu_execution_accelerator
    assert list(gpu.dynamic_batching.preferred_batch_size)
    assert gpu.dynamic_batching.max_queue_delay_microseconds > 0
    assert gpu.model_warmup and cuda.model_warmup


@pytest.mark.parametrize("profile", PROFILES)
def test_ensemble_steps_members_and_vote_fit_together(profile: str) -> None:
    ensemble = read_config(REPOSITORY / profile / "deepfake_ensemble/config.pbtxt")
    vote = read_config(REPOSITORY / profile / "deepfake_vote/config.pbtxt")
    members = profile_members(REPOSITORY, profile)
    assert ensemble.platform == "ensemble"
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [*members, "deepfake_vote"]
    assert [i.name for i in vote.input] == members
    # Every ensemble output is produced by the vote, the last step: that is
    # what lets clients request any subset of outputs.
    assert set(steps[-1].output_map.values()) == {o.name for o in ensemble.output}
    assert io(ensemble)[1] == io(vote)[1]
    for member in members:
        config = read_config(REPOSITORY / "members" / member / "config.pbtxt")
        assert ensemble.max_batch_size <= config.max_batch_size
    assert set(members) <= set(MEMBERS)


def test_lite_is_the_mesonet_pair_and_full_all_four_then_manifest_members() -> None:
    def extra(profile: str) -> list[str]:
        return [n for n, m in MANIFEST_MEMBERS.items() if profile in m.profiles]

    assert profile_members(REPOSITORY, "lite") == ["meso4", "mesoinception4", *extra("lite")]
    assert profile_members(REPOSITORY, "full") == [*BUILTIN, *extra("full")]


def test_provenance_block_is_replaced_not_appended(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text((REPOSITORY / "members/meso4/configs/cpu.pbtxt").read_text())
    write_parameters(config, {"trained": "false", "weights_file": ""})
    once = config.read_text()
    write_parameters(config, {"trained": "false", "weights_file": ""})
    assert config.read_text() == once
    params = read_config(config).parameters
    assert params["trained"].string_value == "false" and "weights_sha256" not in params


def test_every_member_config_carries_provenance() -> None:
    for member in MEMBERS:
        for path in config_files(REPOSITORY / "members" / member):
            params = read_config(path).parameters
            assert {"trained", "weights_sha256", "weights_source", "weights_licence"} <= set(
                params
            ), path


def _sources_only(tmp_path: Path) -> Path:
    """A copy of the repository's sources of configs: manifests, provenance records,
    templates, cpu_fast.toml, profiles.toml, vote.toml and calibration.toml, without one
    generated config."""
    copy = tmp_path / "repository"
    ignored = shutil.ignore_patterns("1", "*.pbtxt", "__pycache__")
    shutil.copytree(REPOSITORY / "members", copy / "members", ignore=ignored)
    shutil.copytree(REPOSITORY / configs.TEMPLATES, copy / configs.TEMPLATES)
    sources = (
        "cpu_fast.toml",
        profiles.PROFILES_FILE,
        profiles.VOTE_FILE,
        profiles.CALIBRATION_FILE,
    )
    for source in sources:
        shutil.copy(REPOSITORY / source, copy)
    return copy


def _profile_configs(repo: Path) -> list[Path]:
    return sorted(p.relative_to(repo) for p in repo.glob("*/deepfake_*/config.pbtxt"))


def test_the_committed_member_configs_are_generated_from_their_sources(tmp_path: Path) -> None:
    """Every member config (the 3 runtimes) is what export/configs.py writes from the
    templates, runtime.toml, the manifest and provenance.json: none is edited by hand.
    (configs/cpu_fast.pbtxt, git-ignored, is written for the serving CPU at Triton's start.)"""
    copy = _sources_only(tmp_path)
    configs.main([str(copy)])
    committed = sorted(
        p.relative_to(REPOSITORY)
        for p in REPOSITORY.glob("members/**/*.pbtxt")
        if p.name != "cpu_fast.pbtxt"
    )
    written = sorted(p.relative_to(copy) for p in copy.glob("members/**/*.pbtxt"))
    assert written == committed and len(committed) == 3 * len(MEMBERS)
    for path in committed:
        assert (copy / path).read_text() == (REPOSITORY / path).read_text(), path
        assert (REPOSITORY / path).read_text().startswith("# Generated by `python -m export`")


@pytest.mark.parametrize("member", ["xception", "meso4_f2f"])
def test_provenance_written_once_reaches_every_config(tmp_path: Path, member: str) -> None:
    copy = _sources_only(tmp_path)
    record = copy / "members" / member / configs.PROVENANCE
    provenance = json.loads(record.read_text()) | {"weights_sha256": "ab" * 32}
    record.write_text(json.dumps(provenance))
    configs.main([str(copy)])
    paths = config_files(copy / "members" / member)
    assert len(paths) == 3  # config, cpu, cuda
    for path in paths:
        params = read_config(path).parameters
        assert {k: params[k].string_value for k in provenance} == provenance, path


def test_runtime_settings_come_from_runtime_toml(tmp_path: Path) -> None:
    """One edit of runtime.toml reaches the member's configs and the manifest members
    that run with its settings (meso4_f2f's template is meso4)."""
    copy = _sources_only(tmp_path)
    settings = copy / configs.TEMPLATES / configs.RUNTIME
    settings.write_text(settings.read_text().replace("max_batch_size = 64", "max_batch_size = 16"))
    configs.main([str(copy)])
    for member in ("meso4", "mesoinception4", "meso4_f2f"):
        gpu = read_config(copy / "members" / member / "config.pbtxt")
        assert gpu.max_batch_size == 16
        assert list(gpu.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert read_config(copy / "members/xception/configs/cpu.pbtxt").max_batch_size == 32


def test_the_committed_profile_configs_are_generated_from_their_sources(tmp_path: Path) -> None:
    """Each profile's ensemble and vote config is what export/profiles.py writes from
    profiles.toml, vote.toml, the templates, the manifests and provenance.json: no member
    list is read back from a committed config."""
    copy = _sources_only(tmp_path)
    configs.main([str(copy)])
    committed = _profile_configs(REPOSITORY)
    assert _profile_configs(copy) == committed
    assert len(committed) == 2 * len(profiles.PROFILES) == 2 * len(PROFILES)
    for path in committed:
        assert (copy / path).read_text() == (REPOSITORY / path).read_text(), path
        assert (REPOSITORY / path).read_text().startswith("# Generated by `python -m export`")


def test_a_change_in_profiles_toml_reaches_the_ensemble_and_the_vote(tmp_path: Path) -> None:
    """lite without mesoinception4, in profiles.toml only: its ensemble's steps, outputs and
    `members`, its vote's inputs and weights follow; full is untouched."""
    copy = _sources_only(tmp_path)
    source = copy / profiles.PROFILES_FILE
    text = source.read_text()
    lite = 'members = ["meso4", "mesoinception4"]'
    assert lite in text
    source.write_text(text.replace(lite, 'members = ["meso4"]'))
    configs.main([str(copy)])
    f2f = [n for n, m in MANIFEST_MEMBERS.items() if "lite" in m.profiles]
    assert profile_members(copy, "lite") == ["meso4", *f2f]
    ensemble = read_config(copy / "lite/deepfake_ensemble/config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "meso4",
        *f2f,
        "deepfake_vote",
    ]
    assert "P_FAKE_MESOINCEPTION4" not in {o.name for o in ensemble.output}
    vote = read_config(copy / "lite/deepfake_vote/config.pbtxt")
    assert [i.name for i in vote.input] == ["meso4", *f2f]
    weights = vote.parameters["vote_weights"].string_value
    assert weights.startswith("meso4=") and "mesoinception4=" not in weights
    full = "full/deepfake_ensemble/config.pbtxt"
    assert (copy / full).read_text() == (REPOSITORY / full).read_text()


def test_a_profile_naming_an_unknown_member_is_an_error(tmp_path: Path) -> None:
    copy = _sources_only(tmp_path)
    source = copy / profiles.PROFILES_FILE
    source.write_text(source.read_text().replace('"mesoinception4"]', '"meso5"]'))
    with pytest.raises(ValueError, match=r"\[lite\]: members .*meso5"):
        configs.main([str(copy)])


def test_vote_toml_naming_no_member_is_an_error(tmp_path: Path) -> None:
    copy = _sources_only(tmp_path)
    source = copy / profiles.VOTE_FILE
    source.write_text(source.read_text().replace("\nxception = 1.0", "\nxcepton = 1.0"))
    with pytest.raises(ValueError, match=r"vote.toml \[weights\]: \['xcepton'\]"):
        configs.main([str(copy)])
