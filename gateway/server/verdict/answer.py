"""Building the API's answer from one request's faces and scores: the Report,
media facts, stage timings (Clock) and face thumbnails."""

import base64
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property

import cv2
import numpy as np

from gateway.server import metrics, schemas
from gateway.server.options import Options
from gateway.server.schemas import Verdict
from gateway.server.verdict.aggregate import Strategy, is_short
from gateway.server.verdict.judge import Judge
from gateway.server.verdict.rules import Doubts, Evidence, no_face, with_credentials
from gateway.server.verdict.selection import Selection, model_summary, notes
from preprocess.credentials import ContentCredentials
from preprocess.faces import Face
from preprocess.media import MediaInfo
from preprocess.pipeline import FrameFaces
from preprocess.tracks import Track

THUMBNAIL_PX = 96


@dataclass
class Clock:
    """Stage timings in milliseconds, also recorded as Prometheus histograms."""

    start: float
    timings: dict[str, float]

    @classmethod
    def started(cls) -> "Clock":
        return cls(time.perf_counter(), {})

    def stage(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round((now - since) * 1000, 1)
        metrics.STAGE_SECONDS.labels(name).observe(now - since)
        return now


@dataclass(frozen=True)
class Report:
    """Turns one request's faces and scores into the API's answer."""

    selection: Selection
    options: Options
    info: MediaInfo
    found: Sequence[FrameFaces]
    thumbnails: dict[tuple[int, int], str]  # (frame index, face number): only if asked for
    doubts: Doubts = field(default_factory=Doubts)
    # The file's content credentials, when read: they may override the faces' verdict.
    credentials: ContentCredentials | None = None

    @cached_property
    def faces(self) -> list[tuple[int, int]]:
        """(frame position, face index) of every face, in batch order."""
        return [(p, i) for p, frame in enumerate(self.found) for i in range(len(frame.faces))]

    def faceless(self, clock: Clock) -> schemas.DetectAnswer:
        frames = [
            schemas.FrameResult(index=f.index, timestamp_s=f.timestamp_s, faces=[])
            for f in self.found
        ]
        judged = ("no_face", [no_face(len(frames))])
        return self.answer(clock, judged, (None, None), {}, [], frames)

    def evidence(self, min_share: float) -> Evidence:
        """The frames sampled and with faces, the frames the file has, each face's size."""
        return Evidence(
            sampled_frames=len(self.found),
            face_frames=sum(1 for frame in self.found if frame.faces),
            available_frames=self.info.frame_count,
            sides=[max(f.width, f.height) for frame in self.found for f in frame.faces],
            min_share=min_share,
        )

    def scored(
        self,
        tracks: Sequence[Track],
        scores: dict[str, np.ndarray],
        strategy: Strategy,
        clock: Clock,
    ) -> schemas.DetectAnswer:
        members = self.selection.members
        judge = Judge(self.selection, strategy, self.options.threshold, self.doubts)
        position = {face: n for n, face in enumerate(self.faces)}
        track_faces = [[position[link] for link in t.links] for t in tracks]
        track_of = {n: tid for tid, ns in enumerate(track_faces) for n in ns}
        model_scores = {m: scores[m] for m in members}
        sampled = len(self.found)
        judged = judge.tracks(track_faces, model_scores, self.evidence(strategy.min_track_share))
        decisive = judged.decisive
        assert decisive is not None  # faces, so tracks: faceless() answers the rest
        face_vote = judge.vote(model_scores, scores.get("ensemble"))

        def face(p: int, i: int, found: Face) -> schemas.FaceResult:
            n = position[(p, i)]
            return schemas.FaceResult(
                track=track_of[n],
                box=[round(float(v), 1) for v in found.box],
                detector_score=round(float(found.score), 4),
                p_fake=float(face_vote[n]),
                models={m: float(model_scores[m][n]) for m in members},
                thumbnail=self.thumbnails.get((self.found[p].index, i)),
            )

        frames = [
            schemas.FrameResult(
                index=frame.index,
                timestamp_s=frame.timestamp_s,
                faces=[face(p, i, f) for i, f in enumerate(frame.faces)],
            )
            for p, frame in enumerate(self.found)
        ]
        index = [self.found[p].index for p, _ in self.faces]
        results = [
            schemas.TrackResult(
                id=t.track,
                score=t.score,
                models=t.models,
                frames=sorted({index[n] for n in t.faces}),
                share=round(len(t.faces) / sampled, 4),
                short=is_short(t, sampled, strategy.min_track_share),
                decisive=t.track == decisive.track,
            )
            for t in judged.tracks
        ]
        judgement = (judged.verdict, judged.reasons)
        scores = (judged.score, judged.raw_score)
        return self.answer(clock, judgement, scores, decisive.models, results, frames)

    def answer(
        self,
        clock: Clock,
        judged: tuple[Verdict, list[schemas.Reason]],
        score: tuple[float | None, float | None],  # the video's: calibrated, raw
        model_scores: dict[str, float],
        tracks: list[schemas.TrackResult],
        frames: list[schemas.FrameResult],
    ) -> schemas.DetectAnswer:
        verdict, reasons = with_credentials(*judged, self.credentials)
        metrics.VERDICTS.labels(verdict).inc()
        ensemble, weights = self.selection.ensemble, self.selection.weights
        models = [
            schemas.ModelScore(
                # the weight this request used: renormalised over the models called
                **model_summary(ensemble.member(name)).model_dump() | {"weight": weights[name]},
                score=model_scores.get(name),
                voting=weights[name] > 0,
            )
            for name in self.selection.members
        ]
        return schemas.DetectAnswer(
            request_id=self.options.request_id,
            filename=self.options.filename,
            bytes=self.options.size,
            sha256=self.options.sha256,
            verdict=verdict,
            reasons=reasons,
            score=score[0],
            raw_score=score[1],
            threshold=self.options.threshold,
            ensemble=ensemble.name if self.selection.via_ensemble else None,
            models=models,
            tracks=tracks,
            frames=frames,
            media=media_facts(self.info),
            timings_ms=schemas.Timings(**clock.timings),
            notes=notes(self.selection),
            skipped=[
                schemas.SkippedModel(name=name, reason=reason)
                for name, reason in self.selection.skipped.items()
            ],
            content_credentials=credentials_facts(self.credentials),
        )


def media_facts(info: MediaInfo) -> schemas.MediaFacts:
    return schemas.MediaFacts.model_validate(info, from_attributes=True)


def credentials_facts(found: ContentCredentials | None) -> schemas.ContentCredentials | None:
    """The answer's `content_credentials`: absent (None) when the file carries none."""
    if found is None:
        return None
    return schemas.ContentCredentials.model_validate(asdict(found))


def thumbnail(crop: np.ndarray) -> str:
    small = cv2.resize(crop, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
