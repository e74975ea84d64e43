"""The gateway's view of Triton: one gRPC channel, model facts, batched inference.

Everything the gateway knows about the models (members, vote weights,
provenance, input sizes) is read from Triton's model configs, so a model
repository exported with other weights needs no gateway change.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from gateway.server import metrics
from gateway.server.errors import ApiError
from gateway.server.targets import grpc_target
from gateway.server.tracing import current_request_id
from preprocess.calibration import Calibration
from preprocess.tensors import INPUT_NAME, OUTPUT_NAME, VOTE_RULES, member_output

log = logging.getLogger("gateway")
MAX_MESSAGE_BYTES = 2**31 - 1
CONFIG_TTL_S = 10.0  # model configs are re-read this often: a reload shows up quickly
CONTROL_TIMEOUT_S = 10.0  # configs, metadata: small calls that must not hang on a stuck Triton
RETRY_AFTER_S = "5"
PROVENANCE_KEYS = ("file", "sha256", "source", "licence")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    ready: bool
    input_size: int | None
    trained: bool
    weight: float
    weights: dict[str, str]
    max_batch_size: int
    precision: str = "fp32"  # the config's `precision`: bf16 or int8 under cpu_fast
    precision_reason: str = ""  # the config's `precision_reason`: why, on the serving CPU
    trained_on: str = ""  # what the weights were trained on (a member manifest says)
    versions: dict[str, dict] = field(default_factory=dict)  # fine-tuned versions' provenance
    group: str = ""  # its specialist group, for the vote rule max_of_groups
    # A member's candidate: a version loaded beside the serving one and not served
    # (model_repository/README.md), named by the policy block's `candidate_version`; scored
    # only in the shadow of answers (analysis/shadow.py), never in them. None when none.
    candidate: str | None = None


@dataclass(frozen=True)
class Ensemble:
    name: str
    profile: str
    members: list[ModelInfo]
    ready: bool
    max_batch_size: int
    rule: str = "mean"  # the vote's rule: "mean" or "max_of_groups" (model_repository/vote.toml)
    # raw video score -> P(fake), fit by `make calibrate` (model_repository/calibration.toml)
    calibration: Calibration | None = None

    def member(self, name: str) -> ModelInfo:
        return next(m for m in self.members if m.name == name)


@dataclass
class _Cache:
    ensemble: Ensemble | None = None
    read_at: float = field(default=-1e9)


def balanced(target: str) -> bool:
    """Whether the target can name several servers (then: round robin over them)."""
    return target.startswith(("dns:", "ipv4:", "ipv6:"))


def channel_args(url: str) -> list[tuple[str, int | str]]:
    args: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Reconnect quickly after Triton restarts rather than backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if balanced(grpc_target(url)):
        # One channel, a subchannel per address (a headless Service's pods, or the
        # listed replicas): requests spread over every Triton instead of pinning to
        # the first, and a dead one is skipped until it answers again.
        args.append(("grpc.lb_policy_name", "round_robin"))
    return args


def parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _pairs(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {name.strip(): value.strip() for name, value in pairs}


def parse_vote_weights(text: str) -> dict[str, float]:
    """deepfake_vote's `vote_weights` parameter: "meso4=0.5,xception=0" -> {name: weight}."""
    return {name: float(value) for name, value in _pairs(text).items()}


def parse_vote_groups(text: str) -> dict[str, str]:
    """deepfake_vote's `vote_groups` parameter: "meso4=swap,meso4_f2f=f2f" -> {name: group}."""
    return _pairs(text)


class ModelServer:
    def __init__(
        self, url: str, ensemble: str, timeout_s: float, retries: int, max_batch: int
    ) -> None:
        self.url = url
        self.ensemble_name = ensemble
        self.timeout_s = timeout_s
        self.control_timeout_s = min(timeout_s, CONTROL_TIMEOUT_S)
        self.retries = retries
        self.max_batch = max_batch
        self.client = InferenceServerClient(grpc_target(url), channel_args=channel_args(url))
        self._cache = _Cache()
        self._refreshing = asyncio.Lock()

    async def close(self) -> None:
        await self.client.close()

    # -- health and model facts ------------------------------------------------

    async def ready(self) -> bool:
        try:
            return bool(
                await self.client.is_server_ready(client_timeout=2)
                and await self.client.is_model_ready(self.ensemble_name, client_timeout=2)
            )
        except InferenceServerException:
            return False

    async def ensemble(self, fresh: bool = False) -> Ensemble:
        """The ensemble and its members as Triton describes them (cached briefly)."""

        def stale() -> bool:
            return fresh or time.monotonic() - self._cache.read_at > CONFIG_TTL_S

        if stale():
            # One read for all: every chunk of every request asks (batch_limit), and a
            # request's members' batches ask at once when the cache expires.
            async with self._refreshing:
                if stale():
                    self._cache = _Cache(await self._read_ensemble(), time.monotonic())
                    fresh = False
        assert self._cache.ensemble is not None
        return self._cache.ensemble

    async def _read_ensemble(self) -> Ensemble:
        config = (await self._control(self.client.get_model_config, self.ensemble_name))["config"]
        steps = [s["model_name"] for s in config["ensemble_scheduling"]["step"]]
        vote_name = steps[-1]
        vote = parameters((await self._control(self.client.get_model_config, vote_name))["config"])
        weights = parse_vote_weights(vote.get("vote_weights", ""))
        groups = parse_vote_groups(vote.get("vote_groups", ""))
        rule = vote.get("vote_rule") or "mean"
        if rule not in VOTE_RULES:  # export writes one of them: the repository was edited
            raise RuntimeError(f"{vote_name}: unknown vote_rule {rule!r} (not {VOTE_RULES})")
        members = await asyncio.gather(
            *(self._member(n, weights, groups.get(n, "")) for n in steps[:-1])
        )
        return Ensemble(
            name=self.ensemble_name,
            profile=parameters(config).get("profile", ""),
            members=list(members),
            ready=await self.ready(),
            max_batch_size=int(config.get("max_batch_size", self.max_batch)),
            rule=rule,
            calibration=Calibration.from_json(vote.get("calibration", "")),
        )

    async def _control(self, method: Callable[..., Awaitable[dict]], name: str) -> dict:
        """A small control-plane call (config, metadata) as JSON, on its short deadline."""
        return await self._call(method, name, as_json=True, client_timeout=self.control_timeout_s)

    async def _member(self, name: str, weights: dict[str, float], group: str = "") -> ModelInfo:
        config = (await self._control(self.client.get_model_config, name))["config"]
        metadata = await self._control(self.client.get_model_metadata, name)
        params = parameters(config)
        try:
            ready = bool(await self.client.is_model_ready(name, client_timeout=2))
        except InferenceServerException:
            ready = False
        size = params.get("input_size", "")
        loaded = metadata.get("versions") or [""]
        # With a candidate loaded, two versions are: the one serving is the one its policy
        # block names (the ensemble's step pins it), the candidate is shadow-scored only.
        version = params.get("serving_version") or loaded[-1]
        candidate = params.get("candidate_version", "")
        versions = {
            key.removeprefix("version_"): json.loads(value)
            for key, value in params.items()
            if key.startswith("version_") and key.removeprefix("version_").isdigit()
        }
        provenance = {k: params.get(f"weights_{k}", "") for k in PROVENANCE_KEYS}
        if version in versions:  # a fine-tuned version serves: its own provenance
            provenance |= {
                "file": f"{name}/{version}/model.onnx",
                "sha256": versions[version].get("sha256", ""),
                "source": f"fine-tuned from {versions[version].get('fine_tuned_from', '?')}",
            }
        return ModelInfo(
            name=name,
            version=version,
            ready=ready,
            input_size=int(size) if size.isdigit() else None,
            trained=params.get("trained", "false") == "true",
            weight=weights.get(name, 0.0),
            weights=provenance,
            max_batch_size=int(config.get("max_batch_size", self.max_batch)),
            precision=params.get("precision", "fp32"),
            precision_reason=params.get("precision_reason", ""),
            trained_on=params.get("trained_on", ""),
            versions=versions,
            group=group,
            candidate=candidate if candidate in loaded and candidate != version else None,
        )

    async def batch_limit(self, model: str) -> int:
        """Faces per request to `model`: GATEWAY_MAX_BATCH, but never more than the
        max_batch_size Triton states for it (a larger batch is refused)."""
        ensemble = await self.ensemble()
        sizes = {m.name: m.max_batch_size for m in ensemble.members}
        size = sizes.get(model, ensemble.max_batch_size if model == ensemble.name else 0)
        return min(self.max_batch, size) if size > 0 else self.max_batch

    # -- inference -------------------------------------------------------------

    async def score_with_ensemble(
        self, faces: np.ndarray, members: list[str]
    ) -> dict[str, np.ndarray]:
        """P(fake) per face from the ensemble: each member's and the vote's ("ensemble")."""
        outputs = {m: member_output(m) for m in members} | {"ensemble": OUTPUT_NAME}
        return await self._batched(self.ensemble_name, faces, outputs)

    async def score_with_members(
        self, faces: np.ndarray, members: list[str]
    ) -> dict[str, np.ndarray]:
        """P(fake) per face from each named member, called directly, concurrently: the
        serving version of a member with a candidate loaded (Triton's default would be the
        newest loaded, the candidate)."""
        ensemble = await self.ensemble()
        pinned = {m.name: m.version for m in ensemble.members if m.candidate}
        results = await asyncio.gather(
            *(
                self._batched(name, faces, {name: OUTPUT_NAME}, pinned.get(name, ""))
                for name in members
            )
        )
        return {k: v for r in results for k, v in r.items()}

    async def score_with_version(self, faces: np.ndarray, member: str, version: str) -> np.ndarray:
        """P(fake) per face from one version of a member (a candidate's, for the shadow)."""
        return (await self._batched(member, faces, {member: OUTPUT_NAME}, version))[member]

    async def _batched(
        self, model: str, faces: np.ndarray, outputs: dict[str, str], version: str = ""
    ) -> dict[str, np.ndarray]:
        """Faces in batches of at most batch_limit(model), all in flight at once, so
        Triton's dynamic batcher and instances can overlap them. (Progress is the
        caller's: the gateway sends a few faces at a time and counts them.)"""
        step = await self.batch_limit(model)
        batches = [faces[i : i + step] for i in range(0, len(faces), step)]
        results = await asyncio.gather(
            *(self._infer(model, b, list(outputs.values()), version) for b in batches)
        )
        return {
            key: np.concatenate([r[name].reshape(-1) for r in results]).astype(np.float32)
            for key, name in outputs.items()
        }

    async def _infer(
        self, model: str, faces: np.ndarray, outputs: list[str], version: str = ""
    ) -> dict:
        tensor = InferInput(INPUT_NAME, list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(faces))
        requested = [InferRequestedOutput(name) for name in outputs]
        result = await self._call(
            self.client.infer,
            model,
            [tensor],
            model_version=version,  # "": Triton's choice (the newest loaded)
            outputs=requested,
            client_timeout=self.timeout_s,
            # Triton's logs and trace spans carry the gateway's request id.
            request_id=current_request_id(),
        )
        return {name: result.as_numpy(name) for name in outputs}

    async def _call(self, method: Callable, *args: object, **kwargs: object):
        """One RPC, retried with backoff while Triton is UNAVAILABLE (restarting,
        or a pod going away); every failure becomes an ApiError a client understands."""
        attempt = 0
        while True:
            try:
                return await method(*args, **kwargs)
            except InferenceServerException as exc:
                if "UNAVAILABLE" in (exc.status() or "") and attempt < self.retries:
                    # Safe to repeat: inference has no side effects. With several
                    # replicas the channel sends the retry to one that is up.
                    attempt += 1
                    metrics.TRITON_RETRIES.inc()
                    log.warning(
                        "triton unavailable; retrying",
                        extra={"rpc": getattr(method, "__name__", ""), "attempt": attempt},
                    )
                    await asyncio.sleep(0.2 * 2 ** (attempt - 1))
                    continue
                error = triton_error(exc)
                metrics.TRITON_ERRORS.labels(error.code).inc()
                raise error from None


def triton_error(exc: InferenceServerException) -> ApiError:
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if "UNAVAILABLE" in status:
        return ApiError(
            "triton_unavailable",
            "the model server is unavailable; retry shortly",
            {"Retry-After": RETRY_AFTER_S},
        )
    if "DEADLINE_EXCEEDED" in status:
        return ApiError("triton_timeout", "the model server did not answer in time")
    if "NOT_FOUND" in status or "not ready" in message or "unknown model" in message:
        return ApiError(
            "model_unavailable", f"model not ready: {message}", {"Retry-After": RETRY_AFTER_S}
        )
    return ApiError("triton_error", f"the model server failed: {message}")
