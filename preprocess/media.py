"""Uploaded file -> a few RGB frames: sniff the format, check the limits, sample evenly.

`MediaReader.scan` hands each sampled frame to a callback as it is decoded and keeps none
(the gateway's way: memory stays bounded whatever the resolution); `MediaReader.read` keeps
them, for tools and tests. Every problem with the file itself is a
`MediaError` that carries a stable error code for the client (no HTTP status: the gateway
maps codes to statuses, gateway/server/errors.py's catalogue).
"""

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import av
import numpy as np
from PIL import ExifTags, Image

from preprocess.orientation import Orientation, from_exif
from preprocess.video import (
    DecodeError,
    Frame,
    FrameLimit,
    VideoFile,
    count_packets,
    decode_wanted,
    open_video,
    sample_indices,
)

# What Pillow raises on a damaged file. Beyond its usual ones, a cut or mangled animation
# fails with IndexError or struct.error while Pillow counts its frames (found by fuzzing).
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

# The FFmpeg demuxer for each sniffed container: FFmpeg never probes the file itself.
DEMUXERS = {"mp4": "mov", "avi": "avi", "mov": "mov", "mkv": "matroska", "webm": "matroska"}
VIDEO_FORMATS = frozenset(DEMUXERS)
# Only these decoders ever see an upload: camera, phone, browser and editing codecs, not the
# hundreds of rarely used (and rarely fuzzed) ones FFmpeg also carries.
VIDEO_CODECS = frozenset(
    {
        *("h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "prores"),
        *("vp8", "vp9", "av1", "libdav1d", "libaom-av1", "theora", "msmpeg4v3", "h263"),
    }
)
IMAGE_ORDER = ("jpeg", "png", "webp", "gif")
IMAGE_FORMATS = frozenset(IMAGE_ORDER)
# Every accepted format, videos first, in the order clients are told them (GET /api).
FORMATS = (*DEMUXERS, *IMAGE_ORDER)


class MediaError(Exception):
    """A problem with the uploaded file itself: safe to show to the client as is."""

    code: ClassVar[str] = "media_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedMedia(MediaError):
    code = "unsupported_media"


class UndecodableMedia(MediaError):
    code = "undecodable_media"


class MediaLimitExceeded(MediaError):
    code = "media_limit_exceeded"


# --- sniffing: the format from the first bytes, never from the name -------------------------

SNIFF_BYTES = 4096  # more than any EBML header up to its DocType
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
EBML_DOCTYPE_ID = 0x4282
EBML_DOCTYPES = {"webm": "webm", "matroska": "mkv"}
# ISO-BMFF brands that are not video: HEIF/AVIF stills, JPEG 2000, audio-only MPEG-4, Canon raw.
NOT_VIDEO_BRANDS = frozenset(
    b.encode()
    for b in (
        *("heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "avif", "avis"),
        *("jp2 ", "jpx ", "jpm ", "M4A ", "M4B ", "M4P ", "F4A ", "F4B ", "crx "),
    )
)
# QuickTime files older than the ftyp box start straight with one of these atoms.
QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


def sniff(path: Path) -> str:
    """The container or image format of `path` from its magic bytes.

    One of VIDEO_FORMATS | IMAGE_FORMATS; anything else raises UnsupportedMedia.
    """
    with Path(path).open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if found := _sniff_bytes(head):
        return found
    raise UnsupportedMedia(
        "unsupported file type: send an mp4, mov, avi, mkv or webm video, "
        "or a jpeg, png, webp or gif image"
    )


def _sniff_bytes(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return "webp" if head[8:12] == b"WEBP" else "avi"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov"
        return None if brand in NOT_VIDEO_BRANDS else "mp4"
    if head[4:8] in QUICKTIME_ATOMS:
        return "mov"
    if head.startswith(EBML_MAGIC):
        return EBML_DOCTYPES.get(_ebml_doctype(head) or "")
    return None


def _ebml_doctype(head: bytes) -> str | None:
    """The DocType ("webm", "matroska") of an EBML header, walking its elements."""
    try:
        size, pos = _vint(head, len(EBML_MAGIC))
        end = min(pos + size, len(head))
        while pos < end:
            element, pos = _vint(head, pos, keep_marker=True)
            size, pos = _vint(head, pos)
            if element == EBML_DOCTYPE_ID:
                return head[pos : pos + size].rstrip(b"\0").decode("ascii", "replace")
            pos += size
    except (IndexError, ValueError):  # truncated or not EBML after all
        pass
    return None


def _vint(data: bytes, pos: int, keep_marker: bool = False) -> tuple[int, int]:
    """An EBML variable-length integer at `pos`: (value, position after it).

    Its length is one more than the leading zero bits of its first byte; element IDs keep
    that length marker bit, sizes do not.
    """
    length = 9 - data[pos].bit_length()
    if length > 8 or pos + length > len(data):
        raise ValueError("not an EBML variable-length integer")
    value = data[pos] if keep_marker else data[pos] & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = value << 8 | byte
    return value, pos + length


FFMPEG_PADDING = 128  # pixels FFmpeg may add to each side of a frame it allocates

# --- limits and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class MediaLimits:
    """What the service accepts, checked from the file's header before anything is decoded.

    The frame must fit in max_width x max_height in either orientation, so the default admits
    4K and portrait video (1080x1920, 2160x3840) alike.
    """

    max_width: int = 3840
    max_height: int = 2160
    max_duration_s: float = 600.0
    max_frame_count: int = 36_000
    # Frames x width x height decoded for one request, sampled or not, counted as decoded:
    # bounds the CPU a file can cost (80 s of 4K, 5 min of 1080p at 30 fps).
    max_decoded_pixels: int = 20_000_000_000

    @property
    def ffmpeg_max_pixels(self) -> int:
        """FFmpeg's bound on one frame: the size limit plus the alignment padding its
        decoders allocate around a frame (a 720x1280 H.264 frame needs more than 921,600)."""
        padded = (self.max_width + FFMPEG_PADDING) * (self.max_height + FFMPEG_PADDING)
        return min(padded, 2**31 - 1)  # FFmpeg's option is an int

    def check_size(self, width: int, height: int) -> None:
        long_side, short_side = max(width, height), min(width, height)
        if long_side > max(self.max_width, self.max_height) or short_side > min(
            self.max_width, self.max_height
        ):
            raise MediaLimitExceeded(
                f"resolution {width}x{height} is above the limit of "
                f"{self.max_width}x{self.max_height} (either orientation)"
            )

    def check_length(self, frame_count: int, duration_s: float | None) -> None:
        if frame_count > self.max_frame_count:
            raise MediaLimitExceeded(
                f"{frame_count} frames is above the limit of {self.max_frame_count}"
            )
        if duration_s is not None and duration_s > self.max_duration_s:
            raise MediaLimitExceeded(
                f"duration {duration_s:.1f} s is above the limit of {self.max_duration_s:g} s"
            )


@dataclass(frozen=True)
class MediaInfo:
    kind: Literal["video", "image"]
    format: str
    width: int
    height: int
    fps: float | None  # None for images, or a video whose container gives no rate
    frame_count: int
    duration_s: float | None
    # What was done to the decoded pixels to make them upright (display matrix, EXIF tag):
    # mirrored left-right if `flipped`, then turned `rotation` degrees clockwise. Width and
    # height are the upright picture's.
    rotation: int = 0
    flipped: bool = False


@dataclass(frozen=True)
class Media:
    info: MediaInfo
    frames: list[Frame]


@dataclass(frozen=True)
class Scan:
    """What `MediaReader.scan` found: the file's info and the indices of the sampled frames it
    finally chose (each handed to `on_frame`; a re-sampled truncated file hands over more)."""

    info: MediaInfo
    indices: list[int]


class DecodeBudget:
    """Checks each frame as decoded, whatever the header said: its size, the request's
    decoded-pixel budget, then the caller's `stop` (a deadline or a cancel), which raises."""

    def __init__(self, limits: "MediaLimits", stop: Callable[[], None]) -> None:
        self.limits = limits
        self.stop = stop
        self.pixels = 0

    def __call__(self, frame: av.VideoFrame) -> None:
        self.check(frame.width, frame.height)

    def check(self, width: int, height: int) -> None:
        self.limits.check_size(width, height)
        self.pixels += width * height
        if self.pixels > self.limits.max_decoded_pixels:
            raise MediaLimitExceeded(
                f"the video needs more than {self.limits.max_decoded_pixels / 1e9:g} gigapixels "
                "decoded: send a shorter or smaller clip, or ask for fewer frames"
            )
        self.stop()


# --- reading ----------------------------------------------------------------------------------


# Called with each sampled frame as soon as it is decoded, from the decoding thread, so a
# caller can start on it (face detection) while the rest of the clip is still decoding.
OnFrame = Callable[[Frame], None]


def _go_on() -> None:
    return None


class MediaReader:
    """Reads an uploaded file into `Media`: its info and up to n evenly spread RGB frames.

    Stateless apart from its limits, so one reader may serve many threads.
    """

    def __init__(self, limits: MediaLimits = MediaLimits(), hwaccel: str = "") -> None:
        self.limits = limits
        self.hwaccel = hwaccel  # FFmpeg's hardware video decoder (`cuda`: NVDEC); "": the CPU

    def read(self, path: Path, n_frames: int) -> Media:
        """The file's info and its sampled frames, all kept: for tools and tests. A server
        uses `scan`, which keeps none."""
        frames: dict[int, Frame] = {}
        scan = self.scan(path, n_frames, lambda frame: frames.__setitem__(frame.index, frame))
        return Media(scan.info, [frames[i] for i in scan.indices])

    def scan(
        self, path: Path, n_frames: int, on_frame: OnFrame, stop: Callable[[], None] = _go_on
    ) -> Scan:
        """The file's info; each sampled frame goes to `on_frame` (from this thread) as soon
        as it is decoded, and is not kept. `stop` is called as each frame is decoded and
        stops the reading by raising (a deadline, a client gone)."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, not {n_frames}")
        path = Path(path)
        fmt = sniff(path)
        if fmt in IMAGE_FORMATS:
            return self._read_image(path, fmt, n_frames, on_frame, DecodeBudget(self.limits, stop))
        return self._read_video(path, fmt, n_frames, on_frame, DecodeBudget(self.limits, stop))

    def _read_image(
        self, path: Path, fmt: str, n_frames: int, on_frame: OnFrame, budget: "DecodeBudget"
    ) -> Scan:
        try:
            # Image.open parses only the header: a decompression bomb is refused undecoded.
            with Image.open(path) as opened:
                self.limits.check_size(*opened.size)
                # Pillow decodes, not OpenCV: OpenCV 5 spends seconds on some corrupt PNGs of
                # a few bytes (found by the fuzz test); Pillow refuses them at once. Turned
                # upright by its EXIF orientation, as cameras and viewers mean it.
                orientation = from_exif(opened.getexif().get(ExifTags.Base.Orientation))
                if getattr(opened, "n_frames", 1) > 1:  # animated GIF, WebP or PNG
                    return self._read_animation(
                        opened, fmt, orientation, n_frames, on_frame, budget
                    )
                image = orientation.apply(rgb_image(opened))
        except Image.DecompressionBombError as exc:
            raise MediaLimitExceeded(f"image too large: {exc}") from exc
        except PILLOW_ERRORS as exc:
            raise UndecodableMedia(f"could not decode the {fmt} image: {exc}") from exc
        height, width = image.shape[:2]
        info = MediaInfo("image", fmt, width, height, None, 1, None, *orientation.facts())
        on_frame(Frame(0, 0.0, image))
        return Scan(info, [0])

    def _read_animation(
        self,
        opened: Image.Image,
        fmt: str,
        orientation: Orientation,
        n_frames: int,
        on_frame: OnFrame,
        budget: "DecodeBudget",
    ) -> Scan:
        """An animated image is sampled like a video: evenly spread frames, each stamped
        with the sum of the display times (ms) of the frames before it, handed to `on_frame`
        and not kept."""
        frame_count: int = opened.n_frames
        # Until the frames are read, the first one's delay stands for all (GIF's vary a little).
        delay_ms = opened.info.get("duration") or 0
        self.limits.check_length(frame_count, frame_count * delay_ms / 1000 or None)
        wanted = sample_indices(frame_count, n_frames)
        clock_ms, keep, size = 0.0, set(wanted), (0, 0)
        for index in range(wanted[-1] + 1):
            opened.seek(index)  # Pillow composes each frame over the last: read them in order
            opened.load()  # WebP sets the frame's duration only as it decodes it
            budget.check(*opened.size)
            if index in keep:
                image = orientation.apply(rgb_image(opened))
                size = (image.shape[1], image.shape[0])
                on_frame(Frame(index, clock_ms / 1000, image))
            clock_ms += opened.info.get("duration") or 0
        # The last frame is always sampled, so the clock has run through the whole animation.
        duration = clock_ms / 1000 if clock_ms > 0 else None
        fps = frame_count / duration if duration else None
        facts = orientation.facts()
        info = MediaInfo("video", fmt, *size, fps, frame_count, duration, *facts)
        return Scan(info, wanted)

    def _read_video(
        self, path: Path, fmt: str, n_frames: int, on_frame: OnFrame, budget: DecodeBudget
    ) -> Scan:
        size: tuple[int, int] | None = None

        def hand_over(frame: Frame) -> None:
            nonlocal size
            size = size or (frame.image.shape[1], frame.image.shape[0])
            on_frame(frame)

        with self._open_video(path, fmt) as video:
            header = video.header
            if header.width <= 0 or header.height <= 0:
                raise UndecodableMedia(f"the {fmt} video has no frame size")
            if header.codec not in VIDEO_CODECS:
                raise UnsupportedMedia(f"the {header.codec} video codec is not supported")
            self.limits.check_size(header.width, header.height)
            counted = None
            if header.frame_count is None:
                counted = self._count_frames(video, budget.stop)
            else:
                self.limits.check_length(header.frame_count, header.duration_s(header.frame_count))
        if counted is not None:
            # Counting read the stream to its end: decoding starts again from the start.
            with self._open_video(path, fmt) as video:
                indices, ended_at = decode_wanted(
                    video, sample_indices(counted, n_frames), hand_over, budget, counted
                )
        else:
            with self._open_video(path, fmt) as video:
                wanted = sample_indices(header.frame_count, n_frames)
                indices, ended_at = decode_wanted(video, wanted, hand_over, budget)
        frame_count = (counted or header.frame_count or 0) if ended_at is None else ended_at
        if ended_at is not None and len(indices) < min(n_frames, ended_at):
            # The container overstated its length (a truncated file). Now that the real length
            # is known, decode again for an even spread rather than keep only the early frames.
            with self._open_video(path, fmt) as video:
                indices, _ = decode_wanted(
                    video, sample_indices(ended_at, n_frames), hand_over, budget
                )
        if not indices or size is None:
            raise UndecodableMedia(f"no frame of the {fmt} video could be decoded")
        duration = header.duration_s(frame_count)
        facts = video.orientation.facts()
        info = MediaInfo("video", fmt, *size, header.fps, frame_count, duration, *facts)
        return Scan(info, indices)

    def _count_frames(self, video: VideoFile, stop: Callable[[], None]) -> int:
        """A stream of unknown length: its packets counted, the limits enforced as they come."""
        max_frames = self.limits.max_frame_count
        if video.header.fps:
            max_frames = min(max_frames, int(self.limits.max_duration_s * video.header.fps))
        try:
            return count_packets(video, max_frames, stop)
        except FrameLimit:
            raise MediaLimitExceeded(
                f"the video is longer than the limits ({self.limits.max_frame_count} frames, "
                f"{self.limits.max_duration_s:g} s)"
            ) from None

    @contextmanager
    def _open_video(self, path: Path, fmt: str) -> Iterator[VideoFile]:
        try:
            opened = open_video(path, DEMUXERS[fmt], self.limits.ffmpeg_max_pixels, self.hwaccel)
            with opened as video:
                yield video
        except DecodeError as exc:
            raise UndecodableMedia(f"the {fmt} video: {exc}") from exc
        except (av.FFmpegError, ValueError) as exc:
            # ValueError: PyAV's reading of a damaged header (a rate or size it cannot hold).
            raise UndecodableMedia(f"could not decode the {fmt} video: {exc}") from exc


def rgb_image(image: Image.Image) -> np.ndarray:
    """Any Pillow mode as 8-bit RGB, HxWx3: 16-bit grey scaled (Pillow's own conversion
    clips it to white), transparency laid over white (as a browser shows it on a page),
    palette, CMYK and grey expanded."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey PNG (Pillow reads some as 32-bit "I"): scale 0..65535 to 0..255.
        grey = np.asarray(image).astype(np.uint32)
        grey = ((grey.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))
