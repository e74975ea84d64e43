"""A report to file and hand on: one self-contained HTML page made from an answer,
and its PDF, printed by headless Chromium.

The HTML has everything inline (styles, the timeline as SVG, faces and heatmaps as
data: URLs) and a Content-Security-Policy that forbids any fetch, so it opens the
same offline, in a mail client or years later. The gateway renders it
(POST /api/report) so the page, the CLI and any client get the same report.

The answer comes from the client: check_size refuses one with more JSON values than a
report needs before it is parsed (parsing holds the interpreter: the event loop
too), check_answer one whose references do not hold (an explanation of a frame,
face, track or model the answer lacks) or whose images decode to more pixels than
the budget.
"""

import base64
import binascii
import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from PIL import Image, UnidentifiedImageError

from gateway.server import schemas
from gateway.server.verdict.explain import VOTE

TEMPLATES = Path(__file__).parent / "templates"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_S = 60.0
# Only images the gateway itself makes: a data: URL of a PNG or JPEG, nothing else.
IMAGE_URL = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/]+={0,2}")
IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
# The gateway's images are heatmaps (explain_overlay_px <= 512) and 96 px thumbnails.
IMAGE_MAX_SIDE = 2048
# The timeline's geometry, in SVG user units (it scales with the page).
PLOT_W, PLOT_H, PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 720, 220, 44, 12, 12, 34
VERDICT_WORDS = {
    "fake": "Likely fake",
    "real": "Likely real",
    "uncertain": "Uncertain",
    "no_face": "No face found",
}
# What each content credentials state means to a reader (the page says the same).
CREDENTIAL_STATES = {
    "trusted": "signed and unchanged since, by a signer this service trusts.",
    "valid": "signed and unchanged since; the signer is not one this service is set to trust.",
    "invalid": "signed, but changed after signing: what the credentials declare is not "
    "taken into account.",
}

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class ReportError(RuntimeError):
    """The PDF could not be printed (no Chromium, or it failed)."""


class AnswerError(ValueError):
    """An answer the report refuses: `code` is the API's error code (422)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ReportLimits:
    """What one report takes at most (GATEWAY_REPORT_MAX_VALUES, _IMAGE_MPX)."""

    values: int = 250_000  # JSON values (objects, lists, keys, strings, numbers)
    image_pixels: int = 64_000_000  # decoded pixels of all images together


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Timeline:
    """The vote's P(fake) per sampled frame (most fake face), in SVG coordinates."""

    path: str
    points: list[Point]
    threshold_y: float
    decisive_x: list[float]  # frames whose faces decided the verdict
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str, str]]  # x, label, text-anchor


@dataclass(frozen=True)
class ExplainedFace:
    track: int
    frame: int
    face: int
    when: str
    maps: list[schemas.Explanation]  # the vote's first, then each member's


def safe_image(url: str | None) -> str | None:
    return url if url is not None and IMAGE_URL.fullmatch(url) else None


def check_size(body: bytes, limits: ReportLimits) -> None:
    """AnswerError if the JSON may hold more values than the limit. Counted on the bytes
    (a few passes of C, no object made): every value but the first follows a comma, a
    colon or an opening bracket, so this count is never below the real one, and only
    the answer's own text (commas in a note) makes it higher."""
    bound = sum(body.count(c) for c in (b",", b":", b"[", b"{")) + 1
    if bound > limits.values:
        raise AnswerError(
            "report_over_limits",
            f"the answer has up to {bound:,} JSON values, over {limits.values:,} "
            "(frames, faces, tracks, explanations and their scores)",
        )


def check_answer(answer: schemas.DetectAnswer, limits: ReportLimits) -> None:
    """AnswerError unless the answer is one the report can render as it is: its
    references, then its images' headers."""
    check_references(answer)
    check_images(answer, limits)


def check_references(answer: schemas.DetectAnswer) -> None:
    """Every face's track, track's frame and explanation's frame, face, track and model
    is one the answer has, as in every answer the gateway writes."""
    frames = {f.index: f for f in answer.frames}
    tracks = {t.id for t in answer.tracks}
    models = {m.name for m in answer.models} | {VOTE}
    for frame in answer.frames:
        for n, face in enumerate(frame.faces):
            if face.track not in tracks:
                invalid(f"frame {frame.index}, face {n}: track {face.track} is not in tracks")
    for track in answer.tracks:
        if missing := sorted(set(track.frames) - frames.keys()):
            invalid(f"track {track.id}: frame {missing[0]} is not in frames")
    for n, e in enumerate(answer.explanations):
        where = f"explanations[{n}]"
        if e.frame not in frames:
            invalid(f"{where}: frame {e.frame} is not in frames")
        faces = frames[e.frame].faces
        if not 0 <= e.face < len(faces):
            invalid(f"{where}: frame {e.frame} has no face {e.face}")
        if faces[e.face].track != e.track:
            invalid(f"{where}: track {e.track} is not that face's ({faces[e.face].track})")
        if e.model not in models:
            invalid(f"{where}: model {e.model!r} is not in models")


def invalid(message: str) -> NoReturn:
    raise AnswerError("invalid_report", message)


def check_images(answer: schemas.DetectAnswer, limits: ReportLimits) -> None:
    """The images a report may show (heatmaps, thumbnails), by their headers: each of its
    declared format and at most IMAGE_MAX_SIDE a side, all within the pixel budget. Only
    the header is parsed: a few hundred bytes can declare a picture of gigapixels."""
    images = [(f"explanations[{n}].heatmap", e.heatmap) for n, e in enumerate(answer.explanations)]
    images += [
        (f"frame {frame.index}, face {n}: thumbnail", face.thumbnail)
        for frame in answer.frames
        for n, face in enumerate(frame.faces)
    ]
    pixels = 0
    for where, url in images:
        if safe_image(url) is None:
            continue  # not rendered (safe_image drops it)
        width, height = image_size(where, url)  # type: ignore[arg-type]
        if max(width, height) > IMAGE_MAX_SIDE:
            raise AnswerError(
                "report_over_limits",
                f"{where}: {width} x {height} px, over {IMAGE_MAX_SIDE} px a side",
            )
        pixels += width * height
        if pixels > limits.image_pixels:
            raise AnswerError(
                "report_over_limits",
                f"the images decode to over {limits.image_pixels:,} pixels",
            )


def image_size(where: str, url: str) -> tuple[int, int]:
    declared, _, data = url.removeprefix("data:image/").partition(";base64,")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            if image.format != IMAGE_FORMATS[declared]:
                invalid(f"{where}: a {image.format} image in a data:image/{declared} URL")
            return image.size
    except (binascii.Error, UnidentifiedImageError, Image.DecompressionBombError, OSError):
        invalid(f"{where}: not a readable {declared.upper()} image")


def frame_x(answer: schemas.DetectAnswer, frame: schemas.FrameResult) -> float:
    return frame.timestamp_s if answer.media.kind == "video" else float(frame.index)


def decisive_frames(answer: schemas.DetectAnswer) -> list[int]:
    """The frames of the most fake track's explained faces: those that decided the verdict."""
    if not answer.tracks or not answer.explanations:
        return []
    decisive = max(answer.tracks, key=lambda t: t.score).id
    return sorted({e.frame for e in answer.explanations if e.track == decisive})


def timeline(answer: schemas.DetectAnswer) -> Timeline | None:
    scored = [
        (frame_x(answer, f), max(x.p_fake for x in f.faces)) for f in answer.frames if f.faces
    ]
    if not scored:
        return None
    xs = [frame_x(answer, f) for f in answer.frames]
    x0 = min(xs)
    span = (max(xs) - x0) or 1.0  # one frame (or times too large to differ): no division by 0

    def sx(x: float) -> float:
        return round(PLOT_LEFT + (x - x0) / span * (PLOT_W - PLOT_LEFT - PLOT_RIGHT), 1)

    def sy(y: float) -> float:
        return round(PLOT_TOP + (1 - y) * (PLOT_H - PLOT_TOP - PLOT_BOTTOM), 1)

    points = [Point(sx(x), sy(y)) for x, y in scored]
    path = "".join(f"{'L' if n else 'M'}{p.x},{p.y}" for n, p in enumerate(points))
    index_x = {f.index: frame_x(answer, f) for f in answer.frames}
    unit = " s" if answer.media.kind == "video" else ""
    x_ticks = [
        (sx(x), f"{x:.1f}{unit}" if unit else f"#{int(x)}", anchor)
        for x, anchor in ((x0, "start"), (x0 + span, "end"))
    ]
    return Timeline(
        path=path,
        points=points,
        threshold_y=sy(answer.threshold),
        decisive_x=[sx(index_x[i]) for i in decisive_frames(answer)],
        y_ticks=[(sy(y), f"{y:.2f}") for y in (0.0, 0.25, 0.5, 0.75, 1.0)],
        x_ticks=x_ticks,
    )


def explained_faces(answer: schemas.DetectAnswer) -> list[ExplainedFace]:
    timestamps = {f.index: f.timestamp_s for f in answer.frames}
    faces: dict[tuple[int, int, int], list[schemas.Explanation]] = {}
    for e in answer.explanations:
        if safe_image(e.heatmap) is not None:
            faces.setdefault((e.track, e.frame, e.face), []).append(e)
    result = []
    for (track, frame, face), maps in faces.items():
        maps.sort(key=lambda e: (e.model != VOTE, e.model))
        when = (
            f"{timestamps.get(frame, 0.0):.2f} s"
            if answer.media.kind == "video"
            else f"frame {frame}"
        )
        result.append(ExplainedFace(track, frame, face, when, maps))
    return result


def render_html(answer: schemas.DetectAnswer, version: str, generated: datetime) -> str:
    """The report of one answer, as one self-contained HTML document."""
    return _env.get_template("report.html.j2").render(
        answer=answer,
        verdict_words=VERDICT_WORDS[answer.verdict],
        credential_states=CREDENTIAL_STATES,
        timeline=timeline(answer),
        plot={"w": PLOT_W, "h": PLOT_H, "left": PLOT_LEFT, "right": PLOT_RIGHT},
        faces=explained_faces(answer),
        decisive=decisive_frames(answer),
        version=version,
        generated=generated.isoformat(timespec="seconds"),
        faces_total=sum(len(f.faces) for f in answer.frames),
    )


def find_chromium(configured: str | None = None) -> str | None:
    """The Chromium to print with: the configured one, else the first on PATH."""
    if configured:
        return shutil.which(configured) or (configured if Path(configured).is_file() else None)
    return next((found for n in CHROMIUM_NAMES if (found := shutil.which(n))), None)


@dataclass(frozen=True)
class PdfPrinter:
    """What prints PDF reports here, found once as the gateway starts: the page hides its PDF
    button and POST /api/report?format=pdf is refused up front where `chromium` is None."""

    chromium: str | None

    @classmethod
    def find(cls, configured: str | None = None) -> "PdfPrinter":
        return cls(find_chromium(configured))

    @property
    def available(self) -> bool:
        return self.chromium is not None


def print_pdf(html: str, chromium: str | None, timeout_s: float = PDF_TIMEOUT_S) -> bytes:
    """The report printed to PDF by headless Chromium, in a throwaway profile.

    The page's own CSP forbids every fetch, so printing reaches no network."""
    if chromium is None:
        raise ReportError("no Chromium to print the PDF with (set GATEWAY_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        page, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        command = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",  # containers run it as root; the page is our own, fetches nothing
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ]
        try:
            subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReportError(f"Chromium failed to print the report: {exc}") from None
        if not pdf.is_file() or not pdf.read_bytes().startswith(b"%PDF"):
            raise ReportError("Chromium printed no PDF")
        return pdf.read_bytes()
