"""preprocess.media against the real clips and images in ../shared and files made from them."""

import fnmatch
import re
import struct
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess.media import (
    MediaError,
    MediaLimitExceeded,
    MediaLimits,
    MediaReader,
    UndecodableMedia,
    UnsupportedMedia,
    sample_indices,
    sniff,
)
from preprocess.video import MAX_NON_REFERENCE_RUN
from tests.conftest import MEDIA, SHARED

CLIPS = sorted((MEDIA / "videos").glob("*/*.mp4"))
IMAGES = sorted((MEDIA / "images").rglob("*.jpg"))
N = 32
# A table row of ../shared/README.md: | fake/name.mp4 (note) | 1280x720 | 134 | 30 | 4.5 |
ROW = re.compile(
    r"^\| ((?:real|fake)/\S+?)(?: \(.*\))? \| (\d+)x(\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$"
)


def readme_table() -> dict[Path, tuple[int, int, int, float, float]]:
    """Each clip's (width, height, frames, fps, seconds) as ../shared/README.md lists it."""
    table = {}
    for line in (SHARED / "README.md").read_text().splitlines():
        if match := ROW.match(line.strip()):
            pattern = match[1].replace("…", "*")  # long names are elided in the table
            (clip,) = [
                c for c in CLIPS if fnmatch.fnmatch(str(c.relative_to(MEDIA / "videos")), pattern)
            ]
            table[clip] = (
                int(match[2]),
                int(match[3]),
                int(match[4]),
                float(match[5]),
                float(match[6]),
            )
    return table


TABLE = readme_table()


def test_the_readme_table_lists_every_clip() -> None:
    assert len(CLIPS) == 19
    assert set(TABLE) == set(CLIPS)


# --- sniff ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CLIPS + IMAGES, ids=lambda p: p.name)
def test_sniff_every_shared_file(path: Path) -> None:
    assert sniff(path) == ("mp4" if path.suffix == ".mp4" else "jpeg")


def test_sniff_ignores_the_name(tmp_path: Path) -> None:
    jpeg_named_mp4 = tmp_path / "photo.mp4"
    jpeg_named_mp4.write_bytes((MEDIA / "images/real/face_recognition_obama.jpg").read_bytes())
    mp4_named_jpg = tmp_path / "clip.jpg"
    mp4_named_jpg.write_bytes(CLIPS[0].read_bytes()[:4096])
    assert sniff(jpeg_named_mp4) == "jpeg"
    assert sniff(mp4_named_jpg) == "mp4"


@pytest.mark.parametrize(
    "ext, data",
    [
        ("png", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()),
        ("webp", cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8))[1].tobytes()),
        ("mov", b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  "),
        ("mov", b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat"),  # QuickTime before ftyp existed
        ("mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"),
        ("gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"),
        ("gif", b"GIF87a\x01\x00\x01\x00\x80\x00\x00"),
    ],
)
def test_sniff_other_formats(tmp_path: Path, ext: str, data: bytes) -> None:
    (path := tmp_path / "upload").write_bytes(data)
    assert sniff(path) == ext


BAD_BYTES = {
    "empty": b"",
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": b"hello, this is not a video\n" * 10,
    "truncated mp4 header": CLIPS[0].read_bytes()[:10],
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    "m4a audio": b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom",
    "ebml, unknown doctype": b"\x1a\x45\xdf\xa3\x87\x42\x82\x84abcd",
    "ebml, truncated": b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01",
    "riff wave": b"RIFF\x24\x00\x00\x00WAVEfmt ",
    "pdf": b"%PDF-1.7\n",
}


@pytest.mark.parametrize("data", BAD_BYTES.values(), ids=BAD_BYTES.keys())
def test_sniff_rejects(tmp_path: Path, data: bytes) -> None:
    (path := tmp_path / "upload.mp4").write_bytes(data)
    with pytest.raises(UnsupportedMedia) as error:
        sniff(path)
    assert error.value.code == "unsupported_media"
    with pytest.raises(UnsupportedMedia):
        MediaReader().read(path, N)


def test_error_codes() -> None:
    assert issubclass(UnsupportedMedia, MediaError)
    # Codes only: the gateway's catalogue gives their statuses (tests/test_errors.py).
    assert (UndecodableMedia.code, MediaLimitExceeded.code) == (
        "undecodable_media",
        "media_limit_exceeded",
    )
    assert UndecodableMedia("a reason").message == "a reason"


# --- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("count, n", [(300, 32), (751, 32), (33, 32), (2, 2), (1000, 7)])
def test_sample_indices_spread_evenly(count: int, n: int) -> None:
    indices = sample_indices(count, n)
    assert len(indices) == n == len(set(indices))
    assert indices == sorted(indices)
    assert (indices[0], indices[-1]) == (0, count - 1)
    gaps = np.diff(indices)
    assert gaps.max() - gaps.min() <= 1


def test_sample_indices_edges() -> None:
    assert sample_indices(10, 32) == list(range(10))
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(5, 1) == [0]
    assert sample_indices(0, 5) == sample_indices(5, 0) == []


# --- the shared clips and images ----------------------------------------------------------


@pytest.mark.stack
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_read_every_shared_clip(clip: Path) -> None:
    width, height, count, fps, seconds = TABLE[clip]
    media = MediaReader(MediaLimits()).read(clip, N)
    info = media.info
    assert (info.kind, info.format, info.width, info.height) == ("video", "mp4", width, height)
    assert info.frame_count == count
    assert info.fps == pytest.approx(fps, abs=0.03)
    assert info.duration_s == pytest.approx(seconds, abs=0.06)

    # Non-reference frames are skipped: each planned frame is the first decoded at or after it.
    planned, indices = sample_indices(count, N), [f.index for f in media.frames]
    assert len(indices) == N == len(set(indices)) and indices == sorted(indices)
    gaps = [i - p for i, p in zip(indices, planned, strict=True)]
    assert all(0 <= gap <= MAX_NON_REFERENCE_RUN for gap in gaps[:-1])
    assert count - 1 - MAX_NON_REFERENCE_RUN <= indices[-1] <= count - 1
    for frame in media.frames:
        assert frame.timestamp_s == pytest.approx(frame.index / info.fps)
        assert frame.image.shape == (height, width, 3)
        assert frame.image.dtype == np.uint8


def assert_full_decode_gives(clip: Path, frames: list) -> None:
    """Each frame is, pixel for pixel, that frame of OpenCV's full sequential decode (RGB)."""
    wanted = {frame.index: frame.image for frame in frames}
    capture = cv2.VideoCapture(str(clip))
    for index in range(max(wanted) + 1):
        ok, bgr = capture.read()
        assert ok
        if index in wanted:
            assert np.array_equal(wanted[index], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()


def test_frames_are_rgb_in_decoding_order() -> None:
    clip = MEDIA / "videos/real/face_recognition_short_hamilton_clip.mp4"
    assert_full_decode_gives(clip, MediaReader().read(clip, 4).frames)


def test_skipping_non_reference_frames_keeps_their_pixels() -> None:
    """A B-frame clip: non-reference frames are skipped (the planned indices move), and the
    reference frames decoded are exactly what a full sequential decode gives."""
    clip = MEDIA / "videos/fake/dfdc_widuwuoiur.mp4"
    media = MediaReader().read(clip, 16)
    assert [f.index for f in media.frames] != sample_indices(media.info.frame_count, 16)
    assert_full_decode_gives(clip, media.frames)


def test_read_image() -> None:
    path = MEDIA / "images/real/face_recognition_obama.jpg"
    media = MediaReader().read(path, N)
    assert asdict(media.info) == {
        "kind": "image",
        "format": "jpeg",
        "width": 910,
        "height": 1137,
        "fps": None,
        "frame_count": 1,
        "duration_s": None,
        "rotation": 0,
        "flipped": False,
    }
    (frame,) = media.frames
    assert (frame.index, frame.timestamp_s) == (0, 0.0)
    assert np.array_equal(frame.image, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_read_encoded_images(tmp_path: Path, ext: str) -> None:
    bgr = cv2.imread(str(MEDIA / "images/real/face_recognition_two_people.jpg"))
    (path := tmp_path / "upload.bin").write_bytes(
        cv2.imencode(f".{ext}", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    )
    media = MediaReader().read(path, N)
    assert (media.info.format, media.info.width, media.info.height) == (ext, 1126, 661)
    assert np.array_equal(media.frames[0].image, bgr[..., ::-1])  # both lossless


@pytest.mark.parametrize("size", [100, 20_000])
def test_truncated_image(tmp_path: Path, size: int) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes((MEDIA / "images/real/face_recognition_obama.jpg").read_bytes()[:size])
    with pytest.raises(UndecodableMedia):
        MediaReader().read(path, N)


# --- other containers, written here from a real clip --------------------------------------

SOURCE_FRAMES = 20
CONTAINERS = [("avi", "MJPG"), ("mkv", "XVID"), ("webm", "VP80"), ("mov", "mp4v"), ("mp4", "mp4v")]


@pytest.fixture(scope="module")
def source_frames() -> list[np.ndarray]:
    """The first frames of a real clip, BGR, shrunk to 320x180 to keep encoding quick."""
    capture = cv2.VideoCapture(str(MEDIA / "videos/real/face_recognition_short_hamilton_clip.mp4"))
    frames = [capture.read()[1] for _ in range(SOURCE_FRAMES)]
    capture.release()
    return [cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in frames]


def write_clip(path: Path, fourcc: str, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (320, 180))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc} into {path.suffix}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, source_frames: list[np.ndarray]) -> dict:
    folder = tmp_path_factory.mktemp("containers")
    return {
        ext: write_clip(folder / f"clip.{ext}", fourcc, source_frames) for ext, fourcc in CONTAINERS
    }


@pytest.mark.parametrize("ext", [ext for ext, _ in CONTAINERS])
def test_read_other_containers(clips: dict, source_frames: list[np.ndarray], ext: str) -> None:
    assert sniff(clips[ext]) == ext
    media = MediaReader().read(clips[ext], 8)
    assert (media.info.format, media.info.width, media.info.height) == (ext, 320, 180)
    assert (media.info.frame_count, media.info.fps) == (SOURCE_FRAMES, 25.0)
    assert [f.index for f in media.frames] == sample_indices(SOURCE_FRAMES, 8)
    # Lossy codecs, but RGB: much nearer the source in RGB order than in BGR order.
    frame = media.frames[-1]
    source = source_frames[frame.index].astype(float)
    rgb_error = np.abs(frame.image - source[..., ::-1]).mean()
    bgr_error = np.abs(frame.image - source).mean()
    assert rgb_error < 4 and rgb_error < bgr_error / 3


def strip_duration(path: Path, out: Path) -> Path:
    """A copy of a Matroska/WebM file whose Segment Info has no Duration, like a browser's
    MediaRecorder output: the container then reports no usable frame count."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89", 0, 1024)  # the Duration element's ID, then its size: 8 bytes
    assert at > 0 and data[at + 2] == 0x88
    data[at : at + 2] = b"\x44\x88"  # an unknown ID: the demuxer skips the element
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("ext", ["mkv", "webm"])
@pytest.mark.parametrize("n", [8, 4, 32])
def test_unknown_frame_count(clips: dict, tmp_path: Path, ext: str, n: int) -> None:
    path = strip_duration(clips[ext], tmp_path / f"live.{ext}")
    capture = cv2.VideoCapture(str(path))
    reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    capture.release()
    assert not 0 < reported < 2**31, "the container still reports a frame count"

    media = MediaReader().read(path, n)
    indices = [f.index for f in media.frames]
    assert media.info.frame_count == SOURCE_FRAMES
    assert media.info.duration_s == pytest.approx(SOURCE_FRAMES / 25)
    assert len(indices) == min(n, SOURCE_FRAMES) == len(set(indices))
    assert indices == sorted(indices)
    assert indices[0] == 0 and indices[-1] >= SOURCE_FRAMES - 1 - SOURCE_FRAMES // n
    assert [f.timestamp_s for f in media.frames] == pytest.approx([i / 25 for i in indices])


def test_unknown_frame_count_still_limited(clips: dict, tmp_path: Path) -> None:
    path = strip_duration(clips["mkv"], tmp_path / "live.mkv")
    with pytest.raises(MediaLimitExceeded):
        MediaReader(MediaLimits(max_frame_count=10)).read(path, 4)
    with pytest.raises(MediaLimitExceeded):
        MediaReader(MediaLimits(max_duration_s=0.5)).read(path, 4)


def test_frame_count_overstated(clips: dict, tmp_path: Path) -> None:
    """A cut AVI still claims all its frames in its header: the frames that decode are
    re-sampled evenly, not just the ones planned before the cut."""
    data = clips["avi"].read_bytes()
    (path := tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    media = MediaReader().read(path, 8)
    assert 0 < media.info.frame_count < SOURCE_FRAMES
    indices = [f.index for f in media.frames]
    assert indices == sample_indices(media.info.frame_count, 8)


@pytest.mark.parametrize("kib", [1, 64, 512])
def test_truncated_mp4(tmp_path: Path, kib: int) -> None:
    (path := tmp_path / "cut.mp4").write_bytes(CLIPS[0].read_bytes()[: kib * 1024])
    assert sniff(path) == "mp4"
    try:
        media = MediaReader().read(path, N)
    except UndecodableMedia:
        return  # these clips keep their index (moov) at the end: nothing to play
    assert 0 < len(media.frames) <= N


def test_a_codec_ffmpeg_does_not_know(tmp_path: Path) -> None:
    """Matroska whose CodecID was damaged (found by the fuzz test): a clean 422, no crash."""
    mjpg = cv2.VideoWriter_fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(tmp_path / "ok.mkv"), mjpg, 25, (64, 48))
    for level in range(5):
        writer.write(np.full((48, 64, 3), level * 40, np.uint8))
    writer.release()
    data = (tmp_path / "ok.mkv").read_bytes()
    assert b"V_MJPEG" in data
    (path := tmp_path / "bad.mkv").write_bytes(data.replace(b"V_MJPEG", b"V\x00MJPEG"))
    with pytest.raises(UndecodableMedia, match="no decoder"):
        MediaReader().read(path, 4)


def test_mp4_header_then_garbage(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (path := tmp_path / "bad.mp4").write_bytes(CLIPS[0].read_bytes()[:32] + noise)
    with pytest.raises(UndecodableMedia):
        MediaReader().read(path, N)


# --- limits: checked from the header, before any frame is decoded --------------------------


def blank_frames(clip: Path, out: Path) -> Path:
    """A copy of `clip` with its media data zeroed: the header (moov) still describes the clip,
    but no frame decodes. An error other than UndecodableMedia proves nothing was decoded."""
    data = bytearray(clip.read_bytes())
    at = data.find(b"mdat") - 4
    (size,) = struct.unpack(">I", data[at : at + 4])
    data[at + 8 : at + size] = bytes(size - 8)
    out.write_bytes(data)
    return out


@pytest.mark.parametrize(
    "clip, limits",
    [
        ("fake/dfdc_widuwuoiur.mp4", MediaLimits(max_width=1280, max_height=720)),  # 1920x1080
        ("fake/dfdc_brtujopkby.mp4", MediaLimits(max_width=1280, max_height=720)),  # 1080x1920
        ("real/ffpp_c23_original_519.mp4", MediaLimits(max_duration_s=10)),  # 30 s
        ("real/ffpp_c23_original_519.mp4", MediaLimits(max_frame_count=750)),  # 751 frames
    ],
)
def test_limits_reject_before_decoding(tmp_path: Path, clip: str, limits: MediaLimits) -> None:
    path = blank_frames(MEDIA / "videos" / clip, tmp_path / "blank.mp4")
    with pytest.raises(UndecodableMedia):
        MediaReader(MediaLimits()).read(path, N)
    with pytest.raises(MediaLimitExceeded) as error:
        MediaReader(limits).read(path, N)
    assert error.value.code == "media_limit_exceeded"


def test_limits_allow_either_orientation() -> None:
    portrait_720p = MEDIA / "videos/fake/dfdc_yhffcuhhjy.mp4"  # 720x1280
    media = MediaReader(MediaLimits(max_width=1280, max_height=720)).read(portrait_720p, 2)
    assert (media.info.width, media.info.height) == (720, 1280)
    limits = MediaLimits()
    for width, height in [(3840, 2160), (2160, 3840), (1080, 1920)]:
        limits.check_size(width, height)
    for width, height in [(4096, 2160), (2161, 3840)]:
        with pytest.raises(MediaLimitExceeded):
            limits.check_size(width, height)


def test_image_limits() -> None:
    with pytest.raises(MediaLimitExceeded):
        MediaReader(MediaLimits(max_width=640, max_height=480)).read(
            MEDIA / "images/real/face_recognition_obama.jpg", 1
        )


def test_n_frames_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MediaReader().read(CLIPS[0], 0)


def test_a_hardware_decoder_that_cannot_open_falls_back_to_the_same_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GATEWAY_VIDEO_HWACCEL=cuda (NVDEC) on a machine without the device: every video is
    still read, frame for frame as on the CPU, and the fallback is said once."""
    from preprocess import video

    if not video.hwaccel_offered("cuda"):
        pytest.skip("this PyAV's FFmpeg has no CUDA hardware decoder to try")
    if Path("/dev/nvidia0").exists():
        pytest.skip("an NVIDIA device is present: NVDEC opens (the GPU bench measures it)")
    video._fell_back.discard("cuda")
    clip = CLIPS[0]
    plain = MediaReader().read(clip, 4)
    with caplog.at_level("WARNING", logger="preprocess.video"):
        hardware = MediaReader(hwaccel="cuda").read(clip, 4)
        MediaReader(hwaccel="cuda").read(clip, 4)
    assert hardware.info == plain.info
    assert [f.index for f in hardware.frames] == [f.index for f in plain.frames]
    assert all(
        np.array_equal(a.image, b.image) for a, b in zip(hardware.frames, plain.frames, strict=True)
    )
    said = [r.getMessage() for r in caplog.records if "decoding on the CPU" in r.getMessage()]
    assert len(said) == 1, said  # two readers, each opening the file more than once: said once
