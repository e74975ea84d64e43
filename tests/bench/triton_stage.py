"""Stage 2: each model and the ensemble through the real Triton, over gRPC.

Every (model, batch, concurrency) sends the same crops; `concurrency` clients (threads,
one gRPC client each) share the list of batches, so the total work is the same and
only how it arrives changes.
"""

import math
import threading

import numpy as np
from tritonclient.grpc import InferenceServerClient, InferInput

from tests.bench.config import BenchConfig
from tests.bench.measure import batches, latency_summary, median, run_concurrently

ENSEMBLE = "deepfake_ensemble"
TIMEOUT_S = 600.0


class Clients:
    """One synchronous gRPC client per thread (the channel is not shared across threads)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.local()
        self.all: list[InferenceServerClient] = []

    def get(self) -> InferenceServerClient:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = InferenceServerClient(self.url)
            self.all.append(client)
        return client

    def infer(self, model: str, faces: np.ndarray) -> None:
        tensor = InferInput("FACES", list(faces.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(faces))
        # No outputs named: every output comes back, as a client of the ensemble wants them.
        self.get().infer(model, [tensor], client_timeout=TIMEOUT_S)

    def close(self) -> None:
        for client in self.all:
            client.close()


def measure(
    clients: Clients, model: str, crops: np.ndarray, batch: int, concurrency: int, repeats: int
) -> dict:
    parts = batches(crops, batch)
    # Every client needs a request in flight, or "4 clients" would measure 3 (24 faces in 8s):
    # the crops go round again until there are at least as many requests as clients.
    parts = parts * math.ceil(concurrency / len(parts))
    faces = sum(len(p) for p in parts)
    walls, latencies = [], []
    for _ in range(repeats):
        run = run_concurrently([lambda p=p: clients.infer(model, p) for p in parts], concurrency)
        walls.append(run.wall_s)
        latencies += run.latencies_s
    return {
        "faces": faces,
        "requests": len(parts),
        "faces_per_s": faces / median(walls),
        **latency_summary(latencies),
    }


def run_triton(config: BenchConfig, url: str, crops: np.ndarray, models: list[str]) -> dict:
    """{model: {"b<batch>_c<concurrency>": figures}}"""
    clients = Clients(url)
    result: dict = {}
    try:
        for model in models:
            clients.infer(model, crops[: max(config.batches)])  # warm-up
            result[model] = {}
            for b in config.batches:
                for c in config.concurrency:
                    figures = measure(clients, model, crops, b, c, config.repeats)
                    result[model][f"b{b}_c{c}"] = figures
                    print(
                        f"  triton {model} b{b} c{c}: {figures['faces_per_s']:.2f} faces/s, "
                        f"p50 {figures['p50_ms']:.0f} ms",
                        flush=True,
                    )
    finally:
        clients.close()
    return result
