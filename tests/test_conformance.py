"""MesoNet conformance: the port, served by Triton, against the original Keras
models (computed by TensorFlow/Keras in its own venv, tests/keras_reference)."""

import subprocess

import numpy as np
import pytest
import torch

from export import meso4, mesoinception4
from model_repository.local_triton import TritonSettings
from tests.conftest import ASSETS, ROOT, SHARED
from tests.triton_client import infer

# The full tier only (make test): runs the Keras reference in .venv-keras.
pytestmark = pytest.mark.stack


INPUTS = SHARED / "conformance/mesonet_conformance_inputs.npy"
KERAS_PYTHON = ROOT / ".venv-keras/bin/python"
# Served members and the Keras weights behind them (the F2F pair: member manifests).
DEFAULT_WEIGHTS = {
    "meso4": "Meso4_DF",
    "mesoinception4": "MesoInception_DF",
    "meso4_f2f": "Meso4_F2F",
    "mesoinception4_f2f": "MesoInception_F2F",
}
PORTS = {
    "Meso4_DF": meso4,
    "Meso4_F2F": meso4,
    "MesoInception_DF": mesoinception4,
    "MesoInception_F2F": mesoinception4,
}


@pytest.fixture(scope="session")
def keras_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    if not KERAS_PYTHON.exists():
        pytest.fail(f"{KERAS_PYTHON} missing: `make setup` creates the Keras reference venv")
    out = tmp_path_factory.mktemp("keras") / "reference.npz"
    subprocess.run(
        [
            str(KERAS_PYTHON),
            str(ROOT / "tests/keras_reference/mesonet_keras.py"),
            "--inputs",
            str(INPUTS),
            "--weights-dir",
            str(ASSETS / "weights/mesonet"),
            "--out",
            str(out),
            "--logits",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return dict(np.load(out))


@pytest.mark.parametrize("model", sorted(DEFAULT_WEIGHTS))
def test_triton_agrees_with_keras_to_1e_4(
    triton: TritonSettings, model: str, keras_reference: dict[str, np.ndarray]
) -> None:
    p_fake = infer(triton.grpc_url, model, np.load(INPUTS))["P_FAKE"].ravel()
    p_real = keras_reference[DEFAULT_WEIGHTS[model]]
    np.testing.assert_allclose(p_fake, 1.0 - p_real, atol=1e-4)


@pytest.mark.parametrize("stem", sorted(PORTS))
def test_port_logits_agree_with_keras(stem: str, keras_reference: dict[str, np.ndarray]) -> None:
    """Logits, because MesoInception's sigmoid saturates at 1.0 on most inputs,
    where a swapped branch would still pass a check on probabilities."""
    arch = PORTS[stem]
    model = arch.create_model()
    arch.load_weights(model, ASSETS / "weights/mesonet" / f"{stem}.h5")
    logits: list[torch.Tensor] = []
    model.head.fc2.register_forward_hook(lambda _m, _i, out: logits.append(out))
    x = torch.from_numpy(np.load(INPUTS)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        model(x)
    np.testing.assert_allclose(
        logits[0].numpy().ravel(), keras_reference[f"{stem}_logit"], rtol=1e-4, atol=1e-4
    )
