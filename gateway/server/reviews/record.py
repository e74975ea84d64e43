"""What an answer leaves to be reviewed: its scores and its decisive faces' crops, no media.

A file's answer (`/api/detect`, a job's item) and a live session's running verdict both
become a `Record`: the answer's verdict and score as it gave them (whatever verdicts and
score fields the answer has), every member's per-track and per-face scores, the models'
versions, and the crops of the decisive person's faces, as the pipeline cut them and the
members saw them (PNG: lossless), with their heatmaps when the answer had them. That is
what training (crops with a label, per file) and calibration (scores with a label) read.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from gateway.server import schemas

FaceKey = tuple[int, int]  # (frame index in the clip, face number in the frame)
# Score fields an answer may carry besides `score` (e.g. the uncalibrated one): kept if there.
EXTRA_SCORE_FIELDS = ("raw_score", "reasons")


@dataclass(frozen=True)
class FaceCrop:
    frame: int
    face: int
    track: int
    p_fake: float | None
    models: dict[str, float]
    crop: np.ndarray  # RGB uint8, as scored


@dataclass(frozen=True)
class Record:
    source: str  # detect, job or live
    sha256: str | None
    verdict: str
    score: float | None
    scores: dict[str, Any]
    faces: list[FaceCrop] = field(default_factory=list)
    # The decisive person's heatmaps, when the answer had explanations (explain=true).
    explanations: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Shadow:
    """One member's candidate version scored beside its serving version on an answer's faces
    (analysis/shadow.py); a row of the store's shadow_scores."""

    model: str
    serving_version: str
    candidate_version: str
    serving_video: float  # the raw video score as the answer had it
    candidate_video: float  # the same vote with the candidate's scores in the member's place
    faces: list[dict[str, Any]]  # {frame, face, track, serving, candidate}


def png(crop: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:  # a crop is always a small RGB array: this would be a bug
        raise ValueError("a crop could not be encoded")
    return data.tobytes()


def crop_of(data: bytes) -> np.ndarray:
    """A stored crop back as the RGB array the members saw (png's inverse, lossless)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a stored crop is not a PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def spread(items: Sequence[Any], most: int) -> list[Any]:
    """At most `most` of `items`, evenly spaced from first to last (all if fewer)."""
    if len(items) <= most:
        return list(items)
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def scores_of(answer: schemas.DetectAnswer) -> dict[str, Any]:
    """Everything calibration and training read of an answer's numbers; no thumbnail, no
    heatmap, no file name."""
    dumped = answer.model_dump()
    return {
        "threshold": answer.threshold,
        "ensemble": answer.ensemble,
        **{name: dumped[name] for name in EXTRA_SCORE_FIELDS if name in dumped},
        "models": [
            {k: m[k] for k in ("name", "version", "weight", "voting", "score", "group")}
            for m in dumped["models"]
        ],
        "tracks": [
            {k: t[k] for k in ("id", "score", "models", "frames", "share", "short", "decisive")}
            for t in dumped["tracks"]
        ],
        "faces": [
            {"frame": frame["index"], "face": n}
            | {k: face[k] for k in ("track", "box", "detector_score", "p_fake", "models")}
            for frame in dumped["frames"]
            for n, face in enumerate(frame["faces"])
        ],
    }


def of_answer(
    answer: schemas.DetectAnswer,
    crops: Mapping[FaceKey, np.ndarray],
    source: str,
    max_faces: int,
) -> Record:
    """A file's answer: the decisive track's faces (at most `max_faces`, spread over the
    clip) with their crops."""
    decisive = {t.id for t in answer.tracks if t.decisive}
    explained = [
        {k: e[k] for k in ("frame", "face", "model", "p_fake", "heatmap")}
        for e in answer.model_dump()["explanations"]
        if e["track"] in decisive
    ]
    faces = [
        FaceCrop(frame.index, n, face.track, face.p_fake, dict(face.models), crops[key])
        for frame in answer.frames
        for n, face in enumerate(frame.faces)
        if face.track in decisive and (key := (frame.index, n)) in crops
    ]
    return Record(
        source=source,
        sha256=answer.sha256,
        verdict=answer.verdict,
        score=answer.score,
        scores=scores_of(answer),
        faces=spread(faces, max_faces),
        explanations=explained or None,
    )


def of_live(
    verdict: Mapping[str, Any],
    windows: Mapping[int, Sequence[FaceCrop]],
    threshold: float,
    max_faces: int,
) -> Record:
    """A live session's running verdict (judge.Running.verdict's dict) and each open track's
    window of faces: the scores of all, the crops of the decisive track's (the most fake:
    no live track is short)."""
    tracks = verdict["tracks"]
    decisive = max(tracks, key=lambda t: t["score"])["id"] if tracks else None
    scores = {
        "threshold": threshold,
        **{name: verdict[name] for name in EXTRA_SCORE_FIELDS if name in verdict},
        "tracks": [t | {"decisive": t["id"] == decisive} for t in tracks],
        "faces": [
            {"frame": f.frame, "face": f.face, "track": f.track, "p_fake": f.p_fake}
            | {"models": f.models}
            for window in windows.values()
            for f in window
        ],
    }
    return Record(
        source="live",
        sha256=None,
        verdict=verdict["verdict"],
        score=verdict["score"],
        scores=scores,
        faces=spread(list(windows.get(decisive, [])) if decisive is not None else [], max_faces),
    )
