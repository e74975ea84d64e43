"""Checkpoint reading and strict loading for the PyTorch detectors (Xception FF++, DFDC B7).

Each round trip writes a checkpoint in one published layout from a model whose weights differ
from a fresh ``create_model()`` (which is seeded, so two fresh models are identical), loads it into
a fresh model and checks the weights and outputs now match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from export import efficientnet_b7, xception
from export.checkpoints import (
    WeightsError,
    load_state_dict_strict,
    read_torch_checkpoint,
)

# The full tier only (make test): builds the full-size Xception and EfficientNet-B7 in torch.
pytestmark = pytest.mark.stack

XCEPTION_INPUT = 96  # smallest-ish size Xception's stride-2 stem and blocks handle; fast on CPU
B7_INPUT = 64


def _perturbed(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """A copy of the model's state with every float tensor changed, BN statistics kept sane."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor = tensor * (1.0 + 0.2 * noise.abs())
            else:
                tensor = tensor + 0.05 * noise
        state[name] = tensor
    return state


def _assert_same_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def _forward(model: nn.Module, size: int, batch: int = 2) -> Tensor:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def xception_state() -> dict[str, Tensor]:
    return _perturbed(xception.create_model(), seed=1)


@pytest.fixture(scope="module")
def xception_reference(xception_state: dict[str, Tensor]) -> Tensor:
    model = xception.create_model()
    model.load_state_dict(xception_state)
    return _forward(model, XCEPTION_INPUT)


def _load_xception_and_check(path: Path, state: dict[str, Tensor], reference: Tensor) -> None:
    model = xception.create_model()
    assert not torch.equal(_forward(model, XCEPTION_INPUT), reference)  # else the test is void
    xception.load_weights(model, path)
    _assert_same_state(model, state)
    assert torch.equal(_forward(model, XCEPTION_INPUT), reference)
    assert not model.training


# --- Xception round trips ---------------------------------------------------------------------


def test_xception_output_shape_and_cfg() -> None:
    logits = _forward(xception.create_model(), XCEPTION_INPUT)
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    assert xception.PRETRAINED_CFG["input_size"] == 299
    assert xception.PRETRAINED_CFG["head"] == "softmax_index1"


def test_xception_forward_is_relu_pool_linear(xception_state) -> None:
    # Cadene's logits(): ReLU(bn4 output) -> global average pool -> last_linear (dropout is off).
    model = xception.create_model()
    model.load_state_dict(xception_state)
    with torch.no_grad():  # one logit of each sign, so nothing may clip them
        model.model.last_linear[1].bias.copy_(torch.tensor([-5.0, 5.0]))
    x = torch.rand(2, 3, XCEPTION_INPUT, XCEPTION_INPUT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        features = model.model.forward_features(x * 2 - 1)
        expected = model.model.last_linear[1](features.mean(dim=(2, 3)))
        logits = model(x * 2 - 1)
    assert features.shape[1] == 2048
    assert features.min() >= 0
    assert (logits[:, 0] < 0).all() and (logits[:, 1] > 0).all()
    torch.testing.assert_close(logits, expected)


def test_xception_plain_state_dict(tmp_path: Path, xception_state, xception_reference) -> None:
    path = tmp_path / "plain.pth"
    torch.save(xception_state, path)
    _load_xception_and_check(path, xception_state, xception_reference)


def test_xception_honggu_liu_layout_with_module_prefix(
    tmp_path: Path, xception_state, xception_reference
) -> None:
    # HongguLiu's TransferModel under DataParallel: module.model.*, head at last_linear.1.*
    assert "model.last_linear.1.weight" in xception_state
    assert "model.block1.rep.0.pointwise.weight" in xception_state
    path = tmp_path / "honggu.pkl"
    torch.save({f"module.{k}": v for k, v in xception_state.items()}, path)
    _load_xception_and_check(path, xception_state, xception_reference)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model"])
def test_xception_wrapped_checkpoint(
    tmp_path: Path, xception_state, xception_reference, wrapper: str
) -> None:
    path = tmp_path / f"{wrapper}.pth"
    torch.save({wrapper: xception_state, "epoch": 12, "bce_best": np.float64(0.21)}, path)
    _load_xception_and_check(path, xception_state, xception_reference)


def test_xception_bare_cadene_keys_with_2d_pointwise(
    tmp_path: Path, xception_state, xception_reference
) -> None:
    # Cadene/Keras-ported layout: no model. prefix, head called fc, 1x1 convs stored as [out, in],
    # and no num_batches_tracked (saved before PyTorch 0.4.1).
    bare: dict[str, Tensor] = {}
    for key, tensor in xception_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.removeprefix("model.").replace("last_linear.1.", "fc.")
        if key.endswith("pointwise.weight"):
            tensor = tensor[:, :, 0, 0]
        bare[key] = tensor
    assert bare["block1.rep.0.pointwise.weight"].ndim == 2
    path = tmp_path / "cadene.pth"
    torch.save(bare, path)

    model = xception.create_model()
    xception.load_weights(model, path)
    loaded = model.state_dict()
    for key, tensor in xception_state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], tensor), key
    assert torch.equal(_forward(model, XCEPTION_INPUT), xception_reference)


def test_xception_ffpp_head_without_dropout(tmp_path: Path, xception_state) -> None:
    # FF++ TransferModel with dropout=0 saves the head as a plain Linear: model.last_linear.*
    state = {k.replace("last_linear.1.", "last_linear."): v for k, v in xception_state.items()}
    mapped = xception.state_dict_from_checkpoint(state)
    assert mapped.keys() == xception_state.keys()
    assert torch.equal(
        mapped["model.last_linear.1.weight"], xception_state["model.last_linear.1.weight"]
    )


# --- B7 round trip ----------------------------------------------------------------------------


@dataclass
class B7Case:
    model: nn.Module  # holds ``state``; B7 is slow to build on CPU, so tests share one
    state: dict[str, Tensor]
    reference: Tensor


@pytest.fixture(scope="module")
def b7() -> B7Case:
    model = efficientnet_b7.create_model()
    state = _perturbed(model, seed=2)
    model.load_state_dict(state)
    return B7Case(model, state, _forward(model, B7_INPUT, batch=1))


def test_b7_selimsef_checkpoint(tmp_path: Path, b7: B7Case) -> None:
    assert b7.reference.shape == (1, 1)
    assert torch.isfinite(b7.reference).all()

    # As upstream saves it: DataParallel keys, training metadata (bce_best is a numpy float from
    # sklearn), and the encoder's unused 1000-class ImageNet head.
    saved = {f"module.{k}": v for k, v in b7.state.items()}
    saved["module.encoder.classifier.weight"] = torch.zeros(1000, efficientnet_b7.NUM_FEATURES)
    saved["module.encoder.classifier.bias"] = torch.zeros(1000)
    assert "module.encoder.conv_stem.weight" in saved and "module.fc.weight" in saved
    path = tmp_path / "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"
    torch.save({"epoch": 36, "state_dict": saved, "bce_best": np.float64(0.19)}, path)

    model = efficientnet_b7.create_model()
    assert not torch.equal(model.state_dict()["fc.weight"], b7.state["fc.weight"])
    efficientnet_b7.load_weights(model, path)
    _assert_same_state(model, b7.state)
    assert torch.equal(_forward(model, B7_INPUT, batch=1), b7.reference)


def test_b7_forward_is_pool_linear(b7: B7Case) -> None:
    x = torch.rand(1, 3, B7_INPUT, B7_INPUT, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        features = b7.model.encoder.forward_features(x)
        expected = b7.model.fc(features.mean(dim=(2, 3)))
    assert features.shape[1] == efficientnet_b7.NUM_FEATURES
    torch.testing.assert_close(b7.reference, expected)


def test_b7_key_names_match_upstream(b7: B7Case) -> None:
    keys = b7.state.keys()
    for key in (
        "encoder.conv_stem.weight",
        "encoder.bn1.running_var",
        "encoder.blocks.0.0.conv_dw.weight",
        "encoder.blocks.1.0.se.conv_reduce.weight",
        "encoder.blocks.6.3.conv_pwl.weight",
        "encoder.conv_head.weight",
        "encoder.bn2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("encoder.classifier") for k in keys)


# --- Errors -----------------------------------------------------------------------------------


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match=r"garbage\.pth"):
        read_torch_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        read_torch_checkpoint(tmp_path / "absent.pth")


def test_pickled_whole_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), path)  # torch.save(model) pickles code references
    with pytest.raises(WeightsError) as info:
        read_torch_checkpoint(path)
    message = str(info.value)
    assert "whole_model.pth" in message
    assert "torch.nn.modules.linear.Linear" in message
    assert "state_dict()" in message


def test_mapping_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "bce_best": 0.2}, path)
    with pytest.raises(WeightsError, match=r"meta\.pth.*epoch.*bce_best"):
        read_torch_checkpoint(path)


def test_other_architecture(tmp_path: Path, xception_state, b7: B7Case) -> None:
    path = tmp_path / "xception.pth"
    torch.save(xception_state, path)
    before = b7.state
    with pytest.raises(WeightsError) as info:
        efficientnet_b7.load_weights(b7.model, path)
    message = str(info.value)
    expected_missing = [k for k in before if not k.endswith("num_batches_tracked")]
    assert "xception.pth" in message
    assert f"missing keys ({len(expected_missing)})" in message
    assert f"unexpected keys ({len(xception_state)})" in message
    assert "encoder.conv_stem.weight" in message
    assert "model.conv1.weight" in message
    assert "different architecture" in message
    # Cut to a readable size, not 1000+ names.
    assert "more" in message and len(message) < 3000
    _assert_same_state(b7.model, before)


def test_wrong_shape(tmp_path: Path, xception_state) -> None:
    state = dict(xception_state)
    state["model.last_linear.1.weight"] = torch.zeros(1, 2048)  # a 1-logit head
    path = tmp_path / "one_logit.pth"
    torch.save(state, path)
    model = xception.create_model()
    with pytest.raises(WeightsError) as info:
        xception.load_weights(model, path)
    message = str(info.value)
    assert "1 shape/dtype mismatches" in message
    assert "model.last_linear.1.weight (expected [2, 2048], got [1, 2048])" in message
    assert "0 missing, 0 unexpected" in message
    # Nothing was copied, not even the tensors that did fit.
    assert not torch.equal(model.state_dict()["model.conv1.weight"], state["model.conv1.weight"])


def test_missing_keys(tmp_path: Path, xception_state) -> None:
    dropped = ["model.bn4.weight", "model.bn4.bias", "model.last_linear.1.bias"]
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in xception_state.items() if k not in dropped}, path)
    model = xception.create_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        xception.load_weights(model, path)
    message = str(info.value)
    assert "3 missing, 0 unexpected" in message
    for key in dropped:
        assert key in message
    _assert_same_state(model, before)


def test_strict_load_reports_all_three_kinds() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    state = {
        "0.weight": torch.zeros(4, 3),
        "0.bias": torch.zeros(5),  # wrong shape
        "1.weight": torch.zeros(1, 4),
        # 1.bias missing
        "2.weight": torch.zeros(1),  # unexpected
    }
    with pytest.raises(WeightsError) as info:
        load_state_dict_strict(model, state, source="unit")
    message = str(info.value)
    assert message.startswith("unit: ")
    assert "1 missing, 1 unexpected, 1 shape/dtype mismatches" in message
    assert "1.bias" in message and "2.weight" in message
    assert "0.bias (expected [4], got [5])" in message
    assert torch.count_nonzero(model[0].weight) > 0  # untouched


def test_strict_load_rejects_integer_weights() -> None:
    model = nn.Linear(2, 1)
    state = {"weight": torch.zeros(1, 2, dtype=torch.int64), "bias": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"weight \(expected torch.float32, got torch.int64\)"):
        load_state_dict_strict(model, state, source="ints")


def test_strict_load_accepts_half_precision() -> None:
    model = nn.Linear(2, 1)
    state = {"weight": torch.tensor([[1.5, -2.0]], dtype=torch.float16), "bias": torch.ones(1)}
    load_state_dict_strict(model, state, source="fp16")
    assert torch.equal(model.weight, torch.tensor([[1.5, -2.0]]))
    assert model.weight.dtype == torch.float32
