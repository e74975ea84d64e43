"""Webhooks through preprocess/egress.py, against the real gateway process (issue 24,
finding 3): the callback host resolved once per delivery and the POST sent to that checked
address, no redirect followed, one answer for a refused or unknown host.

The gateway may reach 127.0.0.2 only (GATEWAY_EGRESS_ALLOW_NETWORKS) and resolves names
with a stub DNS server; whatever listens on 127.0.0.1 must hear nothing."""

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from gateway.server.jobs.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from model_repository.local_triton import TritonSettings
from tests.conftest import Gateway, free_port, start_gateway
from tests.egress_support import Listener, StubDns
from tests.jobs_support import IMAGES, SECRET, submit
from tests.stack import serve_http

ALLOWED = "127.0.0.2"


@dataclass
class Hook:
    """A webhook receiver on 127.0.0.2 answering `status` (and `location`, for a 3xx)."""

    port: int
    status: int = 200
    location: str = ""
    deliveries: list[dict] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def serving(self) -> Iterator["Hook"]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify(
                    SECRET,
                    self.headers[TIMESTAMP_HEADER],
                    body,
                    self.headers[SIGNATURE_HEADER],
                    300,
                )
                hook.deliveries.append(
                    {"valid": valid, "host": self.headers["Host"], "body": json.loads(body)}
                )
                self.send_response(hook.status)
                if hook.location:
                    self.send_header("Location", hook.location)
                self.end_headers()
                hook.received.set()

            def log_message(self, *args: object) -> None:
                return None

        with serve_http(Handler, ALLOWED, self.port):
            yield self


@pytest.fixture(scope="module")
def dns() -> Iterator[StubDns]:
    with StubDns({}).serving() as stub:
        yield stub


@pytest.fixture(scope="module")
def gateway(lite_triton: TritonSettings, tmp_path_factory, dns: StubDns) -> Iterator[Gateway]:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path_factory.mktemp("webhook-egress"),
        jobs_webhook_secret=SECRET,
        jobs_webhook_retries=0,
        egress_allow_networks=f"{ALLOWED}/32",
        egress_dns_server=dns.server,
    ) as gw:
        yield gw


def one_image() -> list[tuple[str, bytes]]:
    return [(IMAGES[0].name, IMAGES[0].read_bytes())]


def test_a_rebinding_callback_host_is_posted_to_the_checked_address(
    gateway: Gateway, dns: StubDns
) -> None:
    """Finding 3: the host answers 127.0.0.2 to the submit's check and to the delivery's
    one resolution, 127.0.0.1 to any later one. The old code resolved again to connect
    and posted to 127.0.0.1; now the POST goes to 127.0.0.2, the listener on 127.0.0.1
    (same port) hears nothing."""
    port = free_port()
    dns.answers["hook.test"] = [ALLOWED, ALLOWED, "127.0.0.1"]
    with Hook(port).serving() as hook, Listener("127.0.0.1", port).serving() as inside:
        answer = submit(gateway.url, one_image(), callback_url=f"http://hook.test:{port}/h")
        assert answer.status_code == 202, answer.text
        assert hook.received.wait(120), "no webhook delivered"
    assert hook.deliveries[0]["valid"] and hook.deliveries[0]["host"] == f"hook.test:{port}"
    assert dns.queries.count("hook.test") == 2  # the submit's check, the delivery's
    assert inside.received == []


def test_a_callback_redirect_is_not_followed(gateway: Gateway) -> None:
    port = free_port()
    with Listener("127.0.0.1").serving() as inside:
        location = f"http://127.0.0.1:{inside.port}/h"
        with Hook(port, status=307, location=location).serving() as hook:
            answer = submit(gateway.url, one_image(), callback_url=f"http://{ALLOWED}:{port}/h")
            assert answer.status_code == 202, answer.text
            assert hook.received.wait(120), "no webhook attempted"
            time.sleep(1)
    assert inside.received == []


@pytest.mark.parametrize(
    "callback_url",
    ["http://93.184.216.34\x00/h", "http://127.0.0.1:9\x00@93.184.216.34/h",
     "http://user@93.184.216.34/h", "http://127.0.0.1/h", "http://localhost/h"],
)  # fmt: skip
def test_bad_callback_urls_are_422_before_any_lookup(gateway: Gateway, callback_url: str) -> None:
    answer = submit(gateway.url, one_image(), callback_url=callback_url)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_callback_url"


def test_a_private_and_an_unknown_host_read_the_same(gateway: Gateway, dns: StubDns) -> None:
    dns.answers["inside.test"] = ["10.0.0.7"]
    private = submit(gateway.url, one_image(), callback_url="http://inside.test/h")
    unknown = submit(gateway.url, one_image(), callback_url="http://unknown.test/h")
    assert private.status_code == unknown.status_code == 422
    assert private.json() == unknown.json()
