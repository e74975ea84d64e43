"""Small helpers to call the real Triton over gRPC (tritonclient.grpc.aio)."""

import asyncio

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from gateway.server.model_server import parameters as config_parameters


async def _request(
    client: InferenceServerClient, model: str, faces: np.ndarray, outputs: list[str] | None
) -> dict[str, np.ndarray]:
    tensor = InferInput("FACES", list(faces.shape), "UINT8")
    tensor.set_data_from_numpy(faces)
    requested = [InferRequestedOutput(name) for name in outputs] if outputs else None
    result = await client.infer(model, [tensor], outputs=requested, client_timeout=300)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


async def _infer(
    url: str, model: str, batches: list[np.ndarray], outputs: list[str] | None
) -> list[dict[str, np.ndarray]]:
    """All batches at once, as concurrent requests on one channel."""
    client = InferenceServerClient(url)
    try:
        return await asyncio.gather(*(_request(client, model, b, outputs) for b in batches))
    finally:
        await client.close()


def infer(
    url: str, model: str, faces: np.ndarray, outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    return asyncio.run(_infer(url, model, [faces], outputs))[0]


def infer_many(url: str, model: str, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return asyncio.run(_infer(url, model, batches, None))


async def _config(url: str, model: str) -> dict:
    client = InferenceServerClient(url)
    try:
        return (await client.get_model_config(model, as_json=True))["config"]
    finally:
        await client.close()


def model_config(url: str, model: str) -> dict:
    return asyncio.run(_config(url, model))


def parameters(url: str, model: str) -> dict[str, str]:
    return config_parameters(model_config(url, model))
