"""ONNX Runtime as a Python-based Triton backend, for the local CPU profile.

The NGC image serves `backend: "onnxruntime"` with its native C++ backend. The
pytriton wheel ships no such backend, so Triton finds this file as
`<backend-directory>/onnxruntime/model.py` and runs it through the python
backend instead: the same model repository serves in both places.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        # The native backend's parameter names, so one config tunes both runtimes.
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", 0))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", 0))
        # Idle intra-op threads spin by default: on a CPU shared with other models
        # and the gateway, spinning burns the cores the others need.
        spinning = params.get("allow_spinning", "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        # Large batches of large faces are memory-bound on a CPU (B7 at 380 px:
        # ~1.7x slower per face at 32 than at 8), so a batch runs in chunks.
        self.chunk = int(params.get("max_session_batch", 0)) or None
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        # The dynamic batcher only groups requests whose shapes agree, so the
        # requests are joined into one batch, run (in chunks where configured)
        # and split back by each request's size.
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self.inputs
        }
        try:
            batch = {name: np.concatenate(a) for name, a in arrays.items()}
            size = len(batch[self.inputs[0]])
            step = self.chunk or size
            chunks = [
                self.session.run(self.outputs, {k: v[i : i + step] for k, v in batch.items()})
                for i in range(0, size, step)
            ]
            results = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        except Exception as exc:  # a bad input must fail its requests, not the server
            error = pb_utils.TritonError(f"onnxruntime: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        bounds = np.cumsum([a.shape[0] for a in arrays[self.inputs[0]]])[:-1]
        responses = []
        for parts in zip(*(np.split(r, bounds) for r in results), strict=True):
            tensors = [pb_utils.Tensor(n, p) for n, p in zip(self.outputs, parts, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.session = None
