"""The verdict rule: the DFDC confident strategy, vote weights, the most fake track; one judging
path for a file and a live session (verdict/judge.py), one cut (preprocess/tensors.py)."""

import inspect
from pathlib import Path

import numpy as np
import pytest

from export import quantize
from export.quantize import clip_verdicts
from gateway.programs import evaluate
from gateway.server.model_server import Ensemble, ModelInfo
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import (
    Strategy,
    decisive_track,
    is_short,
    score_tracks,
    vote,
    voting_weights,
    weighted_mean,
)
from gateway.server.verdict.judge import Judge, Judgement, Running
from gateway.server.verdict.rules import Evidence, no_face, verdict_of
from gateway.server.verdict.selection import Selection
from preprocess.faces import Face
from preprocess.tensors import FAKE_AT, is_fake

STRATEGY = Strategy()


def dfdc_confident_strategy(pred: np.ndarray, t: float = 0.8) -> float:
    """The DFDC winner's rule exactly as published (for 32 frames), to compare with."""
    sz = len(pred)
    fakes = np.count_nonzero(pred > t)
    if fakes > sz // 2.5 and fakes > 11:
        return float(np.mean(pred[pred > t]))
    if np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return float(np.mean(pred[pred < 0.2]))
    return float(np.mean(pred))


@pytest.mark.parametrize("seed", range(40))
def test_with_32_frames_it_is_the_winners_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fakes = rng.integers(0, 33)
    scores = np.concatenate([rng.uniform(0.81, 1, fakes), rng.uniform(0, 0.8, 32 - fakes)])
    if seed % 3 == 0:
        scores = rng.uniform(0, 0.19, 32)
        scores[: seed % 4] = 0.6
    assert STRATEGY(scores) == pytest.approx(dfdc_confident_strategy(scores))


def test_confident_fakes_dominate_a_mostly_real_mean() -> None:
    scores = np.array([0.95] * 14 + [0.3] * 18)
    assert STRATEGY(scores) == pytest.approx(0.95)
    assert np.mean(scores) < 0.6


def test_a_clearly_real_clip_is_judged_by_its_real_frames() -> None:
    scores = np.array([0.05] * 30 + [0.7, 0.9])
    assert STRATEGY(scores) == pytest.approx(0.05)


def test_the_count_of_confident_frames_scales_with_fewer_frames() -> None:
    # 4 of 8 frames confidently fake: the same proportion as 16 of 32, which
    # the winner's rule calls fake; an unscaled "more than 11" never could.
    scores = np.array([0.9] * 4 + [0.4] * 4)
    assert STRATEGY(scores) == pytest.approx(0.9)
    assert dfdc_confident_strategy(scores) == pytest.approx(0.65)
    # ...but one confident frame of eight is not enough.
    assert STRATEGY(np.array([0.9] + [0.4] * 7)) == pytest.approx(np.mean([0.9] + [0.4] * 7))


def test_a_single_image_keeps_its_score() -> None:
    for value in (0.05, 0.5, 0.95):
        assert STRATEGY(np.array([value])) == pytest.approx(value)


def test_untrained_models_do_not_move_the_track_score() -> None:
    scores = {
        "meso4": np.array([0.9, 0.9, 0.9]),
        "xception": np.array([0.0, 0.0, 0.0]),
    }
    weights = voting_weights({"meso4": 1.0, "xception": 0.0}, ["meso4", "xception"])
    assert weights == {"meso4": 1.0, "xception": 0.0}
    (track,) = score_tracks([[0, 1, 2]], scores, weights, STRATEGY)
    assert track.score == pytest.approx(0.9)
    assert track.models == {"meso4": pytest.approx(0.9), "xception": 0.0}


def test_weights_are_renormalised_over_the_selected_models() -> None:
    available = {"meso4": 0.5, "mesoinception4": 0.5, "xception": 0.0}
    assert voting_weights(available, ["meso4"]) == {"meso4": 1.0}
    assert voting_weights(available, ["xception"]) is None
    assert weighted_mean({"a": 0.2, "b": 0.8}, {"a": 0.75, "b": 0.25}) == pytest.approx(0.35)


def test_the_most_fake_person_decides() -> None:
    scores = {"meso4": np.array([0.1, 0.95, 0.1, 0.9])}
    tracks = score_tracks([[0, 2], [1, 3]], scores, {"meso4": 1.0}, STRATEGY)
    assert [t.track for t in tracks] == [0, 1]
    assert decisive_track(tracks).track == 1
    assert decisive_track(tracks).score == pytest.approx(0.925)


def test_a_short_track_cannot_decide_alone() -> None:
    """A face glimpsed in 2 of 32 frames, however fake, does not outweigh the
    people seen throughout; it decides only when no track is long enough."""
    long_real = list(range(0, 24))
    glimpse = [24, 25]
    scores = {"meso4": np.array([0.1] * 24 + [0.95, 0.95])}
    tracks = score_tracks([long_real, glimpse], scores, {"meso4": 1.0}, STRATEGY)
    assert is_short(tracks[1], 32, STRATEGY.min_track_share)
    assert not is_short(tracks[0], 32, STRATEGY.min_track_share)
    assert decisive_track(tracks, 32, STRATEGY.min_track_share).track == 0
    assert decisive_track(tracks).track == 1  # without the rule, the glimpse decides
    # Every track short: the longest decides, not the most fake.
    few = score_tracks([[0, 1, 2], [24, 25]], scores, {"meso4": 1.0}, STRATEGY)
    assert decisive_track(few, 32, STRATEGY.min_track_share).track == 0


def test_max_of_groups_lets_one_group_of_specialists_flag_a_fake() -> None:
    scores = {"df1": 0.1, "df2": 0.2, "f2f1": 0.9, "f2f2": 0.7}
    weights = dict.fromkeys(scores, 0.25)
    groups = {"df1": "swap", "df2": "swap", "f2f1": "f2f", "f2f2": "f2f"}
    assert vote(scores, weights) == pytest.approx(0.475)
    assert vote(scores, weights, groups) == pytest.approx(0.8)
    # A group whose members all weigh 0 does not vote.
    assert vote(scores, weights | {"f2f1": 0.0, "f2f2": 0.0}, groups) == pytest.approx(0.15)


# --- one judging path (gateway/server/verdict/judge.py): files, jobs and live alike ----------


def selection(rule: str = "mean") -> Selection:
    groups = {"df1": "swap", "df2": "swap", "f2f": "f2f"}
    members = [ModelInfo(m, "1", True, 256, True, 1.0, {}, 8, group=g) for m, g in groups.items()]
    ensemble = Ensemble("deepfake_ensemble", "test", members, True, 8, rule)
    return Selection(ensemble, list(groups), dict.fromkeys(groups, 1 / 3))


def test_the_cut_is_one_fact() -> None:
    """Settings' default, the verdict, `make eval`, quantize's check and training's figures
    read one cut."""
    assert Settings.model_fields["threshold"].default == FAKE_AT
    assert verdict_of(FAKE_AT, FAKE_AT, []) == "fake" and is_fake(FAKE_AT)
    assert verdict_of(np.nextafter(FAKE_AT, 0), FAKE_AT, []) == "real"
    scores = np.array([FAKE_AT, FAKE_AT, 0.1, 0.1])
    assert clip_verdicts(scores, ["a", "a", "b", "b"]) == {"a": True, "b": False}
    train = (Path(__file__).resolve().parent.parent / "export/train.py").read_text()
    source = inspect.getsource(quantize) + inspect.getsource(evaluate) + train
    assert ">= 0.5" not in source and "= 0.5  #" not in source  # no cut of their own


@pytest.mark.parametrize("rule", ["mean", "max_of_groups"])
def test_a_file_and_a_live_session_judge_the_same_faces_alike(rule: str) -> None:
    """Two people over six frames: the file's judgement (all frames at once) and a live
    session's (frame by frame, its window holding them all) give the same tracks, the same
    decisive person and the same verdict."""
    rng = np.random.default_rng(3)
    left, right = Face((10, 10, 60, 60), 0.9), Face((200, 10, 250, 60), 0.9)
    frames = [[left, right]] * 6
    scores = {m: rng.uniform(0, 1, 12).astype(np.float32) for m in selection().members}
    judge = Judge(selection(rule), Strategy(), threshold=0.45)
    running = Running(judge, window=6)
    for f, faces in enumerate(frames):
        answer = running.judge_frame(f, faces, {m: s[2 * f : 2 * f + 2] for m, s in scores.items()})
    evidence = Evidence(6, 6, 6, [50.0] * 12, 1 / 3)
    filed = judge.tracks([list(range(0, 12, 2)), list(range(1, 12, 2))], scores, evidence)
    assert [t["score"] for t in answer["tracks"]] == pytest.approx([t.score for t in filed.tracks])
    assert answer["verdict"] == filed.verdict and answer["score"] == pytest.approx(filed.score)
    assert answer["reasons"] == [r.model_dump() for r in filed.reasons]
    assert [t["frames"] for t in answer["tracks"]] == [list(range(6))] * 2
    face = answer["faces"][0]
    assert face["p_fake"] == pytest.approx(float(judge.vote(scores, None)[10]))


def test_a_live_window_forgets_older_frames_and_an_empty_one_has_no_verdict() -> None:
    judge = Judge(selection(), Strategy(), threshold=FAKE_AT)
    running = Running(judge, window=2)
    face = [Face((10, 10, 60, 60), 0.9)]
    for f, p in enumerate((0.9, 0.1, 0.2)):
        answer = running.judge_frame(f, face, dict.fromkeys(judge.selection.members, np.array([p])))
    (track,) = answer["tracks"]
    assert track["frames"] == [1, 2] and track["score"] == pytest.approx(0.15)
    assert answer["verdict"] == "uncertain"  # 50 px faces: under half the members' 256 px
    assert [r["code"] for r in answer["reasons"]] == ["small_faces"]
    for f in range(3, 8):  # the person gone: their track closes, nothing is left to judge
        answer = running.judge_frame(f, [], {})
    assert (answer["tracks"], answer["verdict"], answer["score"]) == ([], "no_face", None)
    assert answer["reasons"] == [no_face(2).model_dump()]
    assert judge.tracks([], {}, Evidence(3)) == Judgement([], None, "no_face", [no_face(3)])
