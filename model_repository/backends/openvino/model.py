"""OpenVINO as a Python-based Triton backend, for the local CPU profile.

The NGC image serves `backend: "openvino"` with its native C++ backend, which reads
`model.onnx` (default_model_filename) and these parameter names; the pytriton wheel
ships no such backend, so Triton runs this file through its python backend instead.
On CPUs with AVX-512 BF16 (or AMX), HINT_BF16 runs the graph in bfloat16: no
calibration, and export checks the scores against fp32 (export/runtimes.py).
"""

import json
import os

import joined
import openvino as ov


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = joined.params(config)
        properties = {
            "INFERENCE_NUM_THREADS": int(params.get("INFERENCE_NUM_THREADS", 0)),
            "PERFORMANCE_HINT": params.get("PERFORMANCE_HINT", "LATENCY"),
            "NUM_STREAMS": params.get("NUM_STREAMS", "1"),
            "INFERENCE_PRECISION_HINT": "bf16" if params.get("HINT_BF16") == "YES" else "f32",
        }
        # As in the onnxruntime backend: big batches of big faces run in chunks.
        self.chunk = int(params.get("max_session_batch", 0))
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.model = ov.Core().compile_model(path, "CPU", properties)
        # One request reused: an instance executes one batch at a time.
        self.request = self.model.create_infer_request()
        self.inputs = [i.get_any_name() for i in self.model.inputs]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        def run(batch: dict) -> list:
            result = self.request.infer(batch)
            return [result[name] for name in self.outputs]

        return joined.execute("openvino", requests, self.inputs, self.outputs, run, self.chunk)

    def finalize(self) -> None:
        self.request = self.model = None
