"""Wrap an architecture so its ONNX graph takes what clients have and returns
what they want: uint8 RGB face crops in, P(fake) out.

All preprocessing lives in the graph (cast, resize to the native size,
normalise), so a client sends small uint8 crops of any size and never builds
float tensors, and every runtime (ORT on CPU, ORT/TensorRT on GPU) does the
same arithmetic.
"""

from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.tensors import INPUT_NAME, OUTPUT_NAME

OPSET = 17
__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "FacesToPFake", "export_onnx"]


class FacesToPFake(nn.Module):
    """FACES uint8 [N, H, W, 3] RGB → P_FAKE float32 [N, 1]."""

    def __init__(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.size = int(cfg["input_size"])
        self.head = str(cfg["head"])
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.permute(0, 3, 1, 2).float() / 255.0
        # Half-pixel bilinear at scale 1 samples exactly the input pixels: a
        # crop already at the native size passes through unchanged.
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.p_fake(self.model((x - self.mean) / self.std))

    def p_fake(self, out: torch.Tensor) -> torch.Tensor:
        if self.head == "p_real":  # MesoNet's sigmoid is P(real)
            return 1.0 - out
        if self.head == "softmax_index1":  # FF++ Xception: class 1 = fake
            return torch.softmax(out, dim=1)[:, 1:2]
        if self.head == "sigmoid":  # DFDC classifier: one logit for fake
            return torch.sigmoid(out)
        raise ValueError(f"unknown head {self.head!r}")


def export_onnx(wrapper: FacesToPFake, path: Path, metadata: dict[str, str]) -> None:
    """Write `wrapper` as ONNX with dynamic N, H, W, weights inside the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.randint(0, 256, (2, wrapper.size, wrapper.size, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            wrapper.eval(),
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N", 1: "H", 2: "W"}, OUTPUT_NAME: {0: "N"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: faster here (CONTRIBUTING.md), no onnxscript
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
