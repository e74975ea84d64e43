"""Xception as trained for FaceForensics++ (Rössler et al. 2019; HongguLiu/Deepfake-Detection).

The body is Cadene's Xception, which timm carries unchanged as ``legacy_xception``; the head is
the FF++ ``TransferModel`` one, ``Dropout(0.5) + Linear(2048, 2)``. Softmax index 1 is "fake".

Attribute names follow ``TransferModel`` (``self.model = xception()`` with the new head set as
``self.model.last_linear``), so this module's state dict keys are exactly HongguLiu's:
``model.conv1.weight``, ``model.block1.rep.0.pointwise.weight``, ``model.last_linear.1.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
from torch import Tensor, nn

from export.checkpoints import load_checkpoint, seeded

__all__ = [
    "PRETRAINED_CFG",
    "XceptionFFpp",
    "create_model",
    "load_weights",
    "state_dict_from_checkpoint",
]

# mean/std in 0..1 pixel units: (x / 255 - 0.5) / 0.5 maps pixels to [-1, 1] as FF++ trained.
PRETRAINED_CFG = {
    "input_size": 299,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "head": "softmax_index1",
    "asset": "xception_ffpp_c23",
}

NUM_FEATURES = 2048
NUM_CLASSES = 2
_BODY = "model."
_HEAD = "model.last_linear.1."


class XceptionFFpp(nn.Module):
    """Cadene Xception body + FF++ two-class head; input NCHW in [-1, 1], output logits [N, 2]."""

    def __init__(self, drop_rate: float = 0.5) -> None:
        super().__init__()
        # num_classes=0 leaves timm's own head (fc) an Identity: the FF++ head replaces it.
        self.model = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
        # Set on the body, not on self, so keys read model.last_linear.* as in TransferModel.
        self.model.last_linear = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(NUM_FEATURES, NUM_CLASSES)
        )

    def forward(self, x: Tensor) -> Tensor:
        # forward_features ends with the ReLU Cadene applies at the start of logits().
        features = self.model.forward_features(x)
        pooled = self.model.forward_head(features, pre_logits=True)  # global avg pool, [N, 2048]
        return self.model.last_linear(pooled)


def _to_module_key(key: str, bare: bool) -> str:
    """One checkpoint key in our module's naming."""
    if bare:  # a bare Xception (Cadene / timm ImageNet files) has no TransferModel wrapper
        key = _BODY + key
    # FF++ with dropout=0 saves the head as a plain Linear (last_linear.*); Cadene's ImageNet
    # files call it fc.*. Both map onto the Linear inside our Sequential head.
    for plain_head in (_BODY + "last_linear.", _BODY + "fc."):
        if key.startswith(plain_head) and key[len(plain_head) :] in ("weight", "bias"):
            return _HEAD + key[len(plain_head) :]
    return key


def state_dict_from_checkpoint(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map the Xception checkpoint layouts in circulation onto this module's keys.

    Handles HongguLiu/FF++ ``TransferModel`` keys (``model.*`` with ``last_linear.1.*`` or a plain
    ``last_linear.*`` Linear), bare Cadene/timm Xception keys (``conv1.*``, ``fc.*``), and the old
    Keras-ported files whose ``pointwise.weight`` is 2-D ``[out, in]`` instead of 4-D. The
    ``module.`` prefix is already gone (``read_torch_checkpoint`` strips it). Anything else is
    passed through for ``load_state_dict_strict`` to report.
    """
    bare = not any(k.startswith(_BODY) for k in state)
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.endswith("pointwise.weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # a 1x1 conv stored as a matrix
        out[_to_module_key(key, bare)] = tensor
    return out


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a FF++ Xception checkpoint into ``model``; ``WeightsError`` if it does not fit."""
    load_checkpoint(model, path, state_dict_from_checkpoint)


def create_model() -> nn.Module:
    """The detector in eval mode, randomly initialised from a fixed seed (load weights next)."""
    return seeded(XceptionFFpp)
