"""Video file -> sampled RGB frames, with PyAV (FFmpeg): sequential, never seeking.

Seeking costs ~10x a sequential read with FFmpeg, so every clip is read from the start up to
the last frame wanted. Frames go to the caller's `on_frame` as they are decoded and are never kept
here, so a request holds a few decoded frames at a time whatever its resolution and length.
When frames are plentiful (at least `SKIP_MIN_RATIO` per frame wanted)
the decoder skips non-reference frames (most B-frames): nothing else depends on them, so
they are never decoded at all: a 10-s 1080p H.264 clip costs ~40 % less CPU. Each wanted
frame is then the first decoded frame at or after it, a frame or two later at most.
"""

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.sidedata.sidedata import Type as SideDataType

from preprocess.orientation import UPRIGHT, Orientation, from_display_matrix, from_rotate_tag

_log = logging.getLogger("preprocess.video")
_fell_back: set[str] = set()  # the hardware decoders that could not be opened here

# Skip non-reference frames only when there are at least this many frames per frame wanted,
# so the reference frames left are still dense enough to sample evenly.
SKIP_MIN_RATIO = 4
# A run of non-reference frames is a few B-frames: a stream that ends further than this
# before the last wanted frame was cut short, it did not just end in a B-frame run.
MAX_NON_REFERENCE_RUN = 8
# Decoding threads per video, at most: each holds a frame or more of its own.
MAX_DECODER_THREADS = 4
# Codecs whose non-reference frames FFmpeg can skip cleanly (B-frames without dependants).
SKIPPABLE_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video"})


class DecodeError(Exception):
    """The file could not be opened or holds no decodable video stream."""


# Called with every decoded frame before it is converted: the caller's limits (frame size,
# decoded-pixel budget, deadline, cancellation) raise from here to stop decoding at once.
Watch = Callable[[av.VideoFrame], None]


def _unwatched(frame: av.VideoFrame) -> None:
    return None


class FrameLimit(Exception):
    """A stream of unknown length went past the frame limit while decoding."""

    def __init__(self, max_frames: int) -> None:
        super().__init__(f"more than {max_frames} frames")
        self.max_frames = max_frames


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in the clip, in display order, from 0
    timestamp_s: float
    image: np.ndarray  # RGB uint8 HxWx3


@dataclass(frozen=True)
class VideoHeader:
    """What the container says about the stream, before a frame is decoded."""

    codec: str
    width: int
    height: int
    fps: float | None
    frame_count: int | None  # None: unknown (live WebM/Matroska without a duration)

    def duration_s(self, frame_count: int | None) -> float | None:
        return frame_count / self.fps if frame_count and self.fps else None


class VideoFile:
    """One open video: its header, then frames decoded in order."""

    def __init__(self, container: av.container.InputContainer, max_pixels: int | None) -> None:
        if not container.streams.video:
            raise DecodeError("the file has no video stream")
        self.container = container
        self.stream = container.streams.video[0]
        if self.stream.codec_context is None:  # a codec FFmpeg does not know (a damaged header)
            raise DecodeError("no decoder for the file's video stream")
        if max_pixels:
            # FFmpeg's own bound on one frame, before it allocates it: a header that declares
            # 320x240 may carry 16000x16000 frames (MJPEG sizes each frame on its own).
            self.stream.codec_context.options = {"max_pixels": str(max_pixels)}
        self.stream.thread_type = "AUTO"  # frame and slice threads
        # FFmpeg's default is a thread per core (+1), each holding frames in flight: on a
        # 64-core node that is 64 4K frames per request, whatever the pod's CPU limit.
        self.stream.codec_context.thread_count = min(MAX_DECODER_THREADS, os.cpu_count() or 1)
        self.header = _header(container, self.stream)
        start, base = self.stream.start_time, self.stream.time_base
        # A damaged container may give neither: frames are then numbered from 0.
        self._start_s = float(start * base) if start is not None and base else 0.0
        # Files without a display matrix may still carry the legacy tag (Matroska's ROTATE).
        tags = {key.lower(): value for key, value in self.stream.metadata.items()}
        self._tagged = from_rotate_tag(tags["rotate"]) if "rotate" in tags else UPRIGHT
        # Read from the first decoded frame: what every frame is turned by, and what
        # MediaInfo reports.
        self._orientation: Orientation | None = None

    @property
    def orientation(self) -> Orientation:
        return self._tagged if self._orientation is None else self._orientation

    def upright(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame as RGB, turned as the stream's display matrix (or tag) says."""
        if self._orientation is None:
            # Once per stream: the matrix is the container's (FFmpeg copies it onto every
            # frame), and reading a frame's side data with PyAV keeps that frame alive in a
            # reference cycle until the garbage collector runs: done per frame, 300 sampled
            # 4K frames held 2.6 GB (tests/test_bounds.py).
            matrix = frame.side_data.get(SideDataType.DISPLAYMATRIX)
            self._orientation = (
                from_display_matrix(np.frombuffer(bytes(matrix), dtype=np.int32))
                if matrix is not None
                else self._tagged
            )
        return self._orientation.apply(rgb(frame))

    def frames(self, skip_non_reference: bool = False) -> Iterator[tuple[int, av.VideoFrame]]:
        """(display index, frame) in display order; a corrupt packet ends the stream."""
        if skip_non_reference and self.header.codec in SKIPPABLE_CODECS and self.header.fps:
            self.stream.codec_context.skip_frame = "NONREF"
        counted = 0
        try:
            for frame in self.container.decode(self.stream):
                yield self._index(frame, counted), frame
                counted += 1
        except av.FFmpegError:
            if counted == 0:
                raise
            # What decoded before the damage is still worth analysing, as OpenCV would.

    def _index(self, frame: av.VideoFrame, counted: int) -> int:
        skipping = self.stream.codec_context.skip_frame != "DEFAULT"
        if not skipping or frame.time is None or not self.header.fps:
            return counted
        return max(0, round((frame.time - self._start_s) * self.header.fps))


def sample_indices(frame_count: int, n: int) -> list[int]:
    """`n` frame indices spread evenly from the first frame to the last; all if n >= count."""
    if frame_count <= 0 or n <= 0:
        return []
    if n >= frame_count:
        return list(range(frame_count))
    # Steps are >= 1 frame here, so rounding never merges two indices.
    return np.linspace(0, frame_count - 1, n).round().astype(int).tolist()


def count_packets(video: VideoFile, max_frames: int, watch: Callable[[], None]) -> int:
    """The stream's frame count from its packets (one frame each), demuxed without decoding:
    how long a stream whose container does not say is, at a fraction of decoding's cost.
    Raises FrameLimit past `max_frames`; `watch` may stop it (a deadline, a cancel)."""
    count = 0
    for packet in video.container.demux(video.stream):
        if packet.size:
            count += 1
            if count > max_frames:
                raise FrameLimit(max_frames)
            watch()
    return count


def hwaccel_offered(device: str) -> bool:
    """Whether this PyAV's FFmpeg was built with the hardware decoder `device` (`cuda`:
    NVDEC); whether a device of that kind is present is known only on opening."""
    return device in hwdevices_available()


@contextmanager
def open_video(
    path: Path, format: str | None = None, max_pixels: int | None = None, hwaccel: str = ""
) -> Iterator[VideoFile]:
    """`format`: FFmpeg's demuxer, as sniffed (never probed again); local files only.
    `hwaccel`: FFmpeg's hardware decoder (`cuda`: NVDEC), decoding on the CPU where the
    device cannot be opened or a stream's codec has none."""
    try:
        container = _open(path, format, hwaccel)
    except av.FFmpegError as exc:
        if not hwaccel:
            raise DecodeError(f"could not open the video: {exc}") from exc
        if hwaccel not in _fell_back:  # once a process: every file would say the same
            _fell_back.add(hwaccel)
            _log.warning("no %s decoder (%s): decoding on the CPU", hwaccel, exc)
        try:
            container = _open(path, format, "")
        except av.FFmpegError as again:
            raise DecodeError(f"could not open the video: {again}") from again
    try:
        yield VideoFile(container, max_pixels)
    finally:
        container.close()


def _open(path: Path, format: str | None, hwaccel: str) -> av.container.InputContainer:
    return av.open(
        str(path),
        mode="r",
        format=format,
        # No network or nested protocols, whatever a playlist or reference inside says.
        container_options={"protocol_whitelist": "file"},
        # Metadata are only shown, never trusted: undecodable text must not fail the file.
        metadata_errors="replace",
        # Frames come back in system memory (is_hw_owned false), as software-decoded ones.
        hwaccel=HWAccel(device_type=hwaccel, allow_software_fallback=True) if hwaccel else None,
    )


def rgb(frame: av.VideoFrame) -> np.ndarray:
    # swscale reads the frame's own colour tags (range, matrix) and bit depth: 10/12-bit,
    # 4:2:2/4:4:4, full or limited range all come out as the same 8-bit RGB as FFmpeg's
    # (tests/test_formats_orientations.py).
    return frame.to_ndarray(format="rgb24")


def _frame(video: VideoFile, index: int, frame: av.VideoFrame) -> Frame:
    # index / fps is exact for constant-rate video; without a rate, the decoder's own clock.
    fps = video.header.fps
    return Frame(index, index / fps if fps else float(frame.time or 0), video.upright(frame))


def decode_wanted(
    video: VideoFile,
    wanted: list[int],
    on_frame: Callable[[Frame], None],
    watch: Watch = _unwatched,
    frame_count: int | None = None,
) -> tuple[list[int], int | None]:
    """Hands `on_frame` the wanted frames (or, skipping non-reference frames, the first decoded
    at or after each), decoding no further than the last; returns their indices. Also, if the
    stream ended before the last wanted index, how many frames it really had; None otherwise.
    `frame_count`: the stream's length when the header does not give it."""
    length = video.header.frame_count or frame_count or 0
    skip = len(wanted) * SKIP_MIN_RATIO <= length
    kept: list[int] = []
    pending = 0  # position in `wanted` of the next frame to find
    last: tuple[int, av.VideoFrame] | None = None
    for index, frame in video.frames(skip_non_reference=skip):
        watch(frame)
        last = (index, frame)
        if index < wanted[pending]:
            continue
        while pending < len(wanted) and wanted[pending] <= index:
            pending += 1
        kept.append(index)
        on_frame(_frame(video, index, frame))
        if pending == len(wanted):
            return kept, None
    if last is None:
        return kept, 0
    if skip and wanted[-1] - last[0] <= MAX_NON_REFERENCE_RUN and (not kept or kept[-1] < last[0]):
        # The clip's last frames were non-reference ones: the last decoded stands in for them.
        index, frame = last
        kept.append(index)
        on_frame(_frame(video, index, frame))
        return kept, None
    return kept, last[0] + 1


def _header(container: av.container.InputContainer, stream: av.VideoStream) -> VideoHeader:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate and 0 < float(rate) < 1000 else None
    frame_count = stream.frames or None
    if frame_count is None and fps:
        # As OpenCV does: Matroska/WebM store a duration, not a frame count.
        if stream.duration is not None and stream.time_base:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = 0.0
        frame_count = int(np.floor(duration_s * fps + 0.5)) or None
    context = stream.codec_context
    return VideoHeader(context.name, context.width, context.height, fps, frame_count)
