"""Resident memory of the gateway and Triton over a run, sampled in a background thread.

A process's RSS includes its children: Triton's python backend runs each model in a
`triton_python_backend_stub` child, where the ONNX Runtime sessions (most of the memory)
live.
"""

import contextlib
import threading
import time

import psutil

INTERVAL_S = 0.5


def rss_mb(process: psutil.Process) -> float:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a stub may exit between the calls
            total += p.memory_info().rss
    return total / 2**20


def pid_listening_on(port: int) -> int | None:
    """The process listening on a loopback TCP port (a running gateway or Triton)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


class MemorySampler:
    """{name: pid} → samples [{"t": s, name: MB, ...}] every INTERVAL_S while running."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self) -> None:
        while not self.stop.is_set():
            sample = {"t": round(self.elapsed(), 2)}
            for name, process in self.processes.items():
                try:
                    sample[name] = round(rss_mb(process), 1)
                except psutil.NoSuchProcess:
                    sample[name] = 0.0
            self.samples.append(sample)
            self.stop.wait(INTERVAL_S)

    def peak_mb(self, since_s: float = 0.0) -> dict[str, float]:
        window = [s for s in self.samples if s["t"] >= since_s]
        return {n: max((s.get(n, 0.0) for s in window), default=0.0) for n in self.processes}

    def __enter__(self) -> "MemorySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
