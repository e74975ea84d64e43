"""preprocess.stream's URL policy, without a network: names resolved by a stand-in
resolver, so a public name that resolves to a private address is caught like a literal."""

import pytest

from preprocess.stream import BadStreamUrl, StreamPolicy, StreamRefused


def resolving_to(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    [
        *("127.0.0.1", "10.0.0.8", "192.168.1.1", "172.16.0.1", "169.254.169.254"),
        *("100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"),
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(StreamRefused, match="loopback, private or reserved"):
        StreamPolicy().check("rtsp://camera.example.com/s", resolving_to(address))
    StreamPolicy(allow_private=True).check("rtsp://camera.example.com/s", resolving_to(address))


def test_every_resolved_address_must_be_public() -> None:
    with pytest.raises(StreamRefused):
        StreamPolicy().check("https://cdn.example.com/a.m3u8", resolving_to("8.8.8.8", "10.1.1.1"))
    StreamPolicy().check("https://cdn.example.com/a.m3u8", resolving_to("8.8.8.8", "2001:4860::1"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "concat:a|b", "gopher://x/", "/tmp/x"]
)
def test_schemes_are_allow_listed(url: str) -> None:
    with pytest.raises(StreamRefused, match="scheme"):
        StreamPolicy().check(url, resolving_to("8.8.8.8"))


def test_hosts_are_allow_listed() -> None:
    policy = StreamPolicy(hosts=frozenset({"cams.example.com"}))
    policy.check("rtmp://CAMS.example.com/live/s", resolving_to("8.8.8.8"))
    with pytest.raises(StreamRefused, match="not in the allowed hosts"):
        policy.check("rtmp://other.example.com/live/s", resolving_to("8.8.8.8"))


@pytest.mark.parametrize("url", ["rtsp://", "http://host:notaport/x", "https:///path"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises(BadStreamUrl):
        StreamPolicy().check(url, resolving_to("8.8.8.8"))
