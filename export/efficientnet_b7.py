"""EfficientNet-B7 deepfake classifier of the DFDC winner (selimsef/dfdc_deepfake_challenge).

Mirrors ``training/zoo/classifiers.py::DeepFakeClassifier`` with the ``tf_efficientnet_b7_ns``
encoder: encoder features -> global average pool -> dropout -> ``Linear(2560, 1)``. The output is
one logit per image; sigmoid gives P(fake).

Attribute names are upstream's (``encoder``, ``avg_pool``, ``dropout``, ``fc``) so their
checkpoints, ``{"state_dict": {"module.encoder.conv_stem.weight": ...}}``, load after the
``module.`` strip. timm key names: the 2020 checkpoints were trained with timm 0.1.x-0.4.12, whose
EfficientNet keys (``conv_stem``, ``bn1``, ``blocks.i.j.{conv_pw,bn1,conv_dw,bn2,se.conv_reduce,
se.conv_expand,conv_pwl,bn3}``, ``conv_head``, ``bn2``) are unchanged in timm 1.0.x: timm 1.0 still
loads the 2019 ``tf_efficientnet_b7_ns-1dbc32de.pth`` release with no key filter. So no renaming is
needed; the only difference is the dropped, unused ImageNet classifier (see
``state_dict_from_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
from torch import Tensor, nn

from export.checkpoints import load_checkpoint, seeded

__all__ = [
    "PRETRAINED_CFG",
    "DeepFakeClassifier",
    "create_model",
    "load_weights",
    "state_dict_from_checkpoint",
]

# mean/std in 0..1 pixel units (ImageNet statistics, as upstream normalises its crops).
PRETRAINED_CFG = {
    "input_size": 380,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "head": "sigmoid",
    "asset": "dfdc_b7_selimsef",
}

# timm 1.0 spelling of upstream's tf_efficientnet_b7_ns (the old name is a deprecated alias).
ENCODER = "tf_efficientnet_b7.ns_jft_in1k"
NUM_FEATURES = 2560
# Upstream builds the encoder with timm's default 1000-class head and never calls it.
_UNUSED_ENCODER_HEAD = ("encoder.classifier.weight", "encoder.classifier.bias")


class DeepFakeClassifier(nn.Module):
    """EfficientNet-B7 encoder + linear head; input NCHW normalised, output logit [N, 1]."""

    def __init__(self, dropout_rate: float = 0.0, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        # num_classes=0: the encoder's ImageNet head is dead weight here (forward stops at
        # forward_features). drop_path_rate is upstream's; it only acts in training.
        self.encoder = timm.create_model(
            ENCODER, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate
        )
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(NUM_FEATURES, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.encoder.forward_features(x)
        x = self.avg_pool(x).flatten(1)
        x = self.dropout(x)
        return self.fc(x)


def state_dict_from_checkpoint(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a selimsef checkpoint (``module.`` already stripped) onto this module's keys.

    Key names need no change across timm versions (see the module docstring). The encoder's
    ImageNet classifier (``encoder.classifier.*``, [1000, 2560]) that upstream checkpoints carry
    is dropped: ``forward`` never reads it and our encoder is built without it.
    """
    return {k: v for k, v in state.items() if k not in _UNUSED_ENCODER_HEAD}


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a selimsef B7 checkpoint into ``model``; ``WeightsError`` if it does not fit."""
    load_checkpoint(model, path, state_dict_from_checkpoint)


def create_model() -> nn.Module:
    """The classifier in eval mode, randomly initialised from a fixed seed (load weights next)."""
    return seeded(DeepFakeClassifier)
