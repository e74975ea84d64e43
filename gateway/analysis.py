"""One upload, start to finish: decode → faces → Triton → verdict.

The same Analyzer serves the HTTP gateway and the CLI's direct gRPC mode, so
both give the same answer. CPU-bound stages run in a thread pool, never on the
event loop; progress is reported through an optional async callback.
"""

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gateway import metrics, schemas
from gateway.aggregate import Strategy, decisive_track, score_tracks, voting_weights
from gateway.errors import ApiError
from gateway.model_server import Ensemble, ModelServer
from preprocess.media import Media, MediaReader
from preprocess.pipeline import FaceExtractor, FrameFaces
from preprocess.tracks import Track, link_tracks

Emit = Callable[[dict], Awaitable[None]]
THUMBNAIL_PX = 96


@dataclass(frozen=True)
class Options:
    frames: int
    threshold: float
    models: tuple[str, ...] | None = None  # None: the whole ensemble
    thumbnails: bool = False
    filename: str = ""
    request_id: str = ""


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


async def _silent(event: dict) -> None:
    return None


class Analyzer:
    def __init__(
        self,
        reader: MediaReader,
        extractor: FaceExtractor,
        server: ModelServer,
        executor: Executor,
        strategy: Strategy | None = None,
    ) -> None:
        self.reader = reader
        self.extractor = extractor
        self.server = server
        self.executor = executor
        self.strategy = strategy or Strategy()

    async def analyze(
        self, path: Path, options: Options, emit: Emit | None = None
    ) -> schemas.DetectAnswer:
        emit = emit or _silent
        clock = Clock.started()
        ensemble = await self.server.ensemble()
        members, weights = select_models(ensemble, options.models)
        loop = asyncio.get_running_loop()

        t = time.perf_counter()
        media = await loop.run_in_executor(self.executor, self.reader.read, path, options.frames)
        t = clock.stage("decode", t)
        await emit(
            {
                "event": "decoded",
                "media": media_facts(media).model_dump(),
                "frames": len(media.frames),
            }
        )

        found = await asyncio.gather(
            *(
                loop.run_in_executor(self.executor, self.extractor.extract_frame, f)
                for f in media.frames
            )
        )
        tracks = link_tracks([f.faces for f in found])
        t = clock.stage("detect", t)
        faces = [(p, i) for p, frame in enumerate(found) for i in range(len(frame.faces))]
        metrics.FACES.observe(len(faces))
        await emit({"event": "faces", "faces": len(faces), "tracks": len(tracks)})
        if not faces:
            clock.stage("total", clock.start)
            return self.no_face(media, found, options, ensemble, members, weights, clock)

        crops = np.stack([found[p].crops[i] for p, i in faces])

        async def progress(done: int, total: int) -> None:
            await emit({"event": "inference", "done": done, "total": total})

        await emit({"event": "inference", "done": 0, "total": len(crops)})
        if options.models is None:
            scores = await self.server.score_with_ensemble(crops, members, progress)
        else:
            scores = await self.server.score_with_members(crops, members, progress)
        t = clock.stage("infer", t)

        answer = self.build(
            media, found, tracks, faces, crops, scores, options, ensemble, members, weights, clock
        )
        clock.stage("aggregate", t)
        clock.stage("total", clock.start)
        answer.timings_ms = schemas.Timings(**clock.timings)
        return answer

    def build(
        self,
        media: Media,
        found: Sequence[FrameFaces],
        tracks: Sequence[Track],
        faces: list[tuple[int, int]],
        crops: np.ndarray,
        scores: dict[str, np.ndarray],
        options: Options,
        ensemble: Ensemble,
        members: list[str],
        weights: dict[str, float],
        clock: Clock,
    ) -> schemas.DetectAnswer:
        position = {face: n for n, face in enumerate(faces)}
        track_faces = [[position[(p, i)] for p, i in track_members(t)] for t in tracks]
        track_of = {n: tid for tid, ns in enumerate(track_faces) for n in ns}
        model_scores = {m: scores[m] for m in members}
        per_track = score_tracks(track_faces, model_scores, weights, self.strategy)
        decisive = decisive_track(per_track)
        face_vote = scores.get("ensemble")
        if face_vote is None:
            face_vote = sum(weights[m] * model_scores[m] for m in members)
        score = decisive.score
        frames = []
        for p, frame in enumerate(found):
            frame_faces = []
            for i, face in enumerate(frame.faces):
                n = position[(p, i)]
                frame_faces.append(
                    schemas.Face(
                        track=track_of[n],
                        box=[round(float(v), 1) for v in face.box],
                        detector_score=round(float(face.score), 4),
                        p_fake=float(face_vote[n]),
                        models={m: float(model_scores[m][n]) for m in members},
                        thumbnail=thumbnail(crops[n]) if options.thumbnails else None,
                    )
                )
            frames.append(
                schemas.FrameResult(
                    index=frame.index, timestamp_s=frame.timestamp_s, faces=frame_faces
                )
            )
        frame_index = [f.index for f in found]
        return self.answer(
            options,
            ensemble,
            members,
            weights,
            media,
            clock,
            verdict="fake" if score >= options.threshold else "real",
            score=score,
            model_scores=decisive.models,
            tracks=[
                schemas.TrackResult(
                    id=t.track,
                    score=t.score,
                    models=t.models,
                    frames=sorted({frame_index[faces[n][0]] for n in t.faces}),
                )
                for t in per_track
            ],
            frames=frames,
        )

    def no_face(
        self,
        media: Media,
        found: Sequence[FrameFaces],
        options: Options,
        ensemble: Ensemble,
        members: list[str],
        weights: dict[str, float],
        clock: Clock,
    ) -> schemas.DetectAnswer:
        frames = [
            schemas.FrameResult(index=f.index, timestamp_s=f.timestamp_s, faces=[]) for f in found
        ]
        return self.answer(
            options,
            ensemble,
            members,
            weights,
            media,
            clock,
            verdict="no_face",
            score=None,
            model_scores={},
            tracks=[],
            frames=frames,
        )

    def answer(
        self,
        options: Options,
        ensemble: Ensemble,
        members: list[str],
        weights: dict[str, float],
        media: Media,
        clock: Clock,
        *,
        verdict: str,
        score: float | None,
        model_scores: dict[str, float],
        tracks: list[schemas.TrackResult],
        frames: list[schemas.FrameResult],
    ) -> schemas.DetectAnswer:
        metrics.VERDICTS.labels(verdict).inc()
        models = []
        for name in members:
            info = ensemble.member(name)
            models.append(
                schemas.ModelScore(
                    name=info.name,
                    version=info.version,
                    ready=info.ready,
                    input_size=info.input_size,
                    trained=info.trained,
                    weight=weights[name],
                    weights=schemas.Provenance(**info.weights),
                    score=model_scores.get(name),
                    voting=weights[name] > 0,
                )
            )
        return schemas.DetectAnswer(
            request_id=options.request_id,
            filename=options.filename,
            verdict=verdict,  # type: ignore[arg-type]
            score=score,
            threshold=options.threshold,
            ensemble=ensemble.name if options.models is None else None,
            models=models,
            tracks=tracks,
            frames=frames,
            media=media_facts(media),
            timings_ms=schemas.Timings(**clock.timings),
            notes=notes(ensemble, members, weights),
        )


def select_models(
    ensemble: Ensemble, requested: Sequence[str] | None
) -> tuple[list[str], dict[str, float]]:
    """The models to call and their normalised vote weights."""
    available = [m.name for m in ensemble.members]
    members = available if requested is None else list(dict.fromkeys(requested))
    unknown = [m for m in members if m not in available]
    if unknown or not members:
        raise ApiError(
            422,
            "unknown_model",
            f"unknown model(s) {unknown or '(none given)'}; this server has {available}",
        )
    weights = voting_weights({m.name: m.weight for m in ensemble.members}, members)
    if weights is None:
        untrained = ", ".join(members)
        raise ApiError(
            422,
            "no_voting_model",
            f"none of {untrained} votes (untrained or weight 0): their scores cannot "
            "make a verdict; add a trained model such as "
            f"{[m.name for m in ensemble.members if m.weight > 0]}",
        )
    return members, weights


def notes(ensemble: Ensemble, members: list[str], weights: dict[str, float]) -> list[str]:
    result = []
    untrained = [m for m in members if not ensemble.member(m).trained]
    if untrained:
        result.append(
            f"{', '.join(untrained)}: random weights (no trained checkpoint was exported); "
            "their scores are reported for completeness and mean nothing"
        )
    silent = [m for m in members if weights[m] == 0 and m not in untrained]
    if silent:
        result.append(f"{', '.join(silent)}: vote weight 0, reported only")
    return result


def media_facts(media: Media) -> schemas.MediaFacts:
    info = media.info
    return schemas.MediaFacts(
        kind=info.kind,
        format=info.format,
        width=info.width,
        height=info.height,
        fps=info.fps,
        frame_count=info.frame_count,
        duration_s=info.duration_s,
    )


def track_members(track: Track) -> list[tuple[int, int]]:
    """(frame position, face index) pairs of a track."""
    return list(track.links)


def thumbnail(crop: np.ndarray) -> str:
    small = cv2.resize(crop, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
