"""A fake model server for the fast tier: Triton's gRPC protocol, in process, no models.

The gateway talks to it exactly as to `tritonserver` (its own gRPC client, the same
config and metadata calls, the same inference RPC), so everything between the HTTP
request and the wire runs for real. What it says about the models is read from the
committed model_repository/ configs the local Triton loads (the same profile layout,
the same `cpu` config names), so the Ensemble facts (members, vote weights,
provenance, input sizes, batch sizes) are the ones a real Triton would give. Only the
scores are made up, and deterministically from the faces sent: each member answers the
mean of one colour channel of each crop (scaled to [0, 1]), and the vote is the
weighted mean that model_repository/vote.toml and export/vote.py define. The full tier
(`make test`) runs the same API against a real Triton.

A member may have a candidate version loaded beside its serving version 1 (`candidates`,
as `python -m export.versions candidate` writes it): its P(fake) is 1 minus the serving
one's. Like Triton, a call naming no version gets the newest loaded (the candidate); the
ensemble's steps are pinned to the serving version.
"""

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.server.model_server import parse_vote_groups, parse_vote_weights
from gateway.server.verdict import aggregate
from model_repository.local_triton import REPOSITORY
from preprocess.tensors import member_output
from tests.stack import free_port

ENSEMBLE = "deepfake_ensemble"


def read_config(folder: Path, config_name: str = "cpu") -> model_config_pb2.ModelConfig:
    """A model's config as Triton reads it: configs/<name>.pbtxt when there is one
    (--model-config-name), else config.pbtxt."""
    named = folder / "configs" / f"{config_name}.pbtxt"
    path = named if named.exists() else folder / "config.pbtxt"
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def member_score(faces: np.ndarray, channel: int) -> np.ndarray:
    """P(fake) per face: the mean of one colour channel, in [0, 1]; depends on the crop."""
    return faces[..., channel].reshape(len(faces), -1).mean(axis=1).astype(np.float32) / 255.0


@dataclass
class FakeModels:
    """The profile's models as the local Triton would load them (explicit mode: the
    ensemble and exactly its steps)."""

    profile: str = "lite"
    repository: Path = REPOSITORY
    ready: bool = True  # a test may take the server down (then: not ready, 503s)
    candidates: dict[str, int] = field(default_factory=dict)  # member -> its candidate version

    def __post_init__(self) -> None:
        profile_dir = self.repository / self.profile
        self.configs = {ENSEMBLE: read_config(profile_dir / ENSEMBLE)}
        steps = [s.model_name for s in self.configs[ENSEMBLE].ensemble_scheduling.step]
        self.members, vote = steps[:-1], steps[-1]
        self.configs[vote] = read_config(profile_dir / vote)
        for member in self.members:
            self.configs[member] = read_config(self.repository / "members" / member)
        for member, version in self.candidates.items():
            config = self.configs[member]
            config.version_policy.specific.versions[:] = [1, version]
            config.parameters["serving_version"].string_value = "1"
            config.parameters["candidate_version"].string_value = str(version)
        params = {k: v.string_value for k, v in self.configs[vote].parameters.items()}
        self.vote_weights = parse_vote_weights(params.get("vote_weights", ""))
        # The rule the vote graph was exported with (model_repository/vote.toml).
        self.vote_groups = (
            parse_vote_groups(params.get("vote_groups", ""))
            if params.get("vote_rule") == "max_of_groups"
            else None
        )

    def versions(self, model: str) -> list[str]:
        """The versions loaded, oldest first."""
        return [str(v) for v in self.configs[model].version_policy.specific.versions] or ["1"]

    def infer(self, model: str, faces: np.ndarray, version: str = "") -> dict[str, np.ndarray]:
        """The outputs `model` has in its config, each [batch, 1] FP32; a member's `version`
        ("": the newest loaded)."""
        scores = {m: member_score(faces, i % 3) for i, m in enumerate(self.members)}
        if model in self.members:
            if (version or self.versions(model)[-1]) == str(self.candidates.get(model)):
                return {"P_FAKE": (1 - scores[model]).reshape(-1, 1)}
            return {"P_FAKE": scores[model].reshape(-1, 1)}
        vote = aggregate.vote(scores, self.vote_weights, self.vote_groups)
        outputs = {member_output(m): s.reshape(-1, 1) for m, s in scores.items()}
        return {"P_FAKE": vote.reshape(-1, 1).astype(np.float32)} | outputs


class FakeTritonService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs the gateway makes; any other is UNIMPLEMENTED (the base class's answer)."""

    def __init__(self, models: FakeModels) -> None:
        self.models = models
        self.infer_calls = 0

    def _config(self, name: str, context: grpc.ServicerContext) -> model_config_pb2.ModelConfig:
        if name not in self.models.configs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}'")
        if not self.models.ready:
            context.abort(grpc.StatusCode.UNAVAILABLE, "Request for unknown model: not ready")
        return self.models.configs[name]

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.models.ready)

    def ModelReady(self, request, context):
        ready = self.models.ready and request.name in self.models.configs
        return service_pb2.ModelReadyResponse(ready=ready)

    def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=self._config(request.name, context))

    def ModelMetadata(self, request, context):
        config = self._config(request.name, context)
        tensors = service_pb2.ModelMetadataResponse.TensorMetadata
        datatype = {v: k.removeprefix("TYPE_") for k, v in model_config_pb2.DataType.items()}

        def describe(items) -> list:
            return [
                tensors(name=t.name, datatype=datatype[t.data_type], shape=[-1, *t.dims])
                for t in items
            ]

        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=self.models.versions(request.name),
            platform=config.platform or config.backend,
            inputs=describe(config.input),
            outputs=describe(config.output),
        )

    def ModelInfer(self, request, context):
        config = self._config(request.model_name, context)
        self.infer_calls += 1
        (tensor,) = request.inputs
        if tensor.name != "FACES" or tensor.datatype != "UINT8" or len(tensor.shape) != 4:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected input {tensor.name}")
        if tensor.shape[0] > config.max_batch_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch over max_batch_size")
        faces = np.frombuffer(request.raw_input_contents[0], np.uint8).reshape(tensor.shape)
        if request.model_version and request.model_version not in self.models.versions(
            request.model_name
        ):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.model_version}")
        outputs = self.models.infer(request.model_name, faces, request.model_version)
        wanted = [o.name for o in request.outputs] or list(outputs)
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for name in wanted:
            if name not in outputs:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output {name}")
            array = outputs[name]
            response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
            response.raw_output_contents.append(array.tobytes())
        return response


@dataclass(frozen=True)
class FakeTriton:
    url: str
    models: FakeModels
    service: FakeTritonService


@contextlib.contextmanager
def fake_triton(
    profile: str = "lite", candidates: dict[str, int] | None = None
) -> Iterator[FakeTriton]:
    """The fake, serving `profile` on a free local port until the block ends (with each of
    `candidates`' members' candidate version loaded beside version 1)."""
    models = FakeModels(profile, candidates=candidates or {})
    service = FakeTritonService(models)
    server = grpc.server(futures.ThreadPoolExecutor(4, thread_name_prefix="fake-triton"))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield FakeTriton(f"127.0.0.1:{port}", models, service)
    finally:
        stopped: threading.Event = server.stop(grace=None)
        stopped.wait(5)
