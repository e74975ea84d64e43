"""Live media from a URL (RTSP, RTMP, HLS, HTTP(S)) -> frames at a steady rate, with PyAV.

A stream URL makes the service itself connect somewhere: preprocess/egress.py reads and
checks it, resolves its host once, and is the only one to connect (FFmpeg reads HTTP(S)
and HLS bytes the module fetched, and RTSP/RTMP through the module's loopback relay to
the checked address). Whatever fails once the network is involved is one generic error,
`stream_unreachable`; its cause goes to the log.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av

from preprocess.egress import Bound, EgressPolicy, Target, Unreachable, open_media
from preprocess.media import MediaError, MediaLimits
from preprocess.video import Frame, rgb

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https"})


@dataclass(frozen=True)
class StreamPolicy(EgressPolicy):
    """Which stream URLs the service may open: an egress policy over the stream schemes."""

    schemes: frozenset[str] = STREAM_SCHEMES


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


def ffmpeg_options(target: Target, timeout_s: float) -> dict[str, str]:
    if target.url.scheme.startswith("rtsp"):
        return PROBE | {"timeout": str(int(timeout_s * 1_000_000))}
    return PROBE  # RTMP and files: PyAV's timeout (and the module's reads) bound every wait


def read_stream(
    target: Target,
    policy: EgressPolicy,
    read: StreamRead,
    on_frame: Callable[[Frame], None],
    stop: threading.Event,
) -> int:
    """Decode `target` (checked by `policy.resolve`) until it ends, `stop` is set or
    `read.max_s` passes; hand `on_frame` a frame every 1/fps seconds of stream time, paced
    to the stream's own clock (a recorded source such as an HLS playlist is judged as it
    would play, not as fast as it downloads). Returns the number of frames handed over.
    Blocking: run it in its own thread."""
    bound = Bound(stop, time.monotonic() + read.max_s + read.timeout_s)
    opened = open_media(policy, target, bound)
    options = ffmpeg_options(target, read.timeout_s) | opened.options
    try:
        return decode(opened.source, options, read, on_frame, stop)
    finally:
        opened.close()


def decode(
    source: object,
    options: dict[str, str],
    read: StreamRead,
    on_frame: Callable[[Frame], None],
    stop: threading.Event,
) -> int:
    try:
        container = av.open(
            source,
            options=options,
            timeout=(read.timeout_s, read.timeout_s),
            metadata_errors="replace",
        )
    except Unreachable:
        raise
    except (av.FFmpegError, OSError, MediaError) as exc:
        raise Unreachable(f"could not open the stream: {exc!r}") from None
    handed, index, next_t, first_t = 0, -1, None, None
    started = time.monotonic()  # opening is bounded by its own timeout
    try:
        if not container.streams.video:
            raise Unreachable("the stream has no video")
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
    except Unreachable:
        if handed == 0:
            raise
    except (av.FFmpegError, OSError) as exc:
        if handed == 0:
            raise Unreachable(f"could not read the stream: {exc!r}") from None
        # A live source that stops or breaks mid-way ends the read; what was judged stands.
    finally:
        container.close()
    return handed
