"""Timing helpers shared by the stages: run jobs on N concurrent workers, summarise."""

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    wall_s: float
    latencies_s: list[float]
    results: list


def run_concurrently(jobs: Sequence[Callable[[], T]], concurrency: int) -> Run:
    """All jobs on `concurrency` workers, in order, as clients would send them; each job's
    latency is its own, the wall time is the whole batch of jobs."""

    def timed(job: Callable[[], T]) -> tuple[float, T]:
        start = time.perf_counter()
        result = job()
        return time.perf_counter() - start, result

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = list(pool.map(timed, jobs))
    return Run(time.perf_counter() - start, [d[0] for d in done], [d[1] for d in done])


def batches(crops: np.ndarray, size: int) -> list[np.ndarray]:
    return [crops[i : i + size] for i in range(0, len(crops), size)]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies_s, 95) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies_s) * 1000, 1) if latencies_s else 0.0,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
