"""`make run`: the local Triton, then the gateway over it; Ctrl-C stops both, and so do
SIGTERM (a supervisor, `kill`) and SIGHUP (a closed terminal).

python -m gateway.programs.local --profile full --port 8080
"""

import argparse
import contextlib
import signal
from pathlib import Path
from types import FrameType

import uvicorn

from gateway.server import Settings, check_access, configure_logging, create_app
from model_repository.local_triton import REPOSITORY, LocalTriton, TritonSettings

# Triton runs in its own session (LocalTriton), out of reach of the terminal's signals:
# only this process can stop it, by leaving the `with LocalTriton` block.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP as Ctrl-C: KeyboardInterrupt unwinds the `with` block, which stops
    Triton and its backend stubs. Their default action would end this process at once and
    leave Triton holding its ports. (uvicorn handles SIGTERM itself while serving, then
    raises it again once it has stopped: it lands here.)"""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.programs.local")
    parser.add_argument("--profile", choices=["full", "lite"], default="full")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--triton-host", default="127.0.0.1")
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument(
        "--triton-repository",
        type=Path,
        default=REPOSITORY,
        help="the exported model repository (default: this checkout's model_repository/)",
    )
    parser.add_argument(
        "--triton-config",
        default="cpu",
        help="cpu (fp32 on every CPU), or cpu_fast (each member's precision chosen for this "
        "CPU's units at start: model_repository/cpu_fast.toml)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    for stop in STOP_SIGNALS:
        signal.signal(stop, stop_as_ctrl_c)
    # A signal while Triton starts (uvicorn.run catches its own): LocalTriton stopped it.
    with contextlib.suppress(KeyboardInterrupt):
        run(parse_args(argv))


def run(args: argparse.Namespace) -> None:
    triton = TritonSettings(
        profile=args.profile,
        host=args.triton_host,
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
        config_name=args.triton_config,
        repository=args.triton_repository,
    )
    # Command-line values win over GATEWAY_* variables; the rest come from them.
    settings = Settings(host=args.host, port=args.port, triton_url=triton.grpc_url)
    configure_logging(settings.log_level)  # the same JSON lines as `python -m gateway`
    check_access(settings)  # before Triton starts: --host 0.0.0.0 without keys stops here
    print(
        f"Starting Triton ({args.profile} profile, {args.triton_config} configs) on "
        f"{triton.grpc_url} …",
        flush=True,
    )
    with LocalTriton(triton) as server:
        for member, (_, why) in server.precisions.items():
            print(f"  {member}: {why}", flush=True)  # cpu_fast: each member's precision, why
        print(
            f"Triton ready (log {server.log_path}). Gateway on "
            f"http://{settings.host}:{settings.port}/ — Ctrl-C stops both.",
            flush=True,
        )
        uvicorn.run(create_app(settings), **settings.uvicorn_options())


if __name__ == "__main__":
    main()
