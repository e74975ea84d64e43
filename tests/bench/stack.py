"""The real processes a measurement needs: a local Triton and a gateway, on free ports.

Used by `make bench` and `make loadtest`; both stop what they start, even on Ctrl-C.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model_repository.local_triton import LocalTriton, TritonSettings
from tests.processes import free_port, gateway_process


@contextlib.contextmanager
def local_triton(profile: str, work_dir: Path, config_name: str = "cpu") -> Iterator[LocalTriton]:
    settings = TritonSettings(
        profile=profile,
        config_name=config_name,  # cpu, or cpu_int8 (export/quantize.py)
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        # Our own backend folder: other Tritons on the machine may be assembling theirs.
        work_dir=work_dir / f"triton-{profile}",
    )
    with LocalTriton(settings) as server:
        yield server


@dataclass(frozen=True)
class Gateway:
    url: str
    pid: int
    log: Path


@contextlib.contextmanager
def gateway(triton_url: str, work_dir: Path, **settings: object) -> Iterator[Gateway]:
    """`python -m gateway` as a process, configured by GATEWAY_* variables, once ready."""
    # An access line per request would cost the clients.
    settings = {"log_level": "warning"} | settings
    with gateway_process(triton_url, work_dir, ready="/readyz", **settings) as run:
        yield Gateway(run.url, run.pid, run.log)
