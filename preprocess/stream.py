"""Live media from a URL (RTSP, RTMP, HLS, HTTP(S)) -> frames at a steady rate, with PyAV.

A stream URL makes the service itself connect somewhere, so every URL is checked first
(`StreamPolicy.check`): its scheme and host against the allow-lists, and every address
its host resolves to — loopback, private, link-local and other non-public addresses are
refused unless the operator allows them. HTTP(S) redirects are followed here, one hop at
a time, each target checked again, before FFmpeg is given the final URL.
"""

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import av
import httpx

from preprocess.media import MediaError, MediaLimits
from preprocess.video import Frame, rgb

MAX_REDIRECTS = 5


class StreamRefused(MediaError):
    """The URL is not one the service may connect to."""

    code = "url_refused"
    status = 403


class BadStreamUrl(MediaError):
    code = "bad_url"
    status = 422


class StreamUnavailable(MediaError):
    """The source could not be opened or read (down, not media, too slow)."""

    code = "stream_unavailable"
    status = 502


Resolve = Callable[[str, int | None], list[str]]


def resolve_host(host: str, port: int | None) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadStreamUrl(f"cannot resolve the host {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    """A unicast address on the public internet (not loopback, private, link-local,
    shared, reserved or multicast; an IPv4-mapped IPv6 address as its IPv4 one)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class StreamPolicy:
    """Which stream URLs the service may open."""

    schemes: frozenset[str] = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https"})
    hosts: frozenset[str] = frozenset()  # empty: any host (public addresses only, see below)
    allow_private: bool = False  # loopback, private, link-local, reserved addresses
    timeout_s: float = 10.0  # each redirect hop

    def check(self, url: str, resolve: Resolve = resolve_host) -> None:
        """Raises StreamRefused or BadStreamUrl unless `url` may be opened."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BadStreamUrl(f"not a valid URL: {exc}") from None
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        if scheme not in self.schemes:
            raise StreamRefused(
                f"scheme {scheme or '(none)'!r} is not allowed; allowed: {sorted(self.schemes)}"
            )
        if not host:
            raise BadStreamUrl("the URL names no host")
        if self.hosts and host not in self.hosts:
            raise StreamRefused(f"host {host!r} is not in the allowed hosts")
        if self.allow_private:
            return
        for address in resolve(host, port):
            if not is_public(address):
                raise StreamRefused(
                    f"host {host!r} is a loopback, private or reserved address ({address}); "
                    "such sources are refused unless the operator allows them"
                )

    def final_url(self, url: str, resolve: Resolve = resolve_host) -> str:
        """`url` checked; for HTTP(S), its redirects followed here, each target checked
        again (FFmpeg would follow them unchecked), and the last one returned."""
        self.check(url, resolve)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return url
        with httpx.Client(follow_redirects=False, timeout=self.timeout_s) as client:
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    with client.stream("GET", url) as answer:  # headers only: never the body
                        location = answer.headers.get("location")
                        if not (answer.is_redirect and location):
                            return url
                except httpx.HTTPError as exc:
                    raise StreamUnavailable(f"could not reach the stream: {exc}") from None
                url = urljoin(url, location)
                self.check(url, resolve)
        raise StreamUnavailable(f"more than {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class StreamRead:
    """How long and how densely a stream is read."""

    fps: float = 2.0  # frames handed over per second of stream time
    max_s: float = 60.0  # wall-clock bound of the whole read
    timeout_s: float = 10.0  # opening, and each read: a silent source is given up
    limits: MediaLimits = field(default_factory=MediaLimits)


# Live sources are probed briefly: FFmpeg's default (5 s of a paced stream) is a 5-s wait
# before the first frame of an RTMP source.
PROBE = {"analyzeduration": "500000", "probesize": "1000000"}


def ffmpeg_options(url: str, timeout_s: float) -> dict[str, str]:
    micros = str(int(timeout_s * 1_000_000))
    scheme = urlsplit(url).scheme.lower()
    if scheme.startswith("rtsp"):
        return PROBE | {"rtsp_transport": "tcp", "timeout": micros}
    if scheme.startswith("rtmp"):
        return PROBE  # FFmpeg's own RTMP: PyAV's timeout below bounds every read
    return PROBE | {"rw_timeout": micros}


def read_stream(
    url: str, read: StreamRead, on_frame: Callable[[Frame], None], stop: threading.Event
) -> int:
    """Decode `url` until it ends, `stop` is set or `read.max_s` passes; hand `on_frame` a
    frame every 1/fps seconds of stream time, paced to the stream's own clock (a recorded
    source such as an HLS playlist is judged as it would play, not as fast as it downloads).
    Returns the number of frames handed over. Blocking: run it in its own thread."""
    try:
        container = av.open(
            url,
            options=ffmpeg_options(url, read.timeout_s),
            timeout=(read.timeout_s, read.timeout_s),
            metadata_errors="replace",
        )
    except (av.FFmpegError, OSError) as exc:
        raise StreamUnavailable(f"could not open the stream: {exc}") from None
    handed, index, next_t, first_t = 0, -1, None, None
    started = time.monotonic()  # opening is bounded by its own timeout
    try:
        if not container.streams.video:
            raise StreamUnavailable("the stream has no video")
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            index += 1
            if stop.is_set() or time.monotonic() - started > read.max_s:
                break
            t = float(frame.time) if frame.time is not None else index / (read.fps * 4)
            if next_t is not None and t < next_t:
                continue
            read.limits.check_size(frame.width, frame.height)
            first_t = t if first_t is None else first_t
            # Pace to the stream clock: a live source is already paced, a recorded one waits.
            ahead = (t - first_t) - (time.monotonic() - started)
            if ahead > 0 and stop.wait(min(ahead, read.max_s)):
                break
            next_t = t + 1.0 / read.fps
            on_frame(Frame(index, t - first_t, rgb(frame)))  # seconds since the first frame
            handed += 1
    except (av.FFmpegError, OSError) as exc:
        if handed == 0:
            raise StreamUnavailable(f"could not read the stream: {exc}") from None
        # A live source that stops or breaks mid-way ends the read; what was judged stands.
    finally:
        container.close()
    return handed
