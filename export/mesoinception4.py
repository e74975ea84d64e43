"""MesoInception4 (Afchar et al., 2018), a port of DariusAf/MesoNet
`classifiers.MesoInception4`: Meso4 with its first two conv blocks replaced by
inception blocks of four branches (1x1; 1x1→3x3; 1x1→3x3 dilation 2;
1x1→3x3 dilation 3), concatenated in that order. Outputs P(real), as Meso4.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from export import keras_h5
from export.checkpoints import load_state_dict_strict, seeded
from export.meso4 import KERAS_BN_EPS, ConvBlock, MesoHead

PRETRAINED_CFG = {
    "input_size": 256,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "head": "p_real",
    "asset": "mesoinception4_df",
}

# Keras creates each inception layer's seven convs in this order.
_BRANCH_CONVS = (
    "branch1",
    "branch2.0",
    "branch2.2",
    "branch3.0",
    "branch3.2",
    "branch4.0",
    "branch4.2",
)


def _reduce_then_conv(cin: int, cout: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation),
    )


class InceptionLayer(nn.Module):
    def __init__(self, cin: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(cin, a, 1)
        self.branch2 = _reduce_then_conv(cin, b, 1)
        self.branch3 = _reduce_then_conv(cin, c, 2)
        self.branch4 = _reduce_then_conv(cin, d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([F.relu(branch(x)) for branch in branches], dim=1)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.inception = InceptionLayer(cin, a, b, c, d)
        self.bn = nn.BatchNorm2d(a + b + c + d, eps=KERAS_BN_EPS)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.inception(x)))


class MesoInception4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = InceptionBlock(3, 1, 4, 4, 2)
        self.block2 = InceptionBlock(11, 2, 4, 4, 2)
        self.block3 = ConvBlock(12, 16, 5, 2)
        self.block4 = ConvBlock(16, 16, 5, 4)
        self.head = MesoHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: RGB in [0, 1], Nx3x256x256 → P(real), Nx1."""
        return self.head(self.block4(self.block3(self.block2(self.block1(x)))))


def create_model() -> MesoInception4:
    return seeded(MesoInception4)


def state_dict_from_keras(path: Path) -> dict[str, torch.Tensor]:
    layers = keras_h5.read_keras_h5(path)
    keras_h5.expect_counts(layers, path, conv2d=16, batch_normalization=4, dense=2)
    convs, norms = layers["conv2d"], layers["batch_normalization"]
    state: dict[str, torch.Tensor] = {}
    for block in (1, 2):
        first = (block - 1) * len(_BRANCH_CONVS)
        for offset, name in enumerate(_BRANCH_CONVS):
            state |= keras_h5.conv2d(convs[first + offset], f"block{block}.inception.{name}")
    state |= keras_h5.conv2d(convs[14], "block3.conv")
    state |= keras_h5.conv2d(convs[15], "block4.conv")
    for i in range(4):
        state |= keras_h5.batch_norm(norms[i], f"block{i + 1}.bn")
    state |= keras_h5.dense(layers["dense"][0], "head.fc1")
    state |= keras_h5.dense(layers["dense"][1], "head.fc2")
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    load_state_dict_strict(model, state_dict_from_keras(path), str(path))
