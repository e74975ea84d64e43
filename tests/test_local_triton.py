"""The local Triton launcher: the lite profile, and failures it must report."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.repository import profile_members
from gateway.server.model_server import parse_vote_groups, parse_vote_weights
from gateway.server.verdict import aggregate
from model_repository.local_triton import LocalTriton
from preprocess.tensors import member_output
from tests.conftest import ROOT, free_port, local_triton, resized
from tests.stack import on_free_ports
from tests.triton_client import infer, model_config

# The full tier only (make test): tritonserver processes.
pytestmark = pytest.mark.stack


def test_lite_profile_serves_only_the_mesonets(
    exported: Path, tmp_path: Path, face_crops: list
) -> None:
    """The MesoNets (the Deepfakes and the Face2Face pairs), never Xception or B7."""
    lite = profile_members(exported, "lite")
    assert set(lite) == {"meso4", "mesoinception4", "meso4_f2f", "mesoinception4_f2f"}
    with local_triton("lite", tmp_path) as server:
        url = server.settings.grpc_url
        config = model_config(url, "deepfake_ensemble")
        steps = [s["model_name"] for s in config["ensemble_scheduling"]["step"]]
        assert steps == [*lite, "deepfake_vote"]
        faces = resized(face_crops[:3], 380)
        result = infer(url, "deepfake_ensemble", faces)
        assert sorted(result) == sorted(["P_FAKE", *(member_output(m) for m in lite)])
        vote = {
            k: v["string_value"]
            for k, v in model_config(url, "deepfake_vote")["parameters"].items()
        }
        groups = parse_vote_groups(vote["vote_groups"])
        scores = {m: result[member_output(m)] for m in lite}
        expected = aggregate.vote(scores, parse_vote_weights(vote["vote_weights"]), groups)
        np.testing.assert_allclose(result["P_FAKE"], expected, atol=1e-6)
        with pytest.raises(Exception, match=r"(?i)xception.*(not|unavailable)|unknown model"):
            infer(url, "xception", faces)


def test_a_broken_repository_is_reported_with_the_servers_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for folder in ("members", "full"):
        (repo / folder).mkdir(parents=True)
    settings = on_free_ports(
        repository=repo,
        work_dir=tmp_path / "work",
    )
    with pytest.raises(RuntimeError, match="deepfake_ensemble"), LocalTriton(settings):
        pass


def test_the_command_line_says_where_it_listens_and_stops_on_ctrl_c(exported: Path) -> None:
    """`make triton` as a user runs it: ready line with the ports, Ctrl-C (SIGINT)
    stops tritonserver too."""
    grpc_port = free_port()
    args = [
        "--profile",
        "lite",
        "--http-port",
        str(free_port()),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(free_port()),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "model_repository.local_triton", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"gRPC 127.0.0.1:{grpc_port}" in line and "ready" in line, line
        assert infer(f"127.0.0.1:{grpc_port}", "meso4", np.zeros((1, 256, 256, 3), np.uint8))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=2).close()
