"""When a verdict is `uncertain`, and why: the band around the threshold, the vote's groups
disagreeing, thin evidence (few frames with faces, small faces, a short deciding track); and
the one hook by which content credentials override the faces (with_credentials).

Judge (judge.py) applies these for files, jobs and live alike; reasons.py is the catalogue.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.server import schemas
from gateway.server.schemas import Verdict
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import TrackScore, group_means, is_short
from gateway.server.verdict.reasons import makes_uncertain, reason
from gateway.server.verdict.selection import Selection
from preprocess.crop import CropConfig
from preprocess.tensors import is_fake

# The band's half-width until the calibration measures one (make calibrate): a score this
# close to the threshold is a coin toss at the MesoNets' cross-dataset AUC of about 0.6.
FALLBACK_BAND = 0.05


def default_band(selection: Selection) -> float:
    """The band when GATEWAY_UNCERTAIN_BAND is unset: the one `make calibrate` measured on
    the calibrated scores, where this request's score is calibrated; else the fallback
    (a raw vote's scale is not the one that band was measured on)."""
    calibration = selection.calibration
    return FALLBACK_BAND if calibration is None else calibration.uncertain_band


@dataclass(frozen=True)
class Doubts:
    """The rules' settings (GATEWAY_UNCERTAIN_*): gateway/README.md states each."""

    band: float | None = None  # None: default_band(the request's selection)
    group_margin: float = 0.75
    min_face_frames: int = 4
    min_face_scale: float = 0.5
    crop_margin: float = CropConfig.margin  # the crop's margin around a box, each side

    @classmethod
    def from_settings(cls, settings: Settings) -> "Doubts":
        return cls(
            band=settings.uncertain_band,
            group_margin=settings.uncertain_group_margin,
            min_face_frames=settings.uncertain_min_face_frames,
            min_face_scale=settings.uncertain_min_face_scale,
            crop_margin=settings.crop_config().margin,
        )

    def band_for(self, selection: Selection) -> float:
        return default_band(selection) if self.band is None else self.band


@dataclass(frozen=True)
class Evidence:
    """What the scores stand on: frames sampled and with faces, frames the file has (an image
    1; 0: no end, as live), each face's box long side in pixels (by its position in the
    scores), and the share of the sampled frames a track needs to decide alone."""

    sampled_frames: int = 0
    face_frames: int = 0
    available_frames: int = 0
    sides: Sequence[float] = ()
    min_share: float = 0.0


def near_threshold(score: float, threshold: float, band: float) -> schemas.Reason | None:
    if abs(score - threshold) >= band:
        return None
    return reason(
        "near_threshold",
        f"P(fake) {score:.3f} is within {band:.3f} of the threshold {threshold:.3f}",
    )


def groups_disagree(
    track: TrackScore, selection: Selection, margin: float
) -> schemas.Reason | None:
    """Only under max_of_groups: the groups' weighted means of the deciding person."""
    if selection.groups is None:
        return None
    means = group_means(track.models, selection.weights, selection.groups)
    if len(means) < 2:
        return None
    high, low = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
    gap = means[high] - means[low]
    if gap <= margin:
        return None
    return reason(
        "groups_disagree",
        f"the {high} group scores the deciding person {means[high]:.2f}, the {low} group "
        f"{means[low]:.2f}: {gap:.2f} apart, over the margin {margin:.2f}",
    )


def few_face_frames(evidence: Evidence, minimum: int) -> schemas.Reason | None:
    """Faces in fewer frames than `minimum`, or than the file has when it has fewer."""
    needed = min(minimum, evidence.available_frames) if evidence.available_frames else minimum
    if evidence.face_frames >= needed:
        return None
    return reason(
        "few_face_frames",
        f"faces in {evidence.face_frames} of {evidence.sampled_frames} sampled frames, "
        f"under the {needed} needed",
    )


def small_faces(
    track: TrackScore, evidence: Evidence, selection: Selection, doubts: Doubts
) -> schemas.Reason | None:
    """The deciding person's median crop side (box and margins) against the smallest input
    of the voting members: a crop upscaled past the scale shows the network blur, not skin."""
    inputs = [
        selection.ensemble.member(m).input_size
        for m in selection.members
        if selection.weights[m] > 0
    ]
    sizes = [size for size in inputs if size]
    if not sizes or not evidence.sides:
        return None
    side = float(np.median([evidence.sides[n] for n in track.faces]))
    crop = side * (1 + 2 * doubts.crop_margin)
    needed = doubts.min_face_scale * min(sizes)
    if crop >= needed:
        return None
    return reason(
        "small_faces",
        f"the deciding person's face crop is {crop:.0f} px (median), under "
        f"{doubts.min_face_scale:.0%} of the members' {min(sizes)} px input",
    )


def short_track(track: TrackScore, evidence: Evidence) -> schemas.Reason | None:
    """decisive_track lets a short track decide only when no track is long enough."""
    if not is_short(track, evidence.sampled_frames, evidence.min_share):
        return None
    return reason(
        "short_track",
        f"the deciding person is seen in {len(track.faces)} of {evidence.sampled_frames} "
        f"sampled frames, under {evidence.min_share:.0%}, and no one is seen longer",
    )


def doubts_of(
    track: TrackScore,
    selection: Selection,
    threshold: float,
    evidence: Evidence,
    doubts: Doubts,
    score: float | None = None,
) -> list[schemas.Reason]:
    """Every rule's reason against the deciding person's score, in the catalogue's order.
    `score` is the one the verdict cuts (the calibrated P(fake), judge.py), default the
    track's own."""
    cut = track.score if score is None else score
    found = [
        near_threshold(cut, threshold, doubts.band_for(selection)),
        groups_disagree(track, selection, doubts.group_margin),
        few_face_frames(evidence, doubts.min_face_frames),
        small_faces(track, evidence, selection, doubts),
        short_track(track, evidence),
    ]
    return [r for r in found if r is not None]


def verdict_of(score: float, threshold: float, reasons: list[schemas.Reason]) -> Verdict:
    """uncertain when a reason says so, else the cut at the request's threshold."""
    if makes_uncertain(reasons):
        return "uncertain"
    return "fake" if is_fake(score, threshold) else "real"


def no_face(sampled_frames: int) -> schemas.Reason:
    return reason("no_face_found", f"no face found in the {sampled_frames} sampled frame(s)")


class Credentials(Protocol):
    """What the verdict reads of a file's content credentials (C2PA)."""

    state: str  # the library's validation state: "invalid", "valid" or "trusted"
    ai_generated: bool  # the active manifest declares (composite with) trained algorithmic media


def with_credentials(
    verdict: Verdict, reasons: list[schemas.Reason], credentials: Credentials | None
) -> tuple[Verdict, list[schemas.Reason]]:
    """The faces' verdict and reasons, and then the credentials: valid ones declaring AI
    generation make it `fake` (declared_ai_generated first, the faces' reasons kept);
    invalid ones add credentials_invalid and change nothing else. None: as judged."""
    if credentials is None:
        return verdict, reasons
    if credentials.state == "invalid":
        found = reason(
            "credentials_invalid",
            "the content credentials fail validation: the file changed after signing, or "
            "its signature is not sound",
        )
        return verdict, [*reasons, found]
    if credentials.ai_generated:
        found = reason(
            "declared_ai_generated",
            f"the content credentials ({credentials.state}) declare AI generation",
        )
        return "fake", [found, *reasons]
    return verdict, reasons
