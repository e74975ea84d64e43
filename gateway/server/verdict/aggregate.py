"""From per-face scores to a video verdict.

Per track (one person) and per model, the DFDC winner's confident strategy
turns that model's frame scores into one score; the models' scores are
combined with the vote rule Triton's vote model uses; the video is as fake
as its most fake track among those seen long enough to decide alone (see
decisive_track). Untrained models have vote weight 0 (unless the
operator exported with count_untrained), so they are reported but never move
the verdict.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Strategy:
    """The DFDC winner's confident_strategy, stated for 32 frames and scaled.

    With 32 frames: if more than 11 frames (and more than len // 2.5) score
    above `confident`, the mean of those; else if more than 90% score below
    `low`, the mean of those; else the mean of all. The 11-of-32 count is
    scaled to the number of frames actually scored, so a short clip or a
    person seen in few frames is judged by the same proportions.
    """

    confident: float = 0.8
    low: float = 0.2
    min_confident: int = 11
    reference_frames: int = 32
    low_fraction: float = 0.9
    # A track seen in fewer than this share of the sampled frames is weak
    # evidence (a face glimpsed in 2 of 32 frames): it is reported, marked
    # short, and cannot decide the verdict alone (see decisive_track).
    # A third: chosen on the shared clips (gateway/QUALITY.md, short tracks).
    min_track_share: float = 1 / 3

    def __call__(self, scores: np.ndarray) -> float:
        scores = np.asarray(scores, dtype=np.float64)
        size = len(scores)
        fakes = scores > self.confident
        needed = self.min_confident * size / self.reference_frames
        if fakes.sum() > size // 2.5 and fakes.sum() > needed:
            return float(scores[fakes].mean())
        reals = scores < self.low
        if reals.sum() > self.low_fraction * size:
            return float(scores[reals].mean())
        return float(scores.mean())


@dataclass(frozen=True)
class TrackScore:
    track: int
    faces: list[int]  # positions in the request's face batch
    models: dict[str, float]
    score: float


def weighted_mean(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights[m] for m in scores)
    return sum(weights[m] * s for m, s in scores.items()) / total


def vote(
    scores: Mapping[str, float],
    weights: Mapping[str, float],
    groups: Mapping[str, str] | None = None,
) -> float:
    """What deepfake_vote computes: the weighted mean of the scores, or with
    `groups` (rule max_of_groups) the most fake of the groups' weighted means,
    groups without weight left out. Works on floats and on arrays alike."""
    if not groups:
        return weighted_mean(scores, weights)
    means = list(group_means(scores, weights, groups).values())
    return np.maximum.reduce(means) if len(means) > 1 else means[0]


def group_means(
    scores: Mapping[str, float], weights: Mapping[str, float], groups: Mapping[str, str]
) -> dict[str, float]:
    """Each group's weighted mean, the groups without weight left out (what max_of_groups
    takes the most fake of)."""
    return {
        g: weighted_mean({m: s for m, s in scores.items() if groups[m] == g}, weights)
        for g in dict.fromkeys(groups[m] for m in scores if weights[m] > 0)
    }


def score_tracks(
    tracks: Sequence[Sequence[int]],
    face_scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    strategy: Strategy,
    groups: Mapping[str, str] | None = None,
) -> list[TrackScore]:
    """Each track's per-model scores (the strategy over its faces) and their vote."""
    results = []
    for track_id, faces in enumerate(tracks):
        index = np.asarray(faces, dtype=int)
        models = {m: strategy(s[index]) for m, s in face_scores.items()}
        results.append(TrackScore(track_id, list(faces), models, vote(models, weights, groups)))
    return results


def is_short(track: TrackScore, sampled_frames: int, min_share: float) -> bool:
    """Seen in fewer than `min_share` of the sampled frames (one face per frame)."""
    return len(track.faces) < min_share * sampled_frames


def decisive_track(
    tracks: Sequence[TrackScore], sampled_frames: int = 0, min_share: float = 0.0
) -> TrackScore:
    """The most fake person decides: one swapped face makes the video fake.

    Only tracks seen in at least `min_share` of the `sampled_frames` may
    decide; when none is, the longest track decides (the most fake of the
    longest, on a tie): a person glimpsed in a few frames never outweighs the
    people the clip is about."""
    long = [t for t in tracks if not is_short(t, sampled_frames, min_share)]
    if not long:
        most = max(len(t.faces) for t in tracks)
        long = [t for t in tracks if len(t.faces) == most]
    return max(long, key=lambda t: t.score)


def voting_weights(
    available: Mapping[str, float], selected: Sequence[str]
) -> dict[str, float] | None:
    """The selected models' vote weights, normalised; None when none of them votes."""
    weights = {m: available.get(m, 0.0) for m in selected}
    total = sum(weights.values())
    if total <= 0:
        return None
    return {m: w / total for m, w in weights.items()}
