"""The one judging path: faces' scores to each person's (track's) score, the vote and the
verdict, for a file, a job and a live session alike (aggregate.py states the rules).

A file is judged once, over all its sampled frames (Report.scored); a live session judges
every frame again over each person's last `window` frames (Running). Both call Judge.tracks,
which weighs the decisive score with rules.py's doubts: fake, real, uncertain or no_face,
with the reasons (reasons.py).
"""

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TypeVar

import numpy as np

from gateway.server import schemas
from gateway.server.schemas import Verdict
from gateway.server.verdict.aggregate import Strategy, TrackScore, decisive_track, score_tracks
from gateway.server.verdict.aggregate import vote as vote_rule
from gateway.server.verdict.rules import Doubts, Evidence, doubts_of, no_face, verdict_of
from gateway.server.verdict.selection import Selection
from preprocess.faces import Face
from preprocess.tracks import Tracker

Score = TypeVar("Score", float, np.ndarray)


@dataclass(frozen=True)
class Judgement:
    """Every track's scores, the one that decides (None without tracks), the verdict, its
    reasons and the video's score: the decisive track's, calibrated (preprocess/calibration.py)
    when the request votes as the calibration was fit; the verdict and the band cut that."""

    tracks: list[TrackScore]
    decisive: TrackScore | None
    verdict: Verdict
    reasons: list[schemas.Reason] = field(default_factory=list)
    score: float | None = None

    @property
    def raw_score(self) -> float | None:
        """The decisive track's own score (the vote's scale), before calibration."""
        return None if self.decisive is None else self.decisive.score


@dataclass(frozen=True)
class Judge:
    """One request's judging: its models (their weights and groups), the strategy, the
    threshold, the rules that make a verdict uncertain."""

    selection: Selection
    strategy: Strategy
    threshold: float
    doubts: Doubts = field(default_factory=Doubts)

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
        evidence: Evidence,
    ) -> Judgement:
        """Each track (positions in `scores`) scored per model and voted; the most fake of
        the tracks seen in at least `evidence.min_share` of the sampled frames decides, and
        the doubts weigh its score."""
        scored = score_tracks(
            tracks, scores, self.selection.weights, self.strategy, self.selection.groups
        )
        if not scored:
            return Judgement([], None, "no_face", [no_face(evidence.sampled_frames)])
        decisive = decisive_track(scored, evidence.sampled_frames, evidence.min_share)
        score = self.calibrated(decisive.score)
        reasons = doubts_of(decisive, self.selection, self.threshold, evidence, self.doubts, score)
        verdict = verdict_of(score, self.threshold, reasons)
        return Judgement(scored, decisive, verdict, reasons, score)

    def calibrated(self, raw: float) -> float:
        """The video's P(fake): the calibration of this request's vote applied, if any."""
        calibration = self.selection.calibration
        return raw if calibration is None else calibration.apply(raw)


# (frame, each model's score, the face's box long side in pixels), oldest first
Window = deque[tuple[int, dict[str, float], float]]


@dataclass
class Running:
    """A live session's running verdict: per person, their last `window` frames, judged
    again on every frame by Judge.tracks. No track is short here: every open one may
    decide (the window is what a live verdict looks at); the view holds `window` frames, so
    few_face_frames asks for no more than that."""

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
            box = [round(float(v), 1) for v in face.box]
            side = max(box[2] - box[0], box[3] - box[1])  # as answered: a client can check it
            self.windows.setdefault(track, deque(maxlen=self.window)).append((frame, models, side))
            answered.append({"box": box, "track": track, "p_fake": p_fake, "models": models})
        return {"faces": answered, **self.verdict()}

    def verdict(self) -> dict:
        """Every open track over its window, and the running verdict with its reasons."""
        ids = sorted(self.windows)
        rows = [row for i in ids for row in self.windows[i]]
        scores = {m: np.array([r[1][m] for r in rows]) for m in self.judge.selection.members}
        evidence = Evidence(
            sampled_frames=min(self.position, self.window),
            face_frames=min(len({frame for frame, _, _ in rows}), self.position, self.window),
            available_frames=self.window,
            sides=[side for _, _, side in rows],
        )
        sizes = consecutive([len(self.windows[i]) for i in ids])
        judged = self.judge.tracks(sizes, scores, evidence)
        tracks = [
            {
                "id": ids[t.track],
                "score": t.score,
                "models": t.models,
                "frames": [f for f, _, _ in self.windows[ids[t.track]]],
            }
            for t in judged.tracks
        ]
        reasons = [r.model_dump() for r in judged.reasons]
        return {
            "tracks": tracks,
            "verdict": judged.verdict,
            "reasons": reasons,
            "score": judged.score,
            "raw_score": judged.raw_score,
        }


def consecutive(sizes: Sequence[int]) -> list[list[int]]:
    """[2, 3] -> [[0, 1], [2, 3, 4]]: each window's rows in the rows laid end to end."""
    ends = list(accumulate(sizes))
    return [list(range(end - size, end)) for size, end in zip(sizes, ends, strict=True)]
