"""Meso4 (Afchar et al., 2018), a port of DariusAf/MesoNet `classifiers.Meso4`.

Faithful to the Keras original so its weights load unchanged: BatchNorm with
Keras' epsilon 1e-3, LeakyReLU(0.1), and a flatten in NHWC order. The model
outputs the sigmoid of the original, which is P(real): the upstream data
generator sorted class folders `df`=0, `real`=1.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from export import keras_h5
from export.checkpoints import load_state_dict_strict, seeded

PRETRAINED_CFG = {
    "input_size": 256,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "head": "p_real",
    "asset": "meso4_df",
}

KERAS_BN_EPS = 1e-3


class ConvBlock(nn.Module):
    """Conv2D(relu, same) → BatchNormalization → MaxPooling2D, as each Keras block."""

    def __init__(self, cin: int, cout: int, kernel: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(F.relu(self.conv(x))))


class MesoHead(nn.Module):
    """Flatten → Dropout → Dense(16) → LeakyReLU(0.1) → Dropout → Dense(1, sigmoid)."""

    def __init__(self, features: int = 1024) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(features, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keras flattens channels-last; flattening NHWC keeps its Dense kernel as is.
        x = x.permute(0, 2, 3, 1).flatten(1)
        x = F.leaky_relu(self.fc1(self.dropout(x)), 0.1)
        return torch.sigmoid(self.fc2(self.dropout(x)))


class Meso4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = ConvBlock(3, 8, 3, 2)
        self.block2 = ConvBlock(8, 8, 5, 2)
        self.block3 = ConvBlock(8, 16, 5, 2)
        self.block4 = ConvBlock(16, 16, 5, 4)
        self.head = MesoHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: RGB in [0, 1], Nx3x256x256 → P(real), Nx1."""
        return self.head(self.block4(self.block3(self.block2(self.block1(x)))))


def create_model() -> Meso4:
    return seeded(Meso4)


def state_dict_from_keras(path: Path) -> dict[str, torch.Tensor]:
    layers = keras_h5.read_keras_h5(path)
    keras_h5.expect_counts(layers, path, conv2d=4, batch_normalization=4, dense=2)
    state: dict[str, torch.Tensor] = {}
    for i in range(4):
        state |= keras_h5.conv2d(layers["conv2d"][i], f"block{i + 1}.conv")
        state |= keras_h5.batch_norm(layers["batch_normalization"][i], f"block{i + 1}.bn")
    state |= keras_h5.dense(layers["dense"][0], "head.fc1")
    state |= keras_h5.dense(layers["dense"][1], "head.fc2")
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    load_state_dict_strict(model, state_dict_from_keras(path), str(path))
