"""Reading PyTorch checkpoints in the layouts published deepfake detectors ship, and strict loading.

Checkpoints come as a plain state dict, or wrapped in a training-state dict
(``{"state_dict": ..., "epoch": ..., "bce_best": ...}`` for selimsef's DFDC models,
``{"model": ...}`` / ``{"model_state_dict": ...}`` elsewhere), often saved from a
``DataParallel`` wrapper so every key starts with ``module.``. Files are only ever read with
``weights_only=True``: a checkpoint is untrusted input and must not be able to run code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "WeightsError",
    "load_checkpoint",
    "load_state_dict_strict",
    "read_torch_checkpoint",
    "seeded",
]

# Training-state wrappers, in the order they are tried.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PARALLEL_PREFIX = "module."
# Enough names to recognise the problem without burying it.
_MAX_LISTED = 10


class WeightsError(ValueError):
    """A weights file cannot be read, or does not match the model it is loaded into."""


def _numpy_scalar_globals() -> list[Any]:
    """Globals needed to unpickle numpy scalars stored next to the weights.

    selimsef's "best" checkpoints store ``bce_best`` as a ``numpy.float64`` (sklearn's log_loss),
    which ``weights_only`` refuses by default. These only rebuild numbers from raw bytes and a
    dtype, never call user code, so allowing them keeps the load safe.
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2 (1.26 ships a shim)
    except ImportError:
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [
        np.dtype,
        # Files written under numpy 1.x name it numpy.core..., under 2.x numpy._core...
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Float64DType, ...).
    for name in ("float16", "float32", "float64", "int32", "int64", "bool"):
        allowed.append(type(np.dtype(name)))
    return allowed


def _describe(obj: object) -> str:
    """Short description of something found where a state dict was expected."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj.keys())[:_MAX_LISTED]]
        more = f", ... ({len(obj)} keys)" if len(obj) > _MAX_LISTED else ""
        return f"a {type(obj).__name__} with keys [{', '.join(keys)}{more}]"
    return f"a {type(obj).__module__}.{type(obj).__name__}"


def _refusal_reason(exc: Exception) -> str:
    """The useful part of a torch.load failure (its messages run to many lines)."""
    text = str(exc)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (
            f"it holds the Python object {unsupported.group(1)}, which weights_only loading"
            " refuses; if it is a whole pickled model, load it where the file is trusted and"
            " re-save model.state_dict()"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first_line}"


def _unwrap(obj: object, path: Path) -> Mapping[str, Any]:
    """Find the state dict inside the training-state wrappers checkpoints come in."""
    for _ in range(3):  # a wrapper inside a wrapper is seen in the wild; deeper is not
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)),
            None,
        )
        if inner is None:
            return obj
        obj = inner
    if isinstance(obj, Mapping):
        return obj
    raise WeightsError(
        f"{path}: expected a state dict (a mapping of tensors), found {_describe(obj)}"
    )


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` checkpoint into a flat ``{name: tensor}`` dict on CPU.

    Unwraps ``state_dict`` / ``model_state_dict`` / ``model`` wrappers and strips the
    ``module.`` prefix ``DataParallel`` adds. Raises ``WeightsError`` for anything else.
    """
    path = Path(path)
    allowed = _numpy_scalar_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: no such file") from exc
    except OSError as exc:
        raise WeightsError(f"{path}: cannot be read ({exc})") from exc
    except Exception as exc:  # torch.load raises many types for corrupt or foreign files
        raise WeightsError(
            f"{path}: not a loadable PyTorch checkpoint ({_refusal_reason(exc)})"
        ) from exc

    state = _unwrap(obj, path)
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        raise WeightsError(
            f"{path}: expected a state dict (a mapping of tensors), found {_describe(state)}"
            + (f"; non-tensor entries: {_listing(not_tensors)}" if not_tensors else "")
        )

    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = str(key).removeprefix(_PARALLEL_PREFIX)
        if name in out:
            raise WeightsError(f"{path}: key {name!r} appears both with and without 'module.'")
        out[name] = tensor
    return out


def _listing(items: list[str]) -> str:
    """Comma-joined, cut to ``_MAX_LISTED`` entries with a count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return f"{shown}, ... and {rest} more" if rest > 0 else shown


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _dtype_kind(t: torch.Tensor) -> str:
    """float16 weights load into float32 fine; a float into an integer buffer does not."""
    if t.is_complex():
        return "complex"
    return "float" if t.is_floating_point() else "integer"


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``model`` only if every key and shape matches; else ``WeightsError``.

    The error lists missing keys, unexpected keys and shape mismatches (each cut to a readable
    number, with counts). On error the model is left untouched: never a silent partial load.
    """
    expected = model.state_dict()
    full = dict(state)

    # BatchNorm's num_batches_tracked is a training counter (only read when momentum is None) and
    # files saved before PyTorch 0.4.1, like the Keras-ported Xception, lack it; keep ours.
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in full:
            full[key] = value

    missing = [k for k in expected if k not in full]
    unexpected = [k for k in full if k not in expected]
    mismatched = [
        f"{k} (expected {_shape(expected[k])}, got {_shape(full[k])})"
        for k in expected
        if k in full and full[k].shape != expected[k].shape
    ]
    # Checked up front because load_state_dict copies tensor by tensor: failing halfway through
    # would leave a half-loaded model.
    mismatched += [
        f"{k} (expected {expected[k].dtype}, got {full[k].dtype})"
        for k in expected
        if k in full
        and full[k].shape == expected[k].shape
        and _dtype_kind(full[k]) != _dtype_kind(expected[k])
    ]
    if missing or unexpected or mismatched:
        lines = [
            (
                f"{source}: weights do not match {type(model).__name__}"
                f" ({len(missing)} missing, {len(unexpected)} unexpected,"
                f" {len(mismatched)} shape/dtype mismatches)"
            )
        ]
        if expected and set(expected).isdisjoint(state):
            lines.append("  no expected key is present: is this a different architecture?")
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            lines.append(f"  shape/dtype mismatches ({len(mismatched)}): {_listing(mismatched)}")
        raise WeightsError("\n".join(lines))

    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # e.g. a tensor whose dtype cannot be copied in
        raise WeightsError(f"{source}: {exc}") from exc


def load_checkpoint(
    model: nn.Module,
    path: Path,
    convert: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]],
) -> None:
    """Read a PyTorch checkpoint, map its keys with `convert`, load it strictly."""
    load_state_dict_strict(model, convert(read_torch_checkpoint(path)), source=str(path))


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def seeded(factory: Callable[[], ModuleT], seed: int = 0) -> ModuleT:
    """`factory()` in eval mode with a reproducible random initialisation, so a
    model exported without weights is the same every time; the caller's RNG
    stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.eval()
