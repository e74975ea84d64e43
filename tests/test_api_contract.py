"""The API against its own OpenAPI document, by Schemathesis (a tool nobody here wrote), run
as a new user would (`st run URL/openapi.json`) over every route: no 5xx, statuses, headers
(Allow on 405s), content types and bodies as documented, links followed statefully (a job
submitted, then read, cancelled, deleted: a deleted job still readable fails
`use_after_free`).

The gateway runs in this process (uvicorn in a thread: real HTTP) over the fake model server
(tests/fake_triton.py). The few checks turned off, each with its reason, are in
tests/schemathesis.toml.
"""

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.server.app import create_app
from gateway.server.jobs.engine import Jobs
from gateway.server.routers import jobs as jobs_api
from tests.conftest import gateway_settings
from tests.egress_support import StubDns
from tests.fake_triton import fake_triton
from tests.stack import free_port

SEED = 14  # reproducible: a failure here fails again the same way
CONFIG = Path(__file__).with_name("schemathesis.toml")


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[str]:
    """The gateway's URL: uvicorn serving create_app in a thread of this process. The URLs
    Schemathesis writes (media, streams, callbacks) resolve through a stub DNS server that
    knows no name: no query leaves the machine."""
    with fake_triton("lite") as triton, StubDns({}).serving() as dns:
        settings = gateway_settings(
            triton.url, tmp, chromium=str(tmp / "no-chromium"), egress_dns_server=dns.server
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, name="contract-gateway")
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("contract")) as url:
        yield url


def schemathesis(url: str, cwd: Path) -> subprocess.CompletedProcess:
    """`st run` against `url` (in `cwd`: Schemathesis keeps a cache, .schemathesis/, there)."""
    st = Path(sys.executable).parent / "st"
    command = [
        str(st),
        f"--config-file={CONFIG}",
        "run",
        f"{url}/openapi.json",
        # Seeded, not --generation-deterministic: that mode always takes an operation's first
        # request body by name, the JSON of media URLs (which no stub name resolves), so no
        # job was ever submitted with a multipart body and the stateful phase never deleted
        # one.
        f"--seed={SEED}",
        "--request-timeout=60",
        "--warnings=off",
        f"--report-dir={cwd}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)


# A whole Schemathesis run (about 15 s on 2 cores): `make test`, keeping the fast tier near
# a minute.
@pytest.mark.stack
def test_the_api_does_what_its_openapi_document_says(served: str, tmp_path: Path) -> None:
    result = schemathesis(served, tmp_path)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    document = httpx.get(f"{served}/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in summary  # every documented operation was tried
    assert "✅ Stateful" in summary  # jobs followed through their links, and nothing failed


# A check of the check (a whole run against a broken gateway, ~10 s): `make test` only.
@pytest.mark.stack
def test_a_deleted_job_still_readable_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run above catches a DELETE that leaves the job readable (what DELETE did when it
    only cancelled): the same run against such a gateway fails, on that alone."""

    def cancel_only(jobs: Jobs, job_id: str) -> None:
        jobs.cancel(job_id)

    monkeypatch.setattr(jobs_api, "remove", cancel_only)
    with serving(tmp_path / "gateway") as url:
        result = schemathesis(url, tmp_path)
    summary = result.stdout[-6000:]
    assert result.returncode != 0, summary
    failures = [line.strip() for line in summary.splitlines() if "❌ ST" in line]
    assert failures == ["❌ ST301 Deleted resource still available: 1"], summary  # that alone
