"""Four verdicts with reasons (gateway/server/verdict/rules.py, reasons.py): each rule that makes
a verdict uncertain, no_face's reason, the credentials' hook, and the catalogue as the docs
state it. Pure logic: no model server."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gateway.server.model_server import Ensemble, ModelInfo
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import Strategy
from gateway.server.verdict.judge import Judge, Judgement
from gateway.server.verdict.reasons import CATALOGUE
from gateway.server.verdict.rules import (
    FALLBACK_BAND,
    Doubts,
    Evidence,
    default_band,
    no_face,
    with_credentials,
)
from gateway.server.verdict.selection import Selection

README = Path(__file__).resolve().parent.parent / "gateway" / "README.md"
GROUPS = {"df1": "swap", "df2": "swap", "f2f": "f2f"}
BIG = 200.0  # a face box side in pixels: its crop (with margins) is over the 256 px input
# Rules that cannot fire unless a test asks: band 0, margins wide, one frame enough, any size.
NONE = Doubts(band=0.0, group_margin=1.0, min_face_frames=1, min_face_scale=0.0)


def selection(rule: str = "mean", input_size: int | None = 256) -> Selection:
    members = [
        ModelInfo(m, "1", True, input_size, True, 1.0, {}, 8, group=g) for m, g in GROUPS.items()
    ]
    ensemble = Ensemble("deepfake_ensemble", "test", members, True, 8, rule)
    return Selection(ensemble, list(GROUPS), dict.fromkeys(GROUPS, 1 / 3))


def judged(
    per_model: dict[str, float],
    doubts: Doubts = NONE,
    *,
    rule: str = "mean",
    frames: int = 16,
    face_frames: int = 16,
    side: float = BIG,
    threshold: float = 0.5,
    input_size: int | None = 256,
) -> Judgement:
    """One person seen in `face_frames` of `frames` sampled frames, each model scoring every
    face `per_model[model]`."""
    judge = Judge(selection(rule, input_size), Strategy(), threshold, doubts)
    scores = {m: np.full(face_frames, s) for m, s in per_model.items()}
    evidence = Evidence(frames, face_frames, frames, [side] * face_frames, 1 / 3)
    return judge.tracks([list(range(face_frames))], scores, evidence)


def codes(judgement: Judgement) -> list[str]:
    return [r.code for r in judgement.reasons]


def flat(score: float) -> dict[str, float]:
    return dict.fromkeys(GROUPS, score)


def test_plainly_fake_or_real_has_no_reasons() -> None:
    assert (judged(flat(0.9)).verdict, codes(judged(flat(0.9)))) == ("fake", [])
    assert (judged(flat(0.1)).verdict, codes(judged(flat(0.1)))) == ("real", [])


@pytest.mark.parametrize("score", [0.46, 0.5, 0.54])
def test_a_score_inside_the_band_is_uncertain(score: float) -> None:
    answer = judged(flat(score), Doubts(band=0.05, group_margin=1.0, min_face_frames=1))
    assert (answer.verdict, codes(answer)) == ("uncertain", ["near_threshold"])
    assert f"{score:.3f}" in answer.reasons[0].message and "0.050" in answer.reasons[0].message


def test_the_band_follows_the_requests_threshold() -> None:
    """The threshold still sets the operating point: the band moves with it."""
    doubts = Doubts(band=0.05, group_margin=1.0, min_face_frames=1)
    assert judged(flat(0.5), doubts, threshold=0.8).verdict == "real"
    assert judged(flat(0.78), doubts, threshold=0.8).verdict == "uncertain"
    assert judged(flat(0.9), doubts, threshold=0.8).verdict == "fake"


def test_an_unset_band_is_the_one_default_band_gives() -> None:
    doubts = Doubts(band=None)
    assert doubts.band_for(selection()) == default_band(selection()) == FALLBACK_BAND
    inside = 0.5 + FALLBACK_BAND / 2
    assert judged(flat(inside), Doubts(band=None, min_face_frames=1)).verdict == "uncertain"
    assert judged(flat(inside), Doubts(band=0.0, min_face_frames=1)).verdict == "fake"


def test_groups_that_disagree_beyond_the_margin_make_it_uncertain() -> None:
    scores = {"df1": 0.95, "df2": 0.95, "f2f": 0.05}  # swap 0.95, f2f 0.05: 0.90 apart
    doubts = Doubts(band=0.0, group_margin=0.75, min_face_frames=1)
    answer = judged(scores, doubts, rule="max_of_groups")
    assert (answer.verdict, codes(answer)) == ("uncertain", ["groups_disagree"])
    assert "swap group" in answer.reasons[0].message and "0.90 apart" in answer.reasons[0].message
    # Within the margin, or without groups (rule mean), the cut decides.
    assert judged(scores, Doubts(band=0.0, group_margin=0.95), rule="max_of_groups").verdict == (
        "fake"
    )
    assert judged(scores, doubts, rule="mean").verdict == "fake"


def test_faces_in_few_frames_make_a_video_uncertain_but_not_an_image() -> None:
    doubts = Doubts(band=0.0, group_margin=1.0, min_face_frames=4)
    few = judged(flat(0.9), doubts, frames=8, face_frames=3)  # 3 of 8: not a short track
    assert (few.verdict, codes(few)) == ("uncertain", ["few_face_frames"])
    assert few.reasons[0].message == "faces in 3 of 8 sampled frames, under the 4 needed"
    assert judged(flat(0.9), doubts, frames=8, face_frames=4).verdict == "fake"
    image = judged(flat(0.9), doubts, frames=1, face_frames=1)  # the file has one frame
    assert (image.verdict, codes(image)) == ("fake", [])


def test_faces_much_smaller_than_the_members_input_make_it_uncertain() -> None:
    doubts = Doubts(band=0.0, group_margin=1.0, min_face_frames=1, min_face_scale=0.5)
    # A 60 px box with its third on each side is a 100 px crop: under half of 256.
    small = judged(flat(0.1), doubts, side=60.0)
    assert (small.verdict, codes(small)) == ("uncertain", ["small_faces"])
    assert "100 px" in small.reasons[0].message and "256 px" in small.reasons[0].message
    assert judged(flat(0.1), doubts, side=80.0).verdict == "real"  # a 133 px crop
    # A member that states no input size cannot say a face is small.
    assert judged(flat(0.1), doubts, side=60.0, input_size=None).verdict == "real"


def test_a_short_deciding_track_makes_it_uncertain() -> None:
    """One person in 4 of 16 frames, no one longer: they decide, but on little."""
    answer = judged(flat(0.9), frames=16, face_frames=4)
    assert (answer.verdict, codes(answer)) == ("uncertain", ["short_track"])
    assert "4 of 16" in answer.reasons[0].message
    assert judged(flat(0.9), frames=12, face_frames=4).verdict == "fake"  # a third: long


def test_every_reason_found_is_given_in_the_catalogues_order() -> None:
    doubts = Doubts(band=0.1, group_margin=1.0, min_face_frames=4, min_face_scale=0.5)
    answer = judged(flat(0.55), doubts, frames=16, face_frames=3, side=50.0)
    assert codes(answer) == ["near_threshold", "few_face_frames", "small_faces", "short_track"]
    assert answer.verdict == "uncertain"


def test_no_face_says_why() -> None:
    judge = Judge(selection(), Strategy(), 0.5, NONE)
    answer = judge.tracks([], {}, Evidence(sampled_frames=7))
    assert (answer.verdict, answer.reasons) == ("no_face", [no_face(7)])
    assert answer.reasons[0].message == "no face found in the 7 sampled frame(s)"


@dataclass
class Credentials:
    state: str
    ai_generated: bool


def test_valid_credentials_declaring_ai_generation_make_it_fake_whatever_the_faces() -> None:
    real = judged(flat(0.1))
    for state in ("valid", "trusted"):
        verdict, reasons = with_credentials(real.verdict, real.reasons, Credentials(state, True))
        assert (verdict, [r.code for r in reasons]) == ("fake", ["declared_ai_generated"])
    faceless = [no_face(4)]
    verdict, reasons = with_credentials("no_face", faceless, Credentials("valid", True))
    assert (verdict, [r.code for r in reasons]) == (
        "fake",
        ["declared_ai_generated", "no_face_found"],
    )


def test_invalid_credentials_weaken_the_verdict_and_declare_nothing() -> None:
    fake = judged(flat(0.9))
    verdict, reasons = with_credentials(fake.verdict, fake.reasons, Credentials("invalid", True))
    assert (verdict, [r.code for r in reasons]) == ("fake", ["credentials_invalid"])
    real = judged(flat(0.1))
    verdict, reasons = with_credentials(real.verdict, real.reasons, Credentials("invalid", True))
    assert (verdict, [r.code for r in reasons]) == ("real", ["credentials_invalid"])


def test_no_credentials_or_a_camera_capture_leave_the_verdict_alone() -> None:
    uncertain = judged(flat(0.5), Doubts(band=0.05, min_face_frames=1))
    for credentials in (None, Credentials("valid", False)):
        assert with_credentials("uncertain", uncertain.reasons, credentials) == (
            "uncertain",
            uncertain.reasons,
        )


def test_the_settings_set_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_UNCERTAIN_BAND", "0.2")
    monkeypatch.setenv("GATEWAY_UNCERTAIN_GROUP_MARGIN", "0.4")
    monkeypatch.setenv("GATEWAY_UNCERTAIN_MIN_FACE_FRAMES", "9")
    monkeypatch.setenv("GATEWAY_UNCERTAIN_MIN_FACE_SCALE", "0.3")
    doubts = Doubts.from_settings(Settings())
    assert (doubts.band, doubts.group_margin, doubts.min_face_frames) == (0.2, 0.4, 9)
    assert doubts.min_face_scale == 0.3 and doubts.crop_margin == Settings().crop_config().margin
    monkeypatch.delenv("GATEWAY_UNCERTAIN_BAND")
    assert Doubts.from_settings(Settings()).band is None  # unset: default_band decides


def test_the_readme_table_is_the_catalogue() -> None:
    """gateway/README.md's table lists exactly the codes reasons.py has, each marked as it
    acts (`yes`: it makes the verdict uncertain)."""
    section = README.read_text().split("## Verdicts and their reasons", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (yes|no)[^|]* \|", section, flags=re.MULTILINE)
    assert [code for code, _ in rows] == list(CATALOGUE)
    assert {code: mark == "yes" for code, mark in rows} == {
        code: kind.uncertain for code, kind in CATALOGUE.items()
    }
