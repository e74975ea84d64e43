"""preprocess/egress.py in process: URLs read strictly before parsing, names resolved once
(a stub DNS server on loopback), the connection pinned to the checked address, redirects
checked here, RTSP redirects refused. "Public" addresses are answers only: every
connection goes to 127.0.0.2 (an allowed test network) or must not happen at all."""

import contextlib
import http.server
from collections.abc import Iterator

import httpx
import pytest

from preprocess.egress import (
    BadUrl,
    EgressPolicy,
    RtspRedirect,
    RtspReplies,
    Unreachable,
    UrlRefused,
    is_public,
    networks,
)
from tests.egress_support import Listener, StubDns
from tests.stack import serve_http

TEST_NET = networks(["127.0.0.2/32"])  # the only loopback address the policy may reach
STREAMS = frozenset({"http", "https", "rtsp", "rtmp"})


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://127.0.0.1:18554\x00@93.184.216.34/x",  # issue 24, finding 1
        "http://93.184.216.34\x00/x",  # finding 9
        "http://93.184.216.34/x\r\nHost: evil",
        "http://93.184.216.34/a b",
        "http://93.184.216.34\t/x",
        "http://user:pw@93.184.216.34/x",
        "http://127.0.0.1:80@93.184.216.34/",
        "http://93.184.216.34\\@127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://93.184.216.34%00/",
        "http://exämple.com/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",
        "http://[::1%25lo]/",
        "http://[::1/",
        "http://host:99999/",
        "http://host:8o/",
        "http:/host/x",
        "http://",
        "http://-bad-.example/",
    ],
)
def test_ambiguous_urls_are_refused_before_parsing(url: str) -> None:
    with pytest.raises(BadUrl):
        EgressPolicy(STREAMS).check(url)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "concat:a|b", "gopher://x/", "/tmp/x", "ftp://example.com/"]
)
def test_schemes_are_allow_listed(url: str) -> None:
    with pytest.raises(UrlRefused, match="scheme"):
        EgressPolicy(STREAMS).check(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "rtsp://10.0.0.8/s", "http://[::1]:8080/", "http://169.254.169.254/",
     "http://[::ffff:127.0.0.1]/", "http://localhost:8000/", "http://cam.localhost/"],
)  # fmt: skip
def test_literal_private_addresses_and_localhost_are_refused_without_resolving(url: str) -> None:
    with pytest.raises(UrlRefused):
        EgressPolicy(STREAMS, dns_server="127.0.0.1:9").check(url)  # no DNS query made
    EgressPolicy(STREAMS, allowed_networks=networks([], everything=True)).check(url)


def test_a_canonical_url_is_what_is_checked_and_used() -> None:
    url = EgressPolicy(STREAMS).check("HTTP://Cam.Example.COM.:8080/a/b?x=1#frag")
    assert (url.scheme, url.host, url.port, url.path) == (
        "http",
        "cam.example.com",
        8080,
        "/a/b?x=1",
    )
    assert url.url == "http://cam.example.com:8080/a/b?x=1"
    six = EgressPolicy(STREAMS).check("rtsp://[2606:2800:220:1::1]/s")
    assert (six.host, six.port, six.authority, six.literal) == (
        "2606:2800:220:1::1",
        554,
        "[2606:2800:220:1::1]",
        True,
    )


@pytest.mark.parametrize(
    "address",
    [
        *("127.0.0.1", "10.0.0.8", "192.168.1.1", "172.16.0.1", "169.254.169.254"),
        *("100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"),
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)
    assert not EgressPolicy().allowed(address)
    assert EgressPolicy(allowed_networks=networks([], everything=True)).allowed(address)
    assert is_public("93.184.216.34") and is_public("2606:2800:220:1::1")


def test_every_resolved_address_must_be_allowed() -> None:
    """A name answering a public and a private address is refused, with the one generic
    message (the cause is for the log); a name that does not resolve reads the same."""
    with StubDns({"mixed.test": ["93.184.216.34", "10.1.1.1"]}).serving() as dns:
        policy = EgressPolicy(STREAMS, dns_server=dns.server)
        policy.resolve("http://mixed.test/a")  # the first answer: public
        with pytest.raises(Unreachable) as refused:
            policy.resolve("http://mixed.test/a")  # the next: private
        with pytest.raises(Unreachable) as unknown:
            policy.resolve("http://nowhere.test/a")
    assert refused.value.message == unknown.value.message
    assert "10.1.1.1" in refused.value.cause and "10.1.1.1" not in refused.value.message


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers with the Host header it got; /hop redirects to `redirect_to`."""

    redirect_to = ""

    def do_GET(self) -> None:
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        body = f"{self.headers['Host']} {self.server.server_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo(host: str, port: int = 0) -> Iterator[int]:
    with serve_http(Echo, host, port) as bound:
        yield bound


def test_the_connection_goes_to_the_checked_address_not_a_second_answer() -> None:
    """Rebinding: the name answers 127.0.0.2 (allowed) first and 127.0.0.1 next. It is
    resolved once, and the request goes to 127.0.0.2 with the name as Host; the listener
    on 127.0.0.1 (same port) hears nothing."""
    with (
        echo("127.0.0.2") as port,
        Listener("127.0.0.1", port).serving() as loopback,
        StubDns({"public.test": ["127.0.0.2", "127.0.0.1"]}).serving() as dns,
    ):
        policy = EgressPolicy(STREAMS, allowed_networks=TEST_NET, dns_server=dns.server)
        target = policy.resolve(f"http://public.test:{port}/x")
        assert target.address == "127.0.0.2"
        with policy.client() as client:
            _, response = policy.get(client, target)
            assert response.read() == f"public.test:{port} 127.0.0.2".encode()
            response.close()
        with pytest.raises(Unreachable):  # the next answer is refused, never used
            policy.resolve(f"http://public.test:{port}/x")
    assert loopback.received == []


def test_redirects_are_checked_here_hop_by_hop() -> None:
    with echo("127.0.0.2") as port, Listener("127.0.0.1").serving() as loopback:
        policy = EgressPolicy(STREAMS, allowed_networks=TEST_NET)
        with policy.client() as client:
            Echo.redirect_to = f"http://127.0.0.2:{port}/ok"
            _, ok = policy.get(client, policy.resolve(f"http://127.0.0.2:{port}/hop"))
            assert ok.read().endswith(b"127.0.0.2")
            ok.close()
            for refused in (f"http://127.0.0.1:{loopback.port}/x", "file:///etc/passwd",
                            f"http://localhost:{loopback.port}/", "http://a\\@b/"):  # fmt: skip
                Echo.redirect_to = refused
                with pytest.raises(Unreachable):
                    policy.get(client, policy.resolve(f"http://127.0.0.2:{port}/hop"))
    assert loopback.received == []


def test_an_invalid_url_never_reaches_httpx() -> None:
    """Finding 9's shape: what httpx would raise InvalidURL for is a BadUrl first."""
    with pytest.raises(BadUrl):
        EgressPolicy().resolve("http://93.184.216.34\x00/x")
    with pytest.raises(httpx.InvalidURL):  # why it must be caught before
        httpx.Request("GET", "http://93.184.216.34\x00/x")


def test_rtsp_replies_pass_and_redirects_do_not() -> None:
    replies = RtspReplies()
    ok = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 4\r\n\r\nabcd"
    frame = b"$\x00\x00\x05hello"
    # split anywhere: only complete units come out
    assert replies.feed(ok[:10]) == b""
    assert replies.feed(ok[10:] + frame[:3]) == ok
    assert replies.feed(frame[3:]) == frame
    with pytest.raises(RtspRedirect):
        RtspReplies().feed(b"RTSP/1.0 302 Moved\r\nCSeq: 2\r\nLocation: rtsp://10.0.0.1/\r\n\r\n")
    with pytest.raises(RtspRedirect):
        RtspReplies().feed(frame + b"REDIRECT rtsp://x/ RTSP/1.0\r\nCSeq: 3\r\n\r\n")
    with pytest.raises(RtspRedirect):
        RtspReplies().feed(b"x" * (RtspReplies.MAX_HEAD + 1))
