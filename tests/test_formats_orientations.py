"""Real-world uploads judged upright, in every pixel format (issue 12).

Every file here is made in the test, with FFmpeg (Debian's `ffmpeg`; PyAV's FFmpeg where
the CLI cannot write a display matrix with flips) or Pillow where FFmpeg cannot write the
format (CMYK JPEG, EXIF tags, alpha over noise), from a shared fake clip and a shared photo.
Each variant is checked twice:
- in preprocess: the frames decoded are those of the upright, plain 8-bit picture (and, for
  video, those FFmpeg's own rgb24 conversion gives for the same file);
- end to end, on a real gateway over the lite Triton: the score is within a stated tolerance
  of the upright, plain 8-bit original's, with faces in the same frames.
"""

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from gateway.server.schemas import DetectAnswer
from preprocess.media import Media, MediaReader
from preprocess.orientation import ALL, Orientation, from_display_matrix, from_exif
from tests.conftest import FAKE_CLIP, Gateway, write_results
from tests.stack import ok_answer

# The full tier only (make test): ffmpeg makes its media; a real Triton scores it.
pytestmark = pytest.mark.stack


CLIP = FAKE_CLIP  # 640x480, lite: 0.95 fake
CLIP_FRAMES = 12  # frames cut from the clip: encoding every variant stays at a few seconds
FRAMES = 4  # frames sampled per request
ROTATION_TOLERANCE = 0.02  # the bound on a rotated or mirrored upload's score
FORMAT_TOLERANCE = 0.03  # pixel formats: a lossy re-encode moves a score by a little
# Mean absolute difference (0-255) to the plain 8-bit picture: a lossy re-encode costs ~1-2;
# a misread range or matrix costs 5-15, a misread bit depth or orientation far more.
PIXEL_TOLERANCE = 3.0
# ...and to FFmpeg's own rgb24 conversion of the same file (another swscale version).
FFMPEG_TOLERANCE = 0.5
READER = MediaReader()
SCORES: dict[str, float | None] = {}  # written to results/reliability.json


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True
    )


def ffmpeg_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """FFmpeg's own decode of `path` as rgb24 frames (no autorotation)."""
    command = ["ffmpeg", "-loglevel", "error", "-noautorotate", "-i", str(path)]
    out = subprocess.run(
        [*command, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def read(path: Path) -> Media:
    return READER.read(path, FRAMES)


def stacked(media: Media) -> np.ndarray:
    return np.stack([f.image for f in media.frames])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("made")


@pytest.fixture(scope="module")
def upright(made: Path) -> Path:
    """The original: the clip's first frames as plain 8-bit H.264 (BT.709, limited range)."""
    path = made / "upright.mp4"
    ffmpeg("-i", CLIP, "-frames:v", CLIP_FRAMES, "-an", *x264("bt709"), path)
    return path


def x264(matrix: str, pix_fmt: str = "yuv420p", colour_range: str = "tv") -> list[str]:
    """H.264 near-losslessly, the frame converted with and tagged by `matrix` and range."""
    tag = "smpte170m" if matrix == "bt601" else matrix
    return [
        *("-vf", f"scale=out_color_matrix={matrix}:out_range={colour_range}"),
        *("-colorspace", tag, "-color_range", colour_range),
        *("-c:v", "libx264", "-crf", "10", "-preset", "veryfast", "-pix_fmt", pix_fmt),
    ]


# --- orientation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turned:
    """A clip stored turned by `stored` (an FFmpeg filter), with a display matrix (rotation
    counter-clockwise, then mirrors, as FFmpeg's -display_rotation/-display_hflip) or the
    legacy `rotate` tag that turns it back: a phone's file."""

    stored: str
    matrix: tuple[int, bool, bool] | None  # (degrees ccw, hflip, vflip)
    expected: Orientation
    tag: str | None = None
    suffix: str = "mp4"


TURNED = {
    # As a phone held upright writes it: the sensor's landscape frames, "turn 90 clockwise".
    "portrait phone, 90": Turned("transpose=cclock", (-90, False, False), Orientation(90)),
    "180": Turned("hflip,vflip", (180, False, False), Orientation(180)),
    "270": Turned("transpose=clock", (90, False, False), Orientation(270)),
    "mirror": Turned("hflip", (0, True, False), Orientation(0, True)),
    "mirror top-bottom": Turned("vflip", (0, False, True), Orientation(180, True)),
    "mirror, 90": Turned("hflip,transpose=clock", (90, True, False), Orientation(90, True)),
    "mirror, 270": Turned("hflip,transpose=cclock", (-90, True, False), Orientation(270, True)),
    "legacy rotate tag, mkv": Turned("transpose=cclock", None, Orientation(90), "90", "mkv"),
}


def with_display_matrix(source: Path, target: Path, turned: Turned) -> None:
    """`source`'s packets unchanged, in a container whose stream says how to display them."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        if turned.matrix is not None:
            degrees, hflip, vflip = turned.matrix
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        if turned.tag is not None:
            stream.metadata["rotate"] = turned.tag  # Matroska writes it as a ROTATE tag
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)


@pytest.fixture(scope="module")
def turned_clip(made: Path, upright: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        turned = TURNED[name]
        path = made / f"turned-{list(TURNED).index(name)}.{turned.suffix}"
        if not path.exists():
            stored = made / f"stored-{list(TURNED).index(name)}.mp4"
            ffmpeg("-i", upright, "-vf", turned.stored, "-c:v", "libx264", "-crf", "10", stored)
            with_display_matrix(stored, path, turned)
        return path

    yield make


def test_each_orientation_is_one_display_matrix_and_back() -> None:
    """apply() moves pixels where matrix() says FFmpeg's display matrix moves points, and
    from_display_matrix reads it back: for all eight orientations."""
    image = np.arange(2 * 3).reshape(2, 3, 1)  # every pixel distinct, not square
    q, p = np.mgrid[0:2, 0:3].reshape(2, -1)
    for orientation in ALL:
        turned = orientation.apply(image)
        x, y = orientation.matrix() @ np.stack([p, q])
        x, y = x - x.min(), y - y.min()  # the display's translation: back into the picture
        np.testing.assert_array_equal(turned[y, x, 0], image[q, p, 0])
        a, c, b, d = orientation.matrix().ravel() * 65536
        assert from_display_matrix([a, b, 0, c, d, 0, 0, 0, 1 << 30]) == orientation


@pytest.mark.parametrize("tag", range(1, 9))
def test_exif_orientations_turn_as_pillow_does(tag: int) -> None:
    image = Image.fromarray(np.random.default_rng(tag).integers(0, 255, (4, 6, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = tag
    image.info["exif"] = exif.tobytes()
    expected = np.array(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(from_exif(tag).apply(np.array(image)), expected)


@pytest.mark.parametrize("name", TURNED)
def test_a_turned_clip_decodes_upright(
    turned_clip: Callable[[str], Path], upright: Path, name: str
) -> None:
    original, turned = read(upright), read(turned_clip(name))
    assert (turned.info.rotation, turned.info.flipped) == TURNED[name].expected.facts()
    assert (turned.info.width, turned.info.height) == (original.info.width, original.info.height)
    assert [f.index for f in turned.frames] == [f.index for f in original.frames]
    assert mean_difference(stacked(turned), stacked(original)) < PIXEL_TOLERANCE


@pytest.mark.parametrize("tag", [3, 6, 8, 2, 5, 7])
def test_an_exif_turned_photo_decodes_upright(made: Path, tag: int) -> None:
    upright = photo_rgb(made)
    stored = made / f"exif-{tag}.png"  # PNG: lossless, so the pixels come back exactly
    inverse = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[tag]  # the tag that undoes `tag`
    image = Image.fromarray(from_exif(inverse).apply(upright))
    exif = image.getexif()
    exif[0x0112] = tag
    image.save(stored, exif=exif)
    media = read(stored)
    np.testing.assert_array_equal(media.frames[0].image, upright)
    assert (media.info.rotation, media.info.flipped) == from_exif(tag).facts()


# --- pixel formats: video -----------------------------------------------------------------------

# name -> (FFmpeg output options, container suffix). Each made from the upright clip.
X265 = "-c:v libx265 -crf 10 -colorspace bt709 -x265-params log-level=error"
VP9 = "-c:v libvpx-vp9 -crf 10 -b:v 0 -colorspace bt709 -deadline realtime -cpu-used 8"
AV1 = "-c:v libsvtav1 -crf 10 -preset 12 -colorspace bt709 -svtav1-params verbosity=0"
VIDEO_FORMATS = {
    "bt601 limited": (x264("bt601"), "mp4"),
    "bt709 full range": (x264("bt709", colour_range="pc"), "mp4"),
    "yuvj420p (jpeg range)": (x264("bt601", "yuvj420p", "pc"), "mp4"),
    "4:2:2": (x264("bt709", "yuv422p"), "mp4"),
    "4:4:4": (x264("bt709", "yuv444p"), "mp4"),
    "hevc main10": (f"{X265} -pix_fmt yuv420p10le -tag:v hvc1".split(), "mp4"),
    "hevc main12": (f"{X265} -pix_fmt yuv420p12le".split(), "mkv"),
    "vp9 profile 2 (10-bit)": (f"{VP9} -pix_fmt yuv420p10le".split(), "webm"),
    "vp9 with alpha": (f"{VP9} -pix_fmt yuva420p".split(), "webm"),
    "av1 10-bit": (f"{AV1} -pix_fmt yuv420p10le".split(), "mkv"),
}


@pytest.fixture(scope="module")
def video_variant(made: Path, upright: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        options, suffix = VIDEO_FORMATS[name]
        path = made / f"format-{list(VIDEO_FORMATS).index(name)}.{suffix}"
        if not path.exists():
            ffmpeg("-i", upright, *options, path)
        return path

    yield make


@pytest.mark.parametrize("name", VIDEO_FORMATS)
def test_every_pixel_format_decodes_to_the_8bit_picture(
    video_variant: Callable[[str], Path], upright: Path, name: str
) -> None:
    path = video_variant(name)
    original, variant = read(upright), read(path)
    frames = stacked(variant)
    # The same frames as FFmpeg's own conversion (which honours the file's range and matrix)...
    width, height = variant.info.width, variant.info.height
    reference = ffmpeg_rgb(path, width, height)[[f.index for f in variant.frames]]
    assert mean_difference(frames, reference) < FFMPEG_TOLERANCE
    # ...and the picture of the plain 8-bit original, not a clipped or shifted one.
    assert mean_difference(frames, stacked(original)) < PIXEL_TOLERANCE


# --- pixel formats: images -----------------------------------------------------------------------


def photo(made: Path) -> Path:
    """The photo: a still of the clip (lossless), so that it too scores as a fake."""
    path = made / "still.png"
    if not path.exists():
        ffmpeg("-i", CLIP, "-frames:v", "1", path)
    return path


def photo_rgb(made: Path) -> np.ndarray:
    return np.array(Image.open(photo(made)).convert("RGB"))


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(rgb).convert("L").convert("RGB"))


def with_alpha_margin(rgb: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """An RGBA picture whose outer eighth is transparent over random colours, and the same
    picture as a browser shows it: that margin white."""
    height, width = rgb.shape[:2]
    alpha = np.zeros((height, width), np.uint8)
    alpha[height // 8 : -height // 8, width // 8 : -width // 8] = 255
    noise = np.random.default_rng(0).integers(0, 255, rgb.shape, np.uint8)
    under = np.where(alpha[..., None] == 255, rgb, noise)
    shown = np.where(alpha[..., None] == 255, rgb, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([under, alpha]), "RGBA"), shown


def image_variant(name: str, made: Path) -> tuple[Path, Path, float]:
    """(the file, the same picture as a plain 8-bit RGB file, the tolerance between their
    decoded pixels in mean 0-255 levels)."""
    rgb, source = photo_rgb(made), photo(made)  # source: an 8-bit RGB PNG
    path = made / f"{name.replace(' ', '-')}"
    reference = made / f"{path.name}-8bit.png"
    if name == "16-bit grey png":  # FFmpeg widens 8 bits to 16 exactly (v * 257)
        ffmpeg("-i", source, "-pix_fmt", "gray", grey8 := made / "grey8.png")
        ffmpeg("-i", grey8, "-pix_fmt", "gray16be", path := path.with_suffix(".png"))
        ffmpeg("-i", grey8, "-pix_fmt", "rgb24", reference)
        return path, reference, 0.0
    if name == "16-bit rgb png":  # widened exactly here: swscale's rgb24 -> rgb48 rounds
        (raw := made / "rgb48.raw").write_bytes((rgb.astype(">u2") * 257).tobytes())
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        ffmpeg(
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb48be",
            "-s",
            size,
            "-i",
            raw,
            "-c:v",
            "png",
            path := path.with_suffix(".png"),
        )
        return path, source, 0.0
    if name == "palette png":
        palette = "split[a][b];[a]palettegen[p];[b][p]paletteuse"
        ffmpeg("-i", source, "-vf", palette, "-pix_fmt", "pal8", path := path.with_suffix(".png"))
        ffmpeg("-i", path, "-pix_fmt", "rgb24", reference)  # FFmpeg reads the palette
        return path, reference, 0.0
    if name == "grey jpeg":  # against a colour JPEG of the same grey picture
        grey = Image.fromarray(rgb).convert("L")
        grey.save(path := path.with_suffix(".jpg"), quality=95)
        grey.convert("RGB").save(reference := reference.with_suffix(".jpg"), quality=95)
        return path, reference, 1.0
    if name == "cmyk jpeg":
        Image.fromarray(rgb).convert("CMYK").save(path := path.with_suffix(".jpg"), quality=95)
        Image.fromarray(rgb).save(reference := reference.with_suffix(".jpg"), quality=95)
        return path, reference, PIXEL_TOLERANCE
    if name == "rgba png":
        rgba, shown = with_alpha_margin(rgb)
        rgba.save(path := path.with_suffix(".png"))
        Image.fromarray(shown).save(reference)
        return path, reference, 0.0
    raise AssertionError(name)


IMAGE_FORMATS = [
    "16-bit grey png",
    "16-bit rgb png",
    "palette png",
    "grey jpeg",
    "cmyk jpeg",
    "rgba png",
]


@pytest.mark.parametrize("name", IMAGE_FORMATS)
def test_every_image_mode_decodes_to_the_8bit_picture(made: Path, name: str) -> None:
    path, reference, tolerance = image_variant(name, made)
    media = read(path)
    assert media.info.kind == "image"
    expected = np.array(Image.open(reference).convert("RGB"))
    assert mean_difference(media.frames[0].image, expected) <= tolerance


# --- animated images: sampled like a video --------------------------------------------------------

ANIMATIONS = {
    "animated gif": ["-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse", "-f", "gif"],
    "animated webp": ["-c:v", "libwebp_anim", "-lossless", "1", "-loop", "0", "-f", "webp"],
}


@pytest.fixture(scope="module")
def animation(made: Path, upright: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        path = made / f"{name.replace(' ', '-')}.{name.split()[-1]}"
        if not path.exists():
            ffmpeg("-i", upright, *ANIMATIONS[name], path)
        return path

    yield make


@pytest.mark.parametrize("name", ANIMATIONS)
def test_an_animated_image_is_sampled_like_a_video(
    animation: Callable[[str], Path], upright: Path, name: str
) -> None:
    original, variant = read(upright), read(animation(name))
    assert variant.info.kind == "video" and variant.info.format == name.split()[-1]
    assert variant.info.frame_count == CLIP_FRAMES
    assert [f.index for f in variant.frames] == [f.index for f in original.frames]
    assert variant.info.fps == pytest.approx(original.info.fps, rel=0.05)  # GIF: 1/100 s steps
    timestamps = [f.timestamp_s for f in variant.frames]
    assert timestamps == pytest.approx([f.timestamp_s for f in original.frames], abs=0.02)
    if name == "animated gif":  # FFmpeg reads GIF: the same frames as its decoder's
        frames = ffmpeg_rgb(animation(name), variant.info.width, variant.info.height)
        assert mean_difference(stacked(variant), frames[[f.index for f in variant.frames]]) == 0
    else:  # lossless WebP (FFmpeg 5.1 cannot decode an animated one)
        assert mean_difference(stacked(variant), stacked(original)) < PIXEL_TOLERANCE


# --- end to end: the same verdict, score and faces as the upright 8-bit original ---------------


@pytest.fixture(scope="module")
def gateway(lite_gateway: Gateway) -> Iterator[Gateway]:
    """The module's lite gateway; the scores it gave are recorded once all are in."""
    yield lite_gateway
    write_results("formats_orientations", SCORES)


def scored(gateway: Gateway, path: Path) -> DetectAnswer:
    """The gateway's answer to `path` at FRAMES frames (GatewayClient's), its score recorded."""
    answer = DetectAnswer.model_validate(
        ok_answer(gateway.client.detect_response(path, frames=FRAMES))
    )
    SCORES[path.name] = answer.score
    return answer


def faces_in(answer: DetectAnswer) -> list[int]:
    return [f.index for f in answer.frames if f.faces]


def assert_same_judgement(got: DetectAnswer, original: DetectAnswer, tolerance: float) -> None:
    assert original.score is not None and got.score is not None
    assert abs(got.score - original.score) <= tolerance, json.dumps(SCORES)
    assert got.verdict == original.verdict
    assert faces_in(got) == faces_in(original)


@pytest.fixture(scope="module")
def upright_answer(gateway: Gateway, upright: Path) -> DetectAnswer:
    answer = scored(gateway, upright)
    assert answer.verdict == "fake" and len(faces_in(answer)) == FRAMES
    return answer


@pytest.mark.parametrize("name", TURNED)
def test_a_turned_clip_is_judged_as_the_upright_one(
    gateway: Gateway, upright_answer: DetectAnswer, turned_clip: Callable[[str], Path], name: str
) -> None:
    answer = scored(gateway, turned_clip(name))
    assert_same_judgement(answer, upright_answer, ROTATION_TOLERANCE)
    assert (answer.media.rotation, answer.media.flipped) == TURNED[name].expected.facts()
    assert (answer.media.width, answer.media.height) == (640, 480)  # upright


def test_a_turned_photo_is_judged_as_the_upright_one(gateway: Gateway, made: Path) -> None:
    original = made / "photo.jpg"
    Image.open(photo(made)).save(original, quality=95)
    expected = scored(gateway, original)
    for tag, inverse in ((6, 8), (3, 3), (8, 6), (2, 2), (7, 7)):
        image = Image.fromarray(from_exif(inverse).apply(photo_rgb(made)))
        exif = image.getexif()
        exif[0x0112] = tag
        image.save(path := made / f"photo-exif-{tag}.jpg", quality=95, exif=exif)
        answer = scored(gateway, path)
        assert_same_judgement(answer, expected, ROTATION_TOLERANCE)
        assert (answer.media.rotation, answer.media.flipped) == from_exif(tag).facts()


@pytest.mark.parametrize("name", [*VIDEO_FORMATS, "animated webp"])
def test_every_pixel_format_is_judged_as_the_8bit_clip(
    gateway: Gateway,
    upright_answer: DetectAnswer,
    video_variant: Callable[[str], Path],
    animation: Callable[[str], Path],
    name: str,
) -> None:
    path = animation(name) if name in ANIMATIONS else video_variant(name)
    assert_same_judgement(scored(gateway, path), upright_answer, FORMAT_TOLERANCE)


def test_a_gif_is_judged_as_its_frames_in_plain_8bit(
    gateway: Gateway, made: Path, animation: Callable[[str], Path]
) -> None:
    """A GIF's 256 dithered colours are another picture than the clip's (the MesoNets see
    the dithering: 0.4 against 0.95), so its plain 8-bit twin is its own frames, lossless."""
    gif = animation("animated gif")
    ffmpeg("-i", gif, "-c:v", "libx264rgb", "-qp", "0", twin := made / "gif-frames.mkv")
    assert_same_judgement(scored(gateway, gif), scored(gateway, twin), FORMAT_TOLERANCE)


@pytest.mark.parametrize("name", IMAGE_FORMATS)
def test_every_image_mode_is_judged_as_the_8bit_picture(
    gateway: Gateway, made: Path, name: str
) -> None:
    path, reference, _ = image_variant(name, made)
    assert_same_judgement(scored(gateway, path), scored(gateway, reference), FORMAT_TOLERANCE)
