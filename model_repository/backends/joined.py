"""What the project's Python-based backends share: a dynamic batch of requests joined
into one batch, run (in chunks where configured) and split back by request.

Linked next to each backend's model.py by local_triton.prepare_backends.
"""

from collections.abc import Callable

import numpy as np
import triton_python_backend_utils as pb_utils

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # inputs -> outputs, in order


def params(config: dict) -> dict[str, str]:
    """The config's `parameters`, as plain strings."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def execute(
    runtime: str, requests: list, inputs: list[str], outputs: list[str], run: Run, chunk: int
) -> list:
    """One response per request. The dynamic batcher only groups requests whose shapes
    agree, so they concatenate; a chunk of 0 runs the whole batch at once. A failure is
    each request's error, named after the `runtime` that raised it."""
    arrays = {
        name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
        for name in inputs
    }
    try:
        for name, parts in arrays.items():
            # OpenVINO scores an empty image (0.0, "real") where ONNX Runtime fails: refuse it.
            if any(0 in part.shape for part in parts):
                raise ValueError(f"{name} is empty: shape {parts[0].shape}")
        batch = {name: np.concatenate(a) for name, a in arrays.items()}
        size = len(batch[inputs[0]])
        step = chunk or size
        parts = [run({k: v[i : i + step] for k, v in batch.items()}) for i in range(0, size, step)]
        results = [np.concatenate(p) for p in zip(*parts, strict=True)]
    except Exception as exc:  # a bad input must fail its requests, not the server
        error = pb_utils.TritonError(f"{runtime}: {exc}")
        return [pb_utils.InferenceResponse(error=error) for _ in requests]
    bounds = np.cumsum([a.shape[0] for a in arrays[inputs[0]]])[:-1]
    responses = []
    for split in zip(*(np.split(r, bounds) for r in results), strict=True):
        tensors = [pb_utils.Tensor(n, p) for n, p in zip(outputs, split, strict=True)]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
    return responses
