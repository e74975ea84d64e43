"""cpu_fast's precision chosen for the CPU that serves (model_repository/cpu_features.py,
export/runtimes.py write_fast_configs, called by local_triton at start): bf16 only where
BF16 units exist, int8 where VNNI does and a validated int8 file is there, fp32 otherwise,
and the choice stated in each config's `precision` and `precision_reason`.

The flags are injected (a frozenset, or TRITON_CPU_FLAGS), so every branch runs on any
machine: this one has AVX-512 BF16 and AMX, CI machines may have no AVX-512 at all.
The last test serves a lite repository under cpu_fast from a real Triton and reads the
choice back from the real gateway's /api/models.
"""

import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import onnx
import pytest

from export import quantize, runtimes
from export.repository import profile_members, read_config
from export.vote import write_vote
from model_repository import cpu_features
from model_repository.cpu_features import BF16_UNITS, NO_UNITS, VNNI_UNITS, CpuUnits
from model_repository.local_triton import LocalTriton, TritonSettings
from preprocess.assets import sha256_of
from tests.conftest import REPOSITORY, start_gateway
from tests.stack import on_free_ports

BF16_CPU = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
VNNI_CPU = frozenset({"avx2", "avx512f", "avx512_vnni"})
PLAIN_CPU = frozenset({"sse4_2", "avx2"})  # this project's VM of today: no AVX-512 at all
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni avx_vnni
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni avx_vnni
"""


def test_the_flags_are_read_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_features.FLAGS_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    flags = cpu_features.cpu_flags(cpuinfo)
    assert {"avx512f", "avx512_vnni", "avx_vnni"} <= flags and "spectre_v1" not in flags
    assert cpu_features.cpu_flags(tmp_path / "none") == frozenset()  # not Linux: no units


def test_triton_cpu_flags_stands_for_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    monkeypatch.setenv(cpu_features.FLAGS_ENV, "avx2 amx_bf16")
    assert cpu_features.cpu_flags(cpuinfo) == {"avx2", "amx_bf16"}
    monkeypatch.setenv(cpu_features.FLAGS_ENV, "")  # set but empty: a CPU with no units
    assert cpu_features.cpu_flags(cpuinfo) == frozenset()


@pytest.mark.parametrize(
    ("flags", "units"),
    [
        (BF16_CPU, CpuUnits(BF16_UNITS, ("avx512_bf16", "amx_bf16"))),
        (frozenset({"amx_bf16"}), CpuUnits(BF16_UNITS, ("amx_bf16",))),
        (VNNI_CPU, CpuUnits(VNNI_UNITS, ("avx512_vnni",))),
        (frozenset({"avx2", "avx_vnni"}), CpuUnits(VNNI_UNITS, ("avx_vnni",))),
        (PLAIN_CPU, CpuUnits(NO_UNITS, ())),
        (frozenset({"avx512f"}), CpuUnits(NO_UNITS, ())),  # AVX-512 without BF16 or VNNI
    ],
)
def test_the_kind_of_cpu_is_decided_by_its_units(flags: frozenset[str], units: CpuUnits) -> None:
    assert cpu_features.cpu_units(flags) == units


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """The committed members' configs and cpu_fast.toml; Xception with a small graph standing
    for its model.onnx (the int8 branch needs one to be quantized from), nothing exported."""
    repo = tmp_path / "repository"
    shutil.copytree(
        REPOSITORY / "members",
        repo / "members",
        ignore=shutil.ignore_patterns("1", "cpu_fast.pbtxt", "__pycache__"),
    )
    shutil.copy(REPOSITORY / runtimes.CHOICE_FILE, repo)
    (repo / "members" / "xception" / "1").mkdir()
    write_vote({"xception": 1.0}, repo / "members" / "xception" / "1" / "model.onnx")
    return repo


def write_int8(repo: Path, member: str, made_from: Path | None = None) -> None:
    """An int8 file whose recorded check names the graph it was quantized from."""
    fp32 = repo / "members" / member / "1" / "model.onnx"
    model = onnx.load(str(fp32))
    check = quantize.Check(sha256_of(made_from or fp32), False, 2, 0.0, 1, 1, {})
    onnx.helper.set_model_props(model, check.metadata())
    onnx.save(model, str(fp32.with_name(quantize.INT8_FILE)))


def served(repo: Path, member: str) -> tuple[str, str, str, str]:
    """The written cpu_fast config's precision, reason, backend and model file."""
    config = read_config(repo / "members" / member / "configs" / f"{runtimes.CONFIG_NAME}.pbtxt")
    params = config.parameters
    return (
        params["precision"].string_value,
        params["precision_reason"].string_value,
        config.backend,
        config.default_model_filename,
    )


def test_a_cpu_with_bf16_units_serves_xception_and_b7_in_bf16(repository: Path) -> None:
    chosen = runtimes.write_fast_configs(repository, BF16_CPU)
    why = "bf16: avx512_bf16, amx_bf16 present"
    for member in ("xception", "efficientnet_b7"):
        assert chosen[member] == ("bf16", why)
        assert served(repository, member) == ("bf16", why, "openvino", "model.onnx")
    meso = served(repository, "meso4")
    assert meso[0] == "fp32" and meso[2] == "onnxruntime"
    assert meso[1] == "fp32: cpu_fast.toml chose fp32 for it on this CPU (" + why[6:] + ")"


def test_a_cpu_with_vnni_only_serves_int8_where_the_int8_file_exists(repository: Path) -> None:
    """Never bf16 there (it would run at fp32 speed); int8 for Xception once
    `python -m export.quantize` made its file from the graph in place, fp32 before."""
    chosen = runtimes.write_fast_configs(repository, VNNI_CPU)
    assert chosen["xception"] == ("fp32", "fp32: no int8 file (python -m export.quantize makes it)")
    assert chosen["efficientnet_b7"][0] == "fp32"
    write_int8(repository, "xception")
    runtimes.write_fast_configs(repository, VNNI_CPU)
    why = "int8: avx512_vnni present, no BF16 units"
    assert served(repository, "xception") == ("int8", why, "onnxruntime", quantize.INT8_FILE)
    assert served(repository, "efficientnet_b7")[:3] == (
        "fp32",
        f"fp32: cpu_fast.toml chose fp32 for it on this CPU ({why[6:]})",
        "onnxruntime",
    )
    other = repository / "other.onnx"
    write_vote({"xception": 1.0, "other": 1.0}, other)
    write_int8(repository, "xception", made_from=other)  # quantized from other weights
    assert runtimes.write_fast_configs(repository, VNNI_CPU)["xception"] == (
        "fp32",
        "fp32: int8 not checked against this graph",
    )


def test_a_cpu_without_bf16_or_vnni_units_serves_every_member_fp32(repository: Path) -> None:
    write_int8(repository, "xception")  # even with an int8 file there
    chosen = runtimes.write_fast_configs(repository, PLAIN_CPU)
    assert set(chosen) == {p.name for p in (REPOSITORY / "members").iterdir() if p.is_dir()}
    for member in chosen:
        precision, why, backend, filename = served(repository, member)
        assert (precision, why, backend, filename) == (
            "fp32",
            "fp32: no BF16 or VNNI units",
            "onnxruntime",
            "",
        )


def test_the_cpu_configuration_stays_fp32_and_says_so(repository: Path) -> None:
    """TRITON_CONFIG=cpu: nothing is chosen at start, every committed cpu.pbtxt says fp32
    on every CPU; only cpu_fast writes its configs."""
    settings = TritonSettings(repository=repository, config_name="cpu", cpu_flags=BF16_CPU)
    server = LocalTriton(settings)
    server.choose_precisions()
    assert server.precisions == {}
    assert not list(repository.glob("members/*/configs/cpu_fast.pbtxt"))
    for cpu in REPOSITORY.glob("members/*/configs/cpu.pbtxt"):
        params = read_config(cpu).parameters
        assert params["precision"].string_value == "fp32"
        assert (
            params["precision_reason"].string_value == "fp32: the cpu configuration, on every CPU"
        )
    fast = LocalTriton(TritonSettings(repository=repository, config_name="cpu_fast"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cpu_features.FLAGS_ENV, " ".join(VNNI_CPU))  # None: this CPU's, or these
        fast.choose_precisions()
    assert fast.precisions["efficientnet_b7"][1].endswith("(avx512_vnni present, no BF16 units)")


def test_no_cpu_fast_config_is_committed() -> None:
    """What cpu_fast serves depends on the CPU that serves: never on the one export ran on,
    so a fresh export leaves the committed configs as they are (CI checks that)."""
    tracked = subprocess.run(
        ["git", "ls-files", "model_repository"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [p for p in tracked if p.endswith("/cpu_fast.pbtxt")]
    assert tracked and any(p.endswith("/configs/cpu.pbtxt") for p in tracked)


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ('[vnni_units]\nxception = "bf16"\n', "bf16"),  # no BF16 units: fp32 speed
        ('[bf16_units]\nxception = "fp8"\n', "fp8"),
        ('[avx512]\nxception = "bf16"\n', "avx512"),
        ('[bf16_units]\nxcepton = "bf16"\n', "xcepton"),
    ],
)
def test_a_choice_the_cpu_cannot_honour_is_an_error(
    repository: Path, text: str, wrong: str
) -> None:
    (repository / runtimes.CHOICE_FILE).write_text(text)
    with pytest.raises(ValueError, match=wrong):
        runtimes.write_fast_configs(repository, BF16_CPU)


def lite_repository(exported: Path, root: Path) -> Path:
    """The lite profile's members (graphs linked) and profile in `root`, with a cpu_fast.toml
    that serves meso4 in bf16 on a CPU with BF16 units."""
    repo = root / "repository"
    shutil.copytree(exported / "lite", repo / "lite", symlinks=True)
    for name in profile_members(exported, "lite"):
        member = repo / "members" / name
        ignored = shutil.ignore_patterns("[0-9]*", "cpu_fast.pbtxt")
        shutil.copytree(exported / "members" / name, member, ignore=ignored)
        (member / "1").mkdir()
        os.symlink(exported / "members" / name / "1" / "model.onnx", member / "1" / "model.onnx")
    (repo / runtimes.CHOICE_FILE).write_text('[bf16_units]\nmeso4 = "bf16"\n')
    # meso4 is trained: bf16 serves only with a check of its graph that kept the scores,
    # made on a CPU with BF16 units. Set, not measured (tests/test_cpu_fast.py measures).
    fp32 = repo / "members" / "meso4" / "1" / "model.onnx"
    check = quantize.Check(sha256_of(fp32), True, 8, 0.001, 4, 4, {})
    record = asdict(check) | {runtimes.CHECKED_ON: BF16_UNITS}
    fp32.with_name(runtimes.BF16_CHECK).write_text(json.dumps(record))
    return repo


def test_api_models_states_each_members_precision_and_why(exported: Path, tmp_path: Path) -> None:
    """A real Triton started under cpu_fast for a CPU with BF16 units (injected), the real
    gateway over it: /api/models says what each member computes in and why."""
    repo = lite_repository(exported, tmp_path)
    settings = on_free_ports(
        profile="lite",
        config_name=runtimes.CONFIG_NAME,
        repository=repo,
        work_dir=tmp_path / "triton",
        cpu_flags=frozenset({"avx2", "avx512_bf16"}),
    )
    with (
        LocalTriton(settings) as triton,
        start_gateway(triton.settings.grpc_url, tmp_path / "gateway") as gateway,
    ):
        answer = gateway.client.http.get("/api/models").json()
    models = {m["name"]: (m["precision"], m["precision_reason"]) for m in answer["models"]}
    assert models.pop("meso4") == ("bf16", "bf16: avx512_bf16 present")
    assert models and set(models.values()) == {
        ("fp32", "fp32: cpu_fast.toml chose fp32 for it on this CPU (avx512_bf16 present)")
    }
    assert triton.precisions["meso4"] == ("bf16", "bf16: avx512_bf16 present")
