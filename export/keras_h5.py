"""Read Keras 2 HDF5 weights-only files with h5py, without TensorFlow.

Such a file stores no architecture, only `layer/layer/param:0` datasets, and
Keras numbers layers per process, so the same model can be saved as
`conv2d_5..8` or `conv2d_1..4`. What is stable is the order of those numbers
within each layer kind: that order is how the MesoNet ports match layers.
"""

import re
from pathlib import Path

import h5py
import numpy as np
import torch

from export.checkpoints import WeightsError

KerasLayer = dict[str, np.ndarray]
_NAME = re.compile(r"^(?P<kind>[a-z0-9_]+?)_(?P<index>\d+)$")


def read_keras_h5(path: Path) -> dict[str, list[KerasLayer]]:
    """Weighted layers of each kind ('conv2d', 'dense', …), in Keras creation order."""
    try:
        with h5py.File(path, "r") as h5:
            names = [n.decode() for n in h5.attrs["layer_names"]]
            by_kind: dict[str, list[tuple[int, KerasLayer]]] = {}
            for name in names:
                params = _layer_params(h5[name])
                match = _NAME.match(name)
                if params and match:
                    entry = (int(match["index"]), params)
                    by_kind.setdefault(match["kind"], []).append(entry)
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path}: not a Keras HDF5 weights file ({exc})") from exc
    return {
        kind: [p for _, p in sorted(layers, key=lambda e: e[0])] for kind, layers in by_kind.items()
    }


def _layer_params(group: h5py.Group) -> KerasLayer:
    """{'kernel': …, 'bias': …} from datasets named like `conv2d_5/kernel:0`."""
    params: KerasLayer = {}

    def collect(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            params[name.rsplit("/", 1)[-1].split(":")[0]] = obj[()]

    group.visititems(collect)
    return params


def conv2d(layer: KerasLayer, prefix: str) -> dict[str, torch.Tensor]:
    """Keras kernels are HWIO; torch wants OIHW."""
    return {
        f"{prefix}.weight": torch.from_numpy(layer["kernel"].transpose(3, 2, 0, 1).copy()),
        f"{prefix}.bias": torch.from_numpy(layer["bias"]),
    }


def batch_norm(layer: KerasLayer, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.from_numpy(layer["gamma"]),
        f"{prefix}.bias": torch.from_numpy(layer["beta"]),
        f"{prefix}.running_mean": torch.from_numpy(layer["moving_mean"]),
        f"{prefix}.running_var": torch.from_numpy(layer["moving_variance"]),
        f"{prefix}.num_batches_tracked": torch.tensor(0),
    }


def dense(layer: KerasLayer, prefix: str) -> dict[str, torch.Tensor]:
    """Keras kernels are [in, out]; torch Linear wants [out, in]."""
    return {
        f"{prefix}.weight": torch.from_numpy(layer["kernel"].T.copy()),
        f"{prefix}.bias": torch.from_numpy(layer["bias"]),
    }


def expect_counts(layers: dict[str, list[KerasLayer]], path: Path, **counts: int) -> None:
    """Refuse a file whose layer inventory is not the architecture's."""
    found = {kind: len(layers.get(kind, [])) for kind in counts}
    if found != counts:
        raise WeightsError(f"{path}: expected weighted layers {counts}, found {found}")
