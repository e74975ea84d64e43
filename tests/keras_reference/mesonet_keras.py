"""Independent Keras reference for the original MesoNet models (DariusAf/MesoNet).

Rebuilds Meso4 and MesoInception4 exactly as upstream ``classifiers.py`` and loads
the authors' Keras 2.1.5 weights-only HDF5 files. Run it in the separate venv
described in README.md:

    python mesonet_keras.py --inputs INPUTS.npy --weights-dir DIR --out OUT.npz

The output npz holds one float64 array [N] per weights file stem: the sigmoid
output, which is P(real); with --logits also ``<stem>_logit`` (pre-sigmoid), which
stays informative where the sigmoid saturates at 1.0.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import keras
import numpy as np
from keras import KerasTensor, layers

IMG_SIZE = 256
# Keras auto-names layers <type>_<n>, n counting per type in creation order; the
# weighted types below are matched file <-> model by that creation order. (Plain
# order-of-layers loading is ambiguous for MesoInception: e.g. conv2d_2 and
# conv2d_4 have the same shape, and the file stores them in Keras 2's graph order.)
WEIGHTED_TYPES: dict[type[layers.Layer], str] = {
    layers.Conv2D: "conv2d",
    layers.BatchNormalization: "batch_normalization",
    layers.Dense: "dense",
}


class _Builder:
    """Creates layers and remembers their creation order (= upstream code order)."""

    def __init__(self) -> None:
        self.created: list[layers.Layer] = []

    def add(self, layer: layers.Layer) -> layers.Layer:
        self.created.append(layer)
        return layer

    def conv(self, x: KerasTensor, filters: int, kernel: int, dilation: int = 1) -> KerasTensor:
        conv = layers.Conv2D(
            filters, kernel, padding="same", activation="relu", dilation_rate=dilation
        )
        return self.add(conv)(x)

    def bn_pool(self, x: KerasTensor, pool: int) -> KerasTensor:
        x = self.add(layers.BatchNormalization())(x)  # epsilon 1e-3 as in Keras 2
        return layers.MaxPooling2D(pool_size=pool, padding="same")(x)

    def inception(self, x: KerasTensor, a: int, b: int, c: int, d: int) -> KerasTensor:
        x1 = self.conv(x, a, 1)
        x2 = self.conv(self.conv(x, b, 1), b, 3)
        x3 = self.conv(self.conv(x, c, 1), c, 3, dilation=2)
        x4 = self.conv(self.conv(x, d, 1), d, 3, dilation=3)
        return layers.Concatenate(axis=-1)([x1, x2, x3, x4])

    def head(self, x: KerasTensor) -> KerasTensor:
        x = layers.Dropout(0.5)(layers.Flatten()(x))
        x = layers.LeakyReLU(negative_slope=0.1)(self.add(layers.Dense(16))(x))
        x = layers.Dropout(0.5)(x)
        return self.add(layers.Dense(1, activation="sigmoid"))(x)


def meso4() -> tuple[keras.Model, list[layers.Layer]]:
    bld = _Builder()
    inp = keras.Input((IMG_SIZE, IMG_SIZE, 3))
    x = inp
    for filters, kernel, pool in ((8, 3, 2), (8, 5, 2), (16, 5, 2), (16, 5, 4)):
        x = bld.bn_pool(bld.conv(x, filters, kernel), pool)
    return keras.Model(inp, bld.head(x), name="Meso4"), bld.created


def meso_inception4() -> tuple[keras.Model, list[layers.Layer]]:
    bld = _Builder()
    inp = keras.Input((IMG_SIZE, IMG_SIZE, 3))
    x = bld.bn_pool(bld.inception(inp, 1, 4, 4, 2), 2)
    x = bld.bn_pool(bld.inception(x, 2, 4, 4, 2), 2)
    x = bld.bn_pool(bld.conv(x, 16, 5), 2)
    x = bld.bn_pool(bld.conv(x, 16, 5), 4)
    return keras.Model(inp, bld.head(x), name="MesoInception4"), bld.created


ARCHS: dict[str, Callable[[], tuple[keras.Model, list[layers.Layer]]]] = {
    "Meso4": meso4,
    "MesoInception": meso_inception4,
}


def load_h5_weights(path: Path, created: list[layers.Layer]) -> int:
    """Set every weighted layer from the file; check names, shapes and counts."""
    n_set = 0
    with h5py.File(path, "r") as f:
        groups: dict[str, list[tuple[int, h5py.Group]]] = {}
        for raw in f.attrs["layer_names"]:
            name = raw.decode()
            if len(f[name].attrs["weight_names"]) == 0:
                continue
            m = re.fullmatch(r"(.+)_(\d+)", name)
            assert m, f"unexpected layer name {name}"
            groups.setdefault(m[1], []).append((int(m[2]), f[name]))
        assert set(groups) == set(WEIGHTED_TYPES.values()), sorted(groups)
        for cls, kind in WEIGHTED_TYPES.items():
            mine = [lyr for lyr in created if type(lyr) is cls]
            theirs = [g for _, g in sorted(groups[kind], key=lambda t: t[0])]
            assert len(mine) == len(theirs), (kind, len(mine), len(theirs))
            for layer, grp in zip(mine, theirs, strict=True):
                wnames = [w.decode() for w in grp.attrs["weight_names"]]
                arrays = [np.asarray(grp[w]) for w in wnames]
                assert len(arrays) == len(layer.weights), (grp.name, len(layer.weights))
                for var, wname, arr in zip(layer.weights, wnames, arrays, strict=True):
                    stem = wname.rsplit("/", 1)[-1].removesuffix(":0")
                    assert var.name == stem, (grp.name, var.name, stem)
                    assert tuple(var.shape) == arr.shape, (
                        grp.name,
                        var.shape,
                        arr.shape,
                    )
                layer.set_weights(arrays)
                n_set += 1
    return n_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=Path, required=True, help="uint8 [N,256,256,3] RGB .npy")
    ap.add_argument("--weights-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--logits", action="store_true", help="also store <stem>_logit arrays")
    args = ap.parse_args()

    x_u8 = np.load(args.inputs)
    assert x_u8.dtype == np.uint8 and x_u8.shape[1:] == (IMG_SIZE, IMG_SIZE, 3), x_u8.shape
    x = x_u8.astype(np.float32) / np.float32(255.0)

    results: dict[str, np.ndarray] = {}
    for path in sorted(args.weights_dir.glob("*.h5")):
        arch = path.stem.split("_", 1)[0]
        model, created = ARCHS[arch]()
        n_layers = load_h5_weights(path, created)
        y = np.asarray(model(x, training=False), dtype=np.float64).reshape(-1)
        results[path.stem] = y
        print(f"{path.stem:18s} ({n_layers} layers) " + " ".join(f"{v:.6f}" for v in y))
        if args.logits:
            created[-1].activation = keras.activations.linear  # final Dense(1)
            z = np.asarray(model(x, training=False), dtype=np.float64).reshape(-1)
            results[f"{path.stem}_logit"] = z
            print(f"{'  logit':18s} {'':12s}" + " ".join(f"{v:.3f}" for v in z))
    np.savez(args.out, allow_pickle=False, **results)
    print(f"wrote {args.out} (keras {keras.__version__})")


if __name__ == "__main__":
    main()
