"""The one judging path: faces' scores to each person's (track's) score, the vote and the
verdict, for a file, a job and a live session alike (aggregate.py states the rules).

A file is judged once, over all its sampled frames (Report.scored); a live session judges
every frame again over each person's last `window` frames (Running). Both call Judge.tracks.
"""

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal, TypeVar

import numpy as np

from gateway.server.verdict.aggregate import Strategy, TrackScore, decisive_track, score_tracks
from gateway.server.verdict.aggregate import vote as vote_rule
from gateway.server.verdict.selection import Selection
from preprocess.faces import Face
from preprocess.tensors import is_fake
from preprocess.tracks import Tracker

Verdict = Literal["fake", "real", "no_face"]
Score = TypeVar("Score", float, np.ndarray)


def verdict_of(score: float | None, threshold: float) -> Verdict:
    """No score (no face, no track): no_face; else the cut at the request's threshold."""
    if score is None:
        return "no_face"
    return "fake" if is_fake(score, threshold) else "real"


@dataclass(frozen=True)
class Judgement:
    """Every track's scores, the one that decides (None without tracks) and the verdict."""

    tracks: list[TrackScore]
    decisive: TrackScore | None
    verdict: Verdict

    @property
    def score(self) -> float | None:
        return None if self.decisive is None else self.decisive.score


@dataclass(frozen=True)
class Judge:
    """One request's judging: its models (their weights and groups), the strategy, the
    threshold."""

    selection: Selection
    strategy: Strategy
    threshold: float

    def vote(self, models: Mapping[str, Score], ensemble: Score | None = None) -> Score:
        """Per face: the ensemble's own vote when Triton answered it, else the same rule
        here (over one face's floats, or a request's arrays)."""
        if ensemble is not None:
            return ensemble
        return vote_rule(models, self.selection.weights, self.selection.groups)

    def tracks(
        self,
        tracks: Sequence[Sequence[int]],
        scores: Mapping[str, np.ndarray],
        sampled_frames: int = 0,
        min_share: float = 0.0,
    ) -> Judgement:
        """Each track (positions in `scores`) scored per model and voted; the most fake of
        the tracks seen in at least `min_share` of `sampled_frames` decides."""
        scored = score_tracks(
            tracks, scores, self.selection.weights, self.strategy, self.selection.groups
        )
        if not scored:
            return Judgement([], None, "no_face")
        decisive = decisive_track(scored, sampled_frames, min_share)
        return Judgement(scored, decisive, verdict_of(decisive.score, self.threshold))


Window = deque[tuple[int, dict[str, float]]]  # (frame, each model's score), oldest first


@dataclass
class Running:
    """A live session's running verdict: per person, their last `window` frames, judged
    again on every frame by Judge.tracks. No track is short here: every open one may
    decide (the window is what a live verdict looks at)."""

    judge: Judge
    window: int
    tracker: Tracker = field(default_factory=Tracker)
    windows: dict[int, Window] = field(default_factory=dict)
    position: int = 0  # frames judged: the tracker's clock (dropped frames are not gaps)

    def judge_frame(self, frame: int, faces: list[Face], scores: dict[str, np.ndarray]) -> dict:
        """One frame's faces (each with its track and vote), the tracks and the verdict."""
        ids = self.tracker.add(self.position, faces)
        self.tracker.forget_closed(self.position, keep=1)
        self.position += 1
        open_ids = {t.id for t in self.tracker.tracks}
        self.windows = {i: w for i, w in self.windows.items() if i in open_ids}
        answered = []
        for n, (face, track) in enumerate(zip(faces, ids, strict=True)):
            models = {m: float(scores[m][n]) for m in self.judge.selection.members}
            ensemble = scores.get("ensemble")
            p_fake = self.judge.vote(models, None if ensemble is None else float(ensemble[n]))
            self.windows.setdefault(track, deque(maxlen=self.window)).append((frame, models))
            box = [round(float(v), 1) for v in face.box]
            answered.append({"box": box, "track": track, "p_fake": p_fake, "models": models})
        return {"faces": answered, **self.verdict()}

    def verdict(self) -> dict:
        """Every open track over its window, and the running verdict."""
        ids = sorted(self.windows)
        rows = [models for i in ids for _, models in self.windows[i]]
        scores = {m: np.array([r[m] for r in rows]) for m in self.judge.selection.members}
        judged = self.judge.tracks(consecutive([len(self.windows[i]) for i in ids]), scores)
        tracks = [
            {
                "id": ids[t.track],
                "score": t.score,
                "models": t.models,
                "frames": [f for f, _ in self.windows[ids[t.track]]],
            }
            for t in judged.tracks
        ]
        return {"tracks": tracks, "verdict": judged.verdict, "score": judged.score}


def consecutive(sizes: Sequence[int]) -> list[list[int]]:
    """[2, 3] -> [[0, 1], [2, 3, 4]]: each window's rows in the rows laid end to end."""
    ends = list(accumulate(sizes))
    return [list(range(end - size, end)) for size, end in zip(sizes, ends, strict=True)]
