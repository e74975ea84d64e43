"""ONNX Runtime as a Python-based Triton backend, for the local profiles.

The NGC image serves `backend: "onnxruntime"` with its native C++ backend. The
pytriton wheel ships no such backend, so Triton finds this file as
`<backend-directory>/onnxruntime/model.py` and runs it through the python
backend instead: the same model repository serves in both places. A GPU config
(config.pbtxt: TensorRT FP16; configs/cuda.pbtxt) runs on the providers it names
(accelerators.py), on a machine whose onnxruntime has them (onnxruntime-gpu).
"""

import json
import os

import accelerators
import joined
import onnxruntime as ort


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = joined.params(config)
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
        self.chunk = int(params.get("max_session_batch", 0))
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        device = int(args.get("model_instance_device_id", 0))
        cache_root = os.environ.get(accelerators.CACHE_ROOT_ENV)
        providers = accelerators.providers(config, device, cache_root)
        lacking = accelerators.missing(providers, ort.get_available_providers())
        if lacking:  # never a silent fall back to the CPU under a GPU config
            raise RuntimeError(f"this onnxruntime lacks {lacking}: install onnxruntime-gpu")
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        def run(batch: dict) -> list:
            return self.session.run(self.outputs, batch)

        return joined.execute("onnxruntime", requests, self.inputs, self.outputs, run, self.chunk)

    def finalize(self) -> None:
        self.session = None
