"""Run the real Triton Inference Server locally, from the nvidia-pytriton wheel.

    python -m model_repository.local_triton --profile full

The wheel ships tritonserver (2.51, as the NGC 24.10 image) with the python
backend but neither the ONNX Runtime nor the OpenVINO backend, so this assembles a
backend directory in which `onnxruntime/model.py` and `openvino/model.py` are the
project's Python-based ones, and serves the same repository the NGC image does with
the CPU profiles (`--model-config-name=cpu`, or `cpu_fast`). Under `cpu_fast` it first
writes each member's configs/cpu_fast.pbtxt for the CPU it runs on (bf16 only where BF16
units exist, int8 where VNNI does: export/runtimes.py, model_repository/cpu_features.py).

The server runs from its own environment (`.venv-triton`: the wheel, ONNX
Runtime, OpenVINO, numpy < 2 for the python backend stub), apart from the gateway's,
which needs numpy 2; this launcher itself needs only the standard library (cpu_fast's
choice reads the graphs' checks with the export code, imported when it is made).
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from model_repository.backends.accelerators import CACHE_ROOT_ENV

REPOSITORY = Path(__file__).resolve().parent
WORK_DIR = REPOSITORY.parent / ".build" / "triton"
# The backends the wheel lacks, as Python-based ones (model_repository/backends/<name>/).
PYTHON_BASED = ("onnxruntime", "openvino")
# Linked beside each model.py: the batching they share, the providers a config asks for.
SHARED_BACKEND_CODE = (
    REPOSITORY / "backends" / "joined.py",
    REPOSITORY / "backends" / "accelerators.py",
)
PYTHON_ENV = Path(os.environ.get("TRITON_PYTHON_ENV", REPOSITORY.parent / ".venv-triton"))


@dataclass
class TritonSettings:
    profile: str = "full"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    config_name: str = "cpu"
    repository: Path = REPOSITORY
    work_dir: Path = WORK_DIR
    python_env: Path = PYTHON_ENV
    # The CPU flags cpu_fast chooses for; None: this CPU's (cpu_features.cpu_flags, which
    # TRITON_CPU_FLAGS overrides).
    cpu_flags: frozenset[str] | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def site_packages(python_env: Path) -> Path:
    found = sorted(python_env.glob("lib/python3.*/site-packages/pytriton"))
    if not found:
        raise RuntimeError(f"nvidia-pytriton is not installed in {python_env} (make setup)")
    return found[-1].parent


def wheel_dir(python_env: Path) -> Path:
    return site_packages(python_env) / "pytriton" / "tritonserver"


def prepare_backends(work_dir: Path, python_env: Path) -> Path:
    """<work_dir>/backends with the wheel's python backend, the stub for the
    environment's Python, and the project's Python-based backends, each a model.py
    with joined.py beside it (linked, so edits take effect)."""
    wheel = wheel_dir(python_env)
    backends = work_dir / "backends"
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    version = site_packages(python_env).parent.name.removeprefix("python")
    files = [item for item in (wheel / "backends" / "python").iterdir() if item.is_file()]
    for item in [*files, wheel / "python_backend_stubs" / version / "triton_python_backend_stub"]:
        _copy_if_changed(item, python / item.name)
    for name in PYTHON_BASED:
        folder = backends / name
        folder.mkdir(exist_ok=True)
        for source in (REPOSITORY / "backends" / name / "model.py", *SHARED_BACKEND_CODE):
            link = folder / source.name
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    return backends


def _copy_if_changed(source: Path, target: Path) -> None:
    # Another local Triton may be running the stub: rewriting an executing
    # binary fails (ETXTBSY), and an unchanged copy needs no rewrite.
    same = target.exists() and (
        (target.stat().st_size, target.stat().st_mtime)
        == (source.stat().st_size, source.stat().st_mtime)
    )
    if not same:
        shutil.copy2(source, target)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def command(settings: TritonSettings, backends: Path) -> list[str]:
    repo = settings.repository
    return [
        str(wheel_dir(settings.python_env) / "bin" / "tritonserver"),
        f"--model-repository={repo / 'members'}",
        f"--model-repository={repo / settings.profile}",
        # Loading the ensemble loads exactly its members: a lite server never
        # loads (or needs exported) Xception and B7.
        "--model-control-mode=explicit",
        "--load-model=deepfake_ensemble",
        f"--model-config-name={settings.config_name}",
        f"--backend-directory={backends}",
        "--strict-readiness=true",
        # The CPU configs' rate_limiter: a member holds one `cpu` unit per thread, and
        # there are as many units as cores, so members share the cores, never thrash them.
        "--rate-limit=execution_count",
        f"--rate-limit-resource=cpu:{usable_cores()}",
        "--exit-on-error=true",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        # Batches of 380px faces are megabytes: grow the stub's shared memory
        # in large steps rather than 1 MB at a time.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]


def environment(python_env: Path) -> dict[str, str]:
    """The stub runs the backend with the first `python` on PATH: the server
    environment's."""
    env = dict(os.environ)
    libs = site_packages(python_env) / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join([str(python_env / "bin"), env.get("PATH", "")])
    env.pop("VIRTUAL_ENV", None)
    return env


class LocalTriton:
    """A tritonserver child process; a context manager that waits for readiness."""

    def __init__(self, settings: TritonSettings, log_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path or settings.work_dir / f"triton-{settings.grpc_port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        # {member: (precision, why)} chosen at start under cpu_fast; {} under cpu (all fp32).
        self.precisions: dict[str, tuple[str, str]] = {}

    def command(self, backends: Path) -> list[str]:
        """The command line (a test runs a Deployment's arguments through the same start)."""
        return command(self.settings, backends)

    def choose_precisions(self) -> None:
        """Under cpu_fast, each member's configs/cpu_fast.pbtxt for this CPU, before Triton
        reads them (the choice is the CPU's that serves, never the one export ran on)."""
        from export import runtimes

        if self.settings.config_name == runtimes.CONFIG_NAME:
            repo, flags = self.settings.repository, self.settings.cpu_flags
            self.precisions = runtimes.write_fast_configs(repo, flags)

    def start(self) -> None:
        self.choose_precisions()
        backends = prepare_backends(self.settings.work_dir, self.settings.python_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # A GPU config's TensorRT engines: under the work dir, not config.pbtxt's
            # /trt-cache (the Kubernetes volume), keyed by weights all the same.
            cache = {CACHE_ROOT_ENV: str(self.settings.work_dir / "trt-cache")}
            self.process = subprocess.Popen(
                self.command(backends),
                env=environment(self.settings.python_env) | cache,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 300.0) -> None:
        url = f"{self.settings.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited ({self.process.returncode}); "
                    f"last log lines:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Its session's leftovers (backend stubs of a killed server): the group is Triton's
        # own (start_new_session), so nothing else is in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "LocalTriton":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_repository.local_triton")
    defaults = TritonSettings()
    parser.add_argument(
        "--profile", choices=["full", "lite"], default=os.environ.get("PROFILE", defaults.profile)
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--http-port", type=int, default=defaults.http_port)
    parser.add_argument("--grpc-port", type=int, default=defaults.grpc_port)
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    parser.add_argument("--model-config-name", dest="config_name", default=defaults.config_name)
    args = parser.parse_args(argv)
    settings = TritonSettings(**vars(args))
    server = LocalTriton(settings)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with server:
        for member, (_, why) in server.precisions.items():
            print(f"  {member}: {why}", flush=True)  # cpu_fast: each member's precision, why
        print(
            f"Triton ({settings.profile} profile) ready — gRPC {settings.grpc_url}, "
            f"HTTP {settings.http_url}, metrics http://{settings.host}:"
            f"{settings.metrics_port}/metrics; log {server.log_path}. Ctrl-C stops it.",
            flush=True,
        )
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    code = server.process.returncode if server.process else 1
    return 0 if stop else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
