"""MesoNet weights: the authors' Keras .h5 files, read with h5py, strictly."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from export import meso4, mesoinception4
from export.checkpoints import WeightsError
from export.keras_h5 import read_keras_h5
from tests.conftest import ASSETS

WEIGHTS = ASSETS / "weights/mesonet"


@pytest.mark.parametrize(
    ("arch", "file"),
    [
        (meso4, "Meso4_DF.h5"),
        (meso4, "Meso4_F2F.h5"),
        (mesoinception4, "MesoInception_DF.h5"),
        (mesoinception4, "MesoInception_F2F.h5"),
    ],
)
def test_every_real_weights_file_loads_completely(arch: object, file: str) -> None:
    model = arch.create_model()
    arch.load_weights(model, WEIGHTS / file)
    layers = read_keras_h5(WEIGHTS / file)
    first_conv = next(iter(model.state_dict().items()))
    kernel = layers["conv2d"][0]["kernel"]
    # Keras HWIO → torch OIHW
    np.testing.assert_array_equal(first_conv[1].numpy(), kernel.transpose(3, 2, 0, 1))


def test_layers_are_ordered_by_their_keras_index_not_file_order() -> None:
    """MesoInception's file lists conv2d_2, conv2d_4, … before conv2d_1."""
    layers = read_keras_h5(WEIGHTS / "MesoInception_DF.h5")
    assert [c["kernel"].shape[-1] for c in layers["conv2d"][:7]] == [1, 4, 4, 4, 4, 2, 2]


def test_the_wrong_architecture_is_refused() -> None:
    with pytest.raises(WeightsError, match="expected weighted layers"):
        meso4.load_weights(meso4.create_model(), WEIGHTS / "MesoInception_DF.h5")


def test_a_file_that_is_not_hdf5_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError, match="not a Keras HDF5"):
        meso4.load_weights(meso4.create_model(), bogus)


def test_a_weight_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes((WEIGHTS / "Meso4_DF.h5").read_bytes())
    with h5py.File(broken, "r+") as h5:
        group = h5["dense_3/dense_3"]
        del group["kernel:0"]
        group["kernel:0"] = np.zeros((512, 16), np.float32)
    model = meso4.create_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"head\.fc1\.weight"):
        meso4.load_weights(model, broken)
    for key, value in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key
