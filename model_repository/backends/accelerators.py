"""The ONNX Runtime execution providers a member's config asks for, read as the NGC
image's native ONNX Runtime backend reads them, so the local Triton runs the GPU configs
too: a KIND_GPU instance on CUDA, with TensorRT first where the config names it
(`optimization.execution_accelerators`: FP16, the engine and timing caches, the shape
profile); any other instance on the CPU. Standard library only (linked beside each
Python-based backend by local_triton.prepare_backends, imported by the tests).
"""

# Where config.pbtxt keeps its engines (the Kubernetes volume); a local run moves that root
# under its work dir through this variable (model_repository/local_triton.py sets it).
CACHE_ROOT = "/trt-cache"
CACHE_ROOT_ENV = "DEEPFAKE_TRT_CACHE"
# The native backend's TensorRT parameters, under ONNX Runtime's names for them.
TENSORRT_OPTIONS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_engine_cache_enable": "trt_engine_cache_enable",
    "trt_engine_cache_path": "trt_engine_cache_path",
    "trt_timing_cache_enable": "trt_timing_cache_enable",
    "trt_timing_cache_path": "trt_timing_cache_path",
    "trt_profile_min_shapes": "trt_profile_min_shapes",
    "trt_profile_opt_shapes": "trt_profile_opt_shapes",
    "trt_profile_max_shapes": "trt_profile_max_shapes",
}
Provider = str | tuple[str, dict[str, str]]


def on_gpu(config: dict) -> bool:
    return any(group.get("kind") == "KIND_GPU" for group in config.get("instance_group", []))


def tensorrt_options(parameters: dict[str, str], device_id: int, cache_root: str | None) -> dict:
    """ORT's TensorRT provider options from the native backend's accelerator parameters."""
    options = {"device_id": str(device_id)}
    for key, value in parameters.items():
        if key == "precision_mode":
            options["trt_fp16_enable"] = "1" if value.upper() == "FP16" else "0"
            options["trt_int8_enable"] = "1" if value.upper() == "INT8" else "0"
        elif key in TENSORRT_OPTIONS:
            if key.endswith("_path") and cache_root and value.startswith(CACHE_ROOT + "/"):
                value = cache_root.rstrip("/") + value[len(CACHE_ROOT) :]
            options[TENSORRT_OPTIONS[key]] = value
        else:  # a parameter this reading does not know would be silently dropped
            raise ValueError(f"unknown TensorRT accelerator parameter {key!r}")
    return options


def providers(config: dict, device_id: int = 0, cache_root: str | None = None) -> list[Provider]:
    """The providers, best first, for a config as Triton hands it to a Python backend
    (its JSON, field names as in the .pbtxt)."""
    if not on_gpu(config):
        return ["CPUExecutionProvider"]
    optimization = config.get("optimization", {})
    accelerators = optimization.get("execution_accelerators", {})
    chosen: list[Provider] = []
    for accelerator in accelerators.get("gpu_execution_accelerator", []):
        if accelerator.get("name") != "tensorrt":
            raise ValueError(f"unknown GPU accelerator {accelerator.get('name')!r}")
        parameters = accelerator.get("parameters", {})
        chosen.append(
            ("TensorrtExecutionProvider", tensorrt_options(parameters, device_id, cache_root))
        )
    return [
        *chosen,
        ("CUDAExecutionProvider", {"device_id": str(device_id)}),
        "CPUExecutionProvider",
    ]


def missing(wanted: list[Provider], available: list[str]) -> list[str]:
    """The providers asked for that this onnxruntime build lacks (onnxruntime-gpu and
    TensorRT's libraries are needed for a GPU config)."""
    names = [p if isinstance(p, str) else p[0] for p in wanted]
    return [name for name in names if name not in available]
