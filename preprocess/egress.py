"""Everything the service fetches from a URL it was given: media URLs (the gateway's
/api/detect and /api/jobs), stream URLs, webhooks.

A URL a client names makes the service connect somewhere, so each one goes through here:

1. Read, before any parsing, for what parsers disagree on: control characters, whitespace,
   non-ASCII, backslashes, credentials (`user@host`), percent-encoding in the host, IPv4
   in the short, octal or hex forms only some resolvers read. These are `BadUrl` (`bad_url`).
2. Parsed once; the scheme and host allow-lists applied; a literal address or a
   `localhost` name that may not be reached is `UrlRefused` (`url_refused`). Neither step
   touches the network, so their answers tell a client nothing it did not write itself.
3. The name resolved once (the system's resolver, or `dns_server`); every address must be
   public or in the operator's allowed networks. The connection then goes to that checked
   address (`Target.address`): the TLS name and the Host header stay the URL's, so DNS
   cannot answer one address to the check and another to the connection (rebinding).
4. Redirects are followed here only, each hop a new URL through 1-3.

Anything that fails from step 3 on is `Unreachable` (`stream_unreachable`) with one
message whatever the cause (a refused address, a name that does not resolve, a closed
port, not media, a redirect refused): the precise cause goes to the log only, so the
service is no scanner of the networks it can reach.

FFmpeg never resolves a name nor follows anything itself: HTTP(S) bytes (and every HLS
playlist and segment) are fetched here and handed to it as a file (`http_media`); RTSP
and RTMP go through a loopback `Relay` this module owns, which connects to the checked
address and refuses an RTSP redirect (FFmpeg's RTSP client follows 3xx replies on its own).

A URL's query is cut from every log line, this module's and httpx's (`without_queries`): a
presigned object-store URL's query is its signature.

With `proxy` set, HTTP(S) goes through that proxy, which resolves the names: its own
allow-list is then the guard, and only literal addresses are checked here.
"""

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import dns.exception
import dns.resolver
import httpx
import m3u8

from preprocess.media import MediaError

log = logging.getLogger(__name__)

MAX_URL = 2048
MAX_REDIRECTS = 5
MAX_PLAYLIST = 1 << 20  # bytes of one HLS playlist
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}
HLS_TYPES = ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl")
# What inet_aton reads as an IPv4 address besides the dotted quad: 127.1, 0x7f.1, 2130706433.
NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?")
LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
QUERY = re.compile(r"\?[^\s'\"]*")  # a URL's query, up to the end of the URL in a message
UNREACHABLE = "the source could not be reached, is not allowed, or is not media"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Pins = dict[str, str]  # host -> the checked address it resolved to, within one read
EVERYWHERE: tuple[Network, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


class BadUrl(MediaError):
    """Not a URL this service reads (syntax only: nothing resolved, nothing connected)."""

    code = "bad_url"


class UrlRefused(MediaError):
    """A scheme, host or literal address the operator's lists refuse (nothing resolved)."""

    code = "url_refused"


class Unreachable(MediaError):
    """Whatever went wrong once the network was involved: one message for the client,
    the cause in the log."""

    code = "stream_unreachable"

    def __init__(self, cause: str) -> None:
        super().__init__(UNREACHABLE)
        self.cause = cause
        log.warning("egress refused or failed: %s", without_queries(cause))


def without_queries(text: str) -> str:
    """`text` with each URL's query cut: a presigned URL's query is a credential (its
    signature), never written to a log."""
    return QUERY.sub("?…", text)


class QueriesCut(logging.Filter):
    """httpx logs every request's URL (INFO): its query is cut there too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = without_queries(record.getMessage()), None
        return True


logging.getLogger("httpx").addFilter(QueriesCut())


def is_public(address: str) -> bool:
    """A unicast address on the public internet (not loopback, private, link-local,
    shared, reserved or multicast; an IPv4-mapped IPv6 address as its IPv4 one)."""
    ip = unmapped(address)
    return ip.is_global and not ip.is_multicast


def unmapped(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def networks(cidrs: list[str] | tuple[str, ...], everything: bool = False) -> tuple[Network, ...]:
    """The allowed networks: `cidrs` (raises ValueError on a bad one), or every address."""
    if everything:
        return EVERYWHERE
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


# --- 1 and 2: the URL, read and parsed once ------------------------------------------------


@dataclass(frozen=True)
class Url:
    scheme: str  # lower case
    host: str  # lower case, no brackets, no trailing dot
    port: int  # the URL's, or the scheme's default
    authority: str  # host[:port] as the Host header carries it (brackets for IPv6)
    path: str  # path and query ("/" at least); no fragment
    literal: bool  # the host is an IP address

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_url(url: str, schemes: frozenset[str]) -> Url:
    """`url` read strictly; BadUrl or UrlRefused (scheme) before anything else happens."""
    if len(url) > MAX_URL:
        raise BadUrl(f"URLs are at most {MAX_URL} characters")
    if not url.isascii():
        raise BadUrl("URLs must be ASCII: percent-encode the path, punycode the host")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise BadUrl("the URL holds whitespace or a control character")
    if "\\" in url:
        raise BadUrl("the URL holds a backslash")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadUrl(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise UrlRefused(
            f"scheme {scheme or '(none)'!r} is not allowed; allowed: {sorted(schemes)}"
        )
    head, sep, rest = url.partition("://")
    if not sep or head.lower() != scheme:
        raise BadUrl("a URL is scheme://host[:port]/path")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise BadUrl("credentials in the URL (user@host) are not accepted")
    if "%" in authority:
        raise BadUrl("percent-encoding in the host is not accepted")
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]*)(?::([0-9]{1,5}))?", authority)
    if match is None:
        raise BadUrl(f"not a host[:port]: {authority!r}")
    raw_host, raw_port = match.group(1).lower(), match.group(2)
    host, literal = check_host(raw_host)
    port = int(raw_port) if raw_port else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise BadUrl(f"port {port} is out of range")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    bracketed = f"[{host}]" if ":" in host else host
    shown = f"{bracketed}:{raw_port}" if raw_port else bracketed
    return Url(scheme, host, port, shown, path, literal)


def check_host(raw: str) -> tuple[str, bool]:
    """(host, is an IP literal); BadUrl for what resolvers would read differently."""
    if not raw:
        raise BadUrl("the URL names no host")
    if raw.startswith("["):
        try:
            return str(ipaddress.IPv6Address(raw[1:-1])), True
        except ValueError:
            raise BadUrl(f"not an IPv6 address: {raw}") from None
    if NUMERIC_HOST.fullmatch(raw):
        try:
            return str(ipaddress.IPv4Address(raw)), True
        except ValueError:
            raise BadUrl(f"not a dotted-quad IPv4 address: {raw}") from None
    name = raw.removesuffix(".")
    if len(name) > 253 or not all(LABEL.fullmatch(label) for label in name.split(".")):
        raise BadUrl(f"not a host name: {raw}")
    return name, False


# --- 3: resolved once, every address checked -------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked URL and the checked address to connect to (None: through the proxy)."""

    url: Url
    address: str | None

    @property
    def sockaddr(self) -> tuple[str, int]:
        assert self.address is not None
        return self.address, self.url.port


def system_lookup(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class EgressPolicy:
    """Where the service may connect, and how it gets there."""

    schemes: frozenset[str] = frozenset({"http", "https"})
    hosts: frozenset[str] = frozenset()  # empty: any host (its addresses checked)
    allowed_networks: tuple[Network, ...] = ()  # reachable even if not public
    dns_server: str = ""  # "ip:port"; empty: the system's resolver
    proxy: str = ""  # http(s) proxy for HTTP(S); it resolves names
    timeout_s: float = 10.0  # connecting, and each read
    user_agent: str = "deepfake-gateway"
    ca_bundle: str = ""  # a PEM file of CAs trusted besides the default ones (TLS egress)

    def allowed(self, address: str) -> bool:
        ip = unmapped(address)
        return is_public(address) or any(ip in net for net in self.allowed_networks)

    def check(self, url: str) -> Url:
        """Steps 1-2: no network. BadUrl or UrlRefused."""
        parsed = parse_url(url, self.schemes)
        if self.hosts and parsed.host not in self.hosts:
            raise UrlRefused(f"host {parsed.host!r} is not in the allowed hosts")
        loopback = parsed.host == "localhost" or parsed.host.endswith(".localhost")
        if loopback and not self.allowed("127.0.0.1"):  # RFC 6761: always loopback
            raise UrlRefused(f"host {parsed.host!r} is loopback")
        if parsed.literal and not self.allowed(parsed.host):
            raise UrlRefused(
                f"{parsed.host} is a loopback, private or reserved address; such addresses "
                "are refused unless the operator allows them"
            )
        return parsed

    def resolve(self, url: str) -> Target:
        """Steps 1-3: the checked URL and the one checked address to connect to."""
        return self.resolved(self.check(url))

    def resolved(self, parsed: Url) -> Target:
        if parsed.literal:
            return Target(parsed, parsed.host)
        if self.proxy and parsed.scheme in ("http", "https"):
            return Target(parsed, None)
        addresses = self.lookup(parsed.host, parsed.port)
        refused = [a for a in addresses if not self.allowed(a)]
        if refused:
            raise Unreachable(f"{parsed.host} resolves to {refused}: not allowed")
        return Target(parsed, addresses[0])

    def follow(self, url: str, pins: Pins | None = None) -> Target:
        """A URL met on the way (a redirect, a playlist's entry): every refusal is the
        generic one, as the client did not write it. A host in `pins` (resolved earlier in
        the same read) keeps its checked address: one name, one resolution, per read."""
        try:
            parsed = self.check(url)
            if pins is not None and parsed.host in pins:
                return Target(parsed, pins[parsed.host])
            target = self.resolved(parsed)
        except Unreachable:
            raise
        except MediaError as exc:
            raise Unreachable(f"{url!r} refused: {exc}") from None
        if pins is not None and target.address is not None:
            pins[parsed.host] = target.address
        return target

    def lookup(self, host: str, port: int) -> list[str]:
        try:
            addresses = self.dns_lookup(host) if self.dns_server else system_lookup(host, port)
        except (OSError, UnicodeError, dns.exception.DNSException) as exc:
            raise Unreachable(f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise Unreachable(f"{host} has no address")
        return list(dict.fromkeys(addresses))  # in the resolver's order, once each

    def dns_lookup(self, host: str) -> list[str]:
        """A and AAAA from `dns_server`, one query each (no cache, no search list)."""
        server, _, port = self.dns_server.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server.strip("[]")]
        resolver.port = int(port)
        resolver.lifetime = self.timeout_s
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            with contextlib.suppress(dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                answer = resolver.resolve(host + ".", rdtype, search=False)
                addresses += [record.address for record in answer]
        return addresses

    # --- HTTP(S): pinned connections, redirects checked here ---------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """httpx's default trust (certifi), and the operator's own CAs where `ca_bundle`
        names some (a private object store; the tests' CA)."""
        context = httpx.create_ssl_context()
        if self.ca_bundle:
            context.load_verify_locations(cafile=self.ca_bundle)
        return context

    def client_options(self) -> dict[str, Any]:
        """No redirects of the client's own, no proxy from the environment."""
        return {
            "follow_redirects": False,
            "timeout": self.timeout_s,
            "proxy": self.proxy or None,
            "trust_env": False,
            "verify": self.ssl_context(),
            "headers": {"User-Agent": self.user_agent, "Accept-Encoding": "identity"},
        }

    def client(self) -> httpx.Client:
        """For `send` and `get`."""
        return httpx.Client(**self.client_options())

    def async_client(self) -> httpx.AsyncClient:
        """For `aget`: the same client, for the event loop."""
        return httpx.AsyncClient(**self.client_options())

    def request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        method: str,
        target: Target,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Request:
        """To the checked address, with the URL's name as Host and as TLS name (SNI and
        the certificate's check)."""
        url, extensions = target.url.url, {}
        if target.address is not None:
            address = f"[{target.address}]" if ":" in target.address else target.address
            url = f"{target.url.scheme}://{address}:{target.url.port}{target.url.path}"
            if target.url.scheme == "https" and not target.url.literal:
                extensions["sni_hostname"] = target.url.host
        headers = {"Host": target.url.authority} | (headers or {})
        return client.build_request(
            method, url, headers=headers, content=content, extensions=extensions
        )

    def send(
        self,
        client: httpx.Client,
        method: str,
        target: Target,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request, streamed (the caller reads or closes it); Unreachable on any error."""
        try:
            return client.send(self.request(client, method, target, headers, content), stream=True)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise Unreachable(f"{method} {target.url.url} ({target.address}): {exc!r}") from None

    def get(
        self,
        client: httpx.Client,
        target: Target,
        headers: dict[str, str] | None = None,
        pins: Pins | None = None,
    ) -> tuple[Target, httpx.Response]:
        """GET, redirects followed here (each hop checked again); a 2xx answer, streamed,
        and where it came from."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self.send(client, "GET", target, headers)
            if response.is_success:
                return target, response
            response.close()
            target = self.redirected(target, response, pins)
        raise Unreachable(f"more than {MAX_REDIRECTS} redirects")

    async def aget(
        self, client: httpx.AsyncClient, target: Target, pins: Pins | None = None
    ) -> tuple[Target, httpx.Response]:
        """`get` on the event loop (each hop's name resolved on a thread)."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await client.send(self.request(client, "GET", target), stream=True)
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
                raise Unreachable(f"GET {target.url.url} ({target.address}): {exc!r}") from None
            if response.is_success:
                return target, response
            await response.aclose()
            target = await asyncio.to_thread(self.redirected, target, response, pins)
        raise Unreachable(f"more than {MAX_REDIRECTS} redirects")

    def redirected(self, target: Target, response: httpx.Response, pins: Pins | None) -> Target:
        """Where a non-2xx answer sends the read next, checked as any URL met on the way;
        Unreachable when it is no redirect."""
        if not response.is_redirect:
            raise Unreachable(f"GET {target.url.url}: HTTP {response.status_code}")
        location = response.headers.get("location", "")
        return self.follow(urljoin(target.url.url, location), pins)

    def read_all(
        self, client: httpx.Client, target: Target, cap: int, pins: Pins | None = None
    ) -> tuple[Target, bytes]:
        target, response = self.get(client, target, pins=pins)
        try:
            return target, read_capped(response, cap)
        finally:
            response.close()


def read_capped(response: httpx.Response, cap: int) -> bytes:
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > cap:
                raise Unreachable(f"{response.url}: more than {cap} bytes")
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise Unreachable(f"reading {response.url}: {exc!r}") from None
    return bytes(data)


# --- HTTP(S) media to FFmpeg: a file it reads (never a URL it opens) ----------------------


@dataclass
class Bound:
    """When a read ends: the caller stops it, or the deadline passes."""

    stop: threading.Event
    deadline: float  # time.monotonic()

    @property
    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.deadline


class HttpFile:
    """An HTTP(S) body as a file for `av.open`: read in order; seekable (by Range
    requests to the same checked address) when the server says it can."""

    def __init__(
        self, policy: EgressPolicy, client: httpx.Client, target: Target, bound: Bound, pins: Pins
    ) -> None:
        self.policy, self.client, self.bound, self.pins = policy, client, bound, pins
        self.target, self.response = policy.get(client, target, pins=pins)
        self.chunks = self.response.iter_bytes(1 << 16)
        self.buffer = b""
        self.position = 0
        ranges = self.response.headers.get("accept-ranges", "").lower() == "bytes"
        length = self.response.headers.get("content-length", "")
        self.size = int(length) if ranges and length.isdigit() else None

    def peek(self, n: int) -> bytes:
        while len(self.buffer) < n and (chunk := self.next_chunk()):
            self.buffer += chunk
        return self.buffer[:n]

    def next_chunk(self) -> bytes:
        if self.bound.over:
            return b""
        try:
            return next(self.chunks, b"")
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise Unreachable(f"reading {self.target.url.url}: {exc!r}") from None

    def read(self, n: int = -1) -> bytes:
        if not self.buffer:
            self.buffer = self.next_chunk()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        self.position += len(data)
        return data

    def seekable(self) -> bool:
        return self.size is not None

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        assert self.size is not None
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        position = min(max(base + offset, 0), self.size)
        if position != self.position:
            self.response.close()
            target, self.response = self.policy.get(
                self.client, self.target, {"Range": f"bytes={position}-"}, self.pins
            )
            if self.response.status_code != 206 and position:
                raise Unreachable(f"{target.url.url}: a Range request answered without a range")
            self.chunks = self.response.iter_bytes(1 << 16)
            self.buffer, self.position = b"", position
        return position

    def close(self) -> None:
        self.response.close()


class HlsFile:
    """An HLS playlist's segments, fetched here (the playlist's and every segment's URL
    checked as any other), as one continuous stream for `av.open`. A live playlist is
    polled again every target duration, within the read's bound."""

    def __init__(
        self,
        policy: EgressPolicy,
        client: httpx.Client,
        target: Target,
        text: str,
        bound: Bound,
        pins: Pins,
    ) -> None:
        self.policy, self.client, self.bound, self.pins = policy, client, bound, pins
        self.parts = self.segments(target, text)
        self.buffer = b""

    def playlist(self, target: Target, text: str) -> tuple[Target, m3u8.M3U8]:
        playlist = m3u8.loads(text, uri=target.url.url)
        if playlist.is_variant:  # the first variant (servers list their default first)
            if not playlist.playlists:
                raise Unreachable(f"{target.url.url}: a master playlist without variants")
            target = self.policy.follow(playlist.playlists[0].absolute_uri, self.pins)
            target, body = self.policy.read_all(self.client, target, MAX_PLAYLIST, self.pins)
            playlist = m3u8.loads(body.decode("utf-8", "replace"), uri=target.url.url)
        if any(key is not None and key.method not in (None, "NONE") for key in playlist.keys):
            raise Unreachable(f"{target.url.url}: encrypted HLS is not supported")
        return target, playlist

    def segments(self, target: Target, text: str) -> Iterator[bytes]:
        target, playlist = self.playlist(target, text)
        seen: set[int] = set()
        init_sent = False
        while True:
            first = playlist.media_sequence or 0
            for number, segment in enumerate(playlist.segments, start=first):
                if number in seen:
                    continue
                seen.add(number)
                if segment.byterange:
                    raise Unreachable(f"{target.url.url}: byte-range segments are not supported")
                if segment.init_section is not None and not init_sent:
                    init_sent = True
                    yield from self.fetch(segment.init_section.absolute_uri)
                yield from self.fetch(segment.absolute_uri)
            if playlist.is_endlist or self.bound.over:
                return
            if self.bound.stop.wait(max(float(playlist.target_duration or 2) / 2, 0.5)):
                return
            target, body = self.policy.read_all(self.client, target, MAX_PLAYLIST, self.pins)
            target, playlist = self.playlist(target, body.decode("utf-8", "replace"))

    def fetch(self, url: str) -> Iterator[bytes]:
        target = self.policy.follow(url, self.pins)
        _, response = self.policy.get(self.client, target, pins=self.pins)
        try:
            for chunk in response.iter_bytes(1 << 16):
                if self.bound.over:
                    return
                yield chunk
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise Unreachable(f"reading {url}: {exc!r}") from None
        finally:
            response.close()

    def read(self, n: int = -1) -> bytes:
        if not self.buffer and not self.bound.over:
            self.buffer = next(self.parts, b"")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def close(self) -> None:
        self.parts.close()


def http_media(
    policy: EgressPolicy, client: httpx.Client, target: Target, bound: Bound
) -> HttpFile | HlsFile:
    """The file `av.open` reads for an HTTP(S) target: its body, or for an HLS playlist
    its segments'."""
    pins: Pins = {} if target.address is None else {target.url.host: target.address}
    body = HttpFile(policy, client, target, bound, pins)
    kind = body.response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in HLS_TYPES and body.peek(7) != b"#EXTM3U":
        return body
    text = body.peek(MAX_PLAYLIST + 1)
    body.close()
    if len(text) > MAX_PLAYLIST:
        raise Unreachable(f"{body.target.url.url}: a playlist over {MAX_PLAYLIST} bytes")
    return HlsFile(policy, client, body.target, text.decode("utf-8", "replace"), bound, pins)


# --- RTSP and RTMP: a loopback relay to the checked address ------------------------------


class RtspRedirect(Exception):
    pass


class RtspReplies:
    """The server-to-client half of an RTSP connection, read message by message (and
    `$`-interleaved frame by frame): what may be forwarded to FFmpeg, or RtspRedirect for
    a 3xx reply or a REDIRECT request, which FFmpeg would follow to any address."""

    MAX_HEAD = 1 << 16

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        """The complete units `data` finishes, to forward; the rest waits for more."""
        self.buffer += data
        ready = bytearray()
        while (size := self.unit()) is not None:
            ready += self.buffer[:size]
            del self.buffer[:size]
        return bytes(ready)

    def unit(self) -> int | None:
        """The size of the first complete unit, None while it is incomplete."""
        if not self.buffer:
            return None
        if self.buffer[0] == 0x24:  # "$", channel, 16-bit length, an RTP/RTCP packet
            if len(self.buffer) < 4:
                return None
            size = 4 + int.from_bytes(self.buffer[2:4], "big")
            return size if len(self.buffer) >= size else None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > self.MAX_HEAD:
                raise RtspRedirect("an RTSP message head over 64 KiB")
            return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        words = lines[0].split()
        if words and words[0].startswith("RTSP/"):
            if len(words) > 1 and words[1].startswith("3"):
                raise RtspRedirect(f"an RTSP redirect: {lines[0]!r}")
        elif words and words[0].upper() == "REDIRECT":
            raise RtspRedirect("an RTSP REDIRECT request")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip()) if value.strip().isdigit() else 0
        size = end + 4 + length
        return size if len(self.buffer) >= size else None


class Relay:
    """A listener on 127.0.0.1 that FFmpeg connects to instead of the source: each
    connection is carried to the checked address (TLS to the URL's name for rtsps and
    rtmps), RTSP replies read for redirects. FFmpeg so never resolves nor reaches an
    address itself. Close it after."""

    def __init__(
        self, target: Target, timeout_s: float, context: ssl.SSLContext | None = None
    ) -> None:
        assert target.address is not None
        self.target, self.timeout_s = target, timeout_s
        self.context = context or ssl.create_default_context()
        self.rtsp = target.url.scheme.startswith("rtsp")
        self.tls = target.url.scheme in ("rtsps", "rtmps")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self.accept, daemon=True, name="egress-relay").start()

    @property
    def url(self) -> str:
        """What FFmpeg opens: the same path, on the relay."""
        scheme = self.target.url.scheme.removesuffix("s")
        return f"{scheme}://127.0.0.1:{self.port}{self.target.url.path}"

    def accept(self) -> None:
        while not self.closed.is_set():
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(inside)
            threading.Thread(target=self.carry, args=(inside,), daemon=True).start()

    def connect(self) -> socket.socket:
        outside = socket.create_connection(self.target.sockaddr, timeout=self.timeout_s)
        self.sockets.append(outside)
        if self.tls:
            name = None if self.target.url.literal else self.target.url.host
            self.context.check_hostname = name is not None
            outside = self.context.wrap_socket(outside, server_hostname=name)
            self.sockets.append(outside)
        outside.settimeout(None)
        return outside

    def carry(self, inside: socket.socket) -> None:
        try:
            outside = self.connect()
        except OSError as exc:
            log.warning("egress failed: %s (%s): %r", self.target.url.url, self.target.address, exc)
            shut(inside)
            return
        threading.Thread(target=self.pipe, args=(inside, outside, None), daemon=True).start()
        self.pipe(outside, inside, RtspReplies() if self.rtsp else None)

    def pipe(self, source: socket.socket, sink: socket.socket, replies: RtspReplies | None) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(replies.feed(data) if replies is not None else data)
        except RtspRedirect as exc:
            log.warning("egress refused: %s: %s", self.target.url.url, exc)
        except OSError:
            pass
        shut(source)
        shut(sink)

    def close(self) -> None:
        self.closed.set()
        shut(self.listener)
        for sock in list(self.sockets):
            shut(sock)


def shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class Opened:
    """What `av.open` is given for a target: a file, or a relay's URL and its options."""

    source: HttpFile | HlsFile | str  # a URL: the relay's
    options: dict[str, str] = field(default_factory=dict)
    relay: Relay | None = None
    client: httpx.Client | None = None

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        if not isinstance(self.source, str):
            self.source.close()
        if self.client is not None:
            self.client.close()


def open_media(policy: EgressPolicy, target: Target, bound: Bound) -> Opened:
    """`target` made ready for FFmpeg: only this module connects anywhere."""
    scheme = target.url.scheme
    if scheme in ("http", "https"):
        client = policy.client()
        try:
            return Opened(http_media(policy, client, target, bound), client=client)
        except BaseException:
            client.close()
            raise
    relay = Relay(target, policy.timeout_s, policy.ssl_context())
    if scheme.startswith("rtsp"):
        # TCP only (RTP interleaved on the one connection), nothing but the relay's socket.
        options = {"rtsp_transport": "tcp", "protocol_whitelist": "rtsp,rtp,tcp"}
    else:
        options = {"protocol_whitelist": "rtmp,tcp", "rtmp_tcurl": tc_url(target.url)}
    return Opened(relay.url, options, relay)


def tc_url(url: Url) -> str:
    """RTMP's tcUrl names the application on the server as the URL did (not the relay)."""
    app = url.path.lstrip("/").split("/", 1)[0]
    return f"{url.scheme}://{url.authority}/{app}"
