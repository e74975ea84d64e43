"""From per-face scores to a video verdict.

Per track (one person) and per model, the DFDC winner's confident strategy
turns that model's frame scores into one score; the models' scores are
combined with the vote weights Triton's vote model uses; the video is as fake
as its most fake track. Untrained models have vote weight 0 (unless the
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


def score_tracks(
    tracks: Sequence[Sequence[int]],
    face_scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    strategy: Strategy,
) -> list[TrackScore]:
    """Each track's per-model scores (the strategy over its faces) and their vote."""
    results = []
    for track_id, faces in enumerate(tracks):
        index = np.asarray(faces, dtype=int)
        models = {m: strategy(s[index]) for m, s in face_scores.items()}
        results.append(TrackScore(track_id, list(faces), models, weighted_mean(models, weights)))
    return results


def decisive_track(tracks: Sequence[TrackScore]) -> TrackScore:
    """The most fake person decides: one swapped face makes the video fake."""
    return max(tracks, key=lambda t: t.score)


def voting_weights(
    available: Mapping[str, float], selected: Sequence[str]
) -> dict[str, float] | None:
    """The selected models' vote weights, normalised; None when none of them votes."""
    weights = {m: available.get(m, 0.0) for m in selected}
    total = sum(weights.values())
    if total <= 0:
        return None
    return {m: w / total for m, w in weights.items()}
