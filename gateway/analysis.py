"""One upload, start to finish: decode → faces → Triton → verdict.

The same Analyzer serves the HTTP gateway and the CLI's direct gRPC mode, so
both give the same answer. CPU-bound stages run in a thread pool, never on the
event loop; progress is reported through an optional async callback.
"""

import asyncio
import base64
import contextvars
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from gateway import metrics, schemas
from gateway.aggregate import Strategy, decisive_track, score_tracks, voting_weights
from gateway.errors import ApiError
from gateway.explain import ExplainConfig, explain
from gateway.model_server import Ensemble, ModelInfo, ModelServer
from gateway.settings import Settings
from preprocess.faces import Face
from preprocess.media import Frame, Media, MediaReader
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
    explain: ExplainConfig | None = None  # None: no saliency maps
    filename: str = ""
    size: int | None = None  # the uploaded file's bytes and SHA-256, for reports
    sha256: str | None = None
    request_id: str = ""
    upload_ms: float = 0.0  # receiving the upload, before the analysis


def parse_models(models: str | None) -> tuple[str, ...] | None:
    """ "meso4, xception" -> ("meso4", "xception"); empty or None -> the ensemble."""
    if models is None or not models.strip():
        return None
    return tuple(m.strip() for m in models.split(",") if m.strip())


def options_for(
    settings: Settings,
    models: str | None = None,
    frames: int | None = None,
    threshold: float | None = None,
    *,
    thumbnails: bool = False,
    explain: bool = False,
    filename: str = "",
    size: int | None = None,
    sha256: str | None = None,
    request_id: str = "",
    upload_ms: float = 0.0,
) -> Options:
    """A request's options: what it asked for, the settings' defaults for the rest."""
    return Options(
        frames=frames or settings.frames,
        threshold=settings.threshold if threshold is None else threshold,
        models=parse_models(models),
        thumbnails=thumbnails,
        explain=settings.explain_config() if explain else None,
        filename=filename,
        size=size,
        sha256=sha256,
        request_id=request_id,
        upload_ms=upload_ms,
    )


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


@dataclass(frozen=True)
class Selection:
    """The models one request is judged by, and their normalised vote weights."""

    ensemble: Ensemble
    members: list[str]
    weights: dict[str, float]


class Analyzer:
    def __init__(
        self,
        reader: MediaReader,
        extractor: FaceExtractor,
        server: ModelServer,
        executor: Executor,
        strategy: Strategy | None = None,
        chunk: int = 4,
    ) -> None:
        self.reader = reader
        self.extractor = extractor
        self.server = server
        self.executor = executor
        self.strategy = strategy or Strategy()
        self.chunk = chunk  # faces per Triton request while the clip is still being read

    async def analyze(
        self, path: Path, options: Options, emit: Emit | None = None
    ) -> schemas.DetectAnswer:
        emit = emit or _silent
        clock = Clock.started()
        clock.timings["upload"] = round(options.upload_ms, 1)
        selection = select_models(await self.server.ensemble(), options.models)
        loop = asyncio.get_running_loop()

        t = time.perf_counter()
        score = (
            self.server.score_with_ensemble
            if options.models is None
            else self.server.score_with_members
        )
        scoring = StreamedScoring(lambda crops: score(crops, selection.members), self.chunk)
        early = EarlyFaces(self.extractor, self.executor, loop, scoring.add)
        try:
            media = await loop.run_in_executor(
                self.executor, self.reader.read, path, options.frames, early.submit
            )
            t = clock.stage("decode", t)
            facts = media_facts(media).model_dump()
            await emit({"event": "decoded", "media": facts, "frames": len(media.frames)})
            found = await asyncio.gather(*(early.faces(f) for f in media.frames))
            tracks = link_tracks([f.faces for f in found])
            t = clock.stage("detect", t)
            report = Report(selection, options, media, found)
            metrics.FACES.observe(len(report.faces))
            await emit({"event": "faces", "faces": len(report.faces), "tracks": len(tracks)})
            if not report.faces:
                clock.stage("total", clock.start)
                return report.faceless(clock)

            total = len(report.faces)

            async def progress(done: int) -> None:
                await emit({"event": "inference", "done": min(done, total), "total": total})

            await progress(scoring.done)
            by_face = await scoring.results(progress)
        finally:
            early.cancel()
            scoring.cancel()
        t = clock.stage("infer", t)

        crops = np.stack([found[p].crops[i] for p, i in report.faces])
        keys = [(found[p].index, i) for p, i in report.faces]
        scores = {name: np.array([by_face[k][name] for k in keys]) for name in by_face[keys[0]]}
        answer = report.scored(tracks, crops, scores, self.strategy, clock)
        t = clock.stage("aggregate", t)
        if options.explain is not None:
            face_crops = dict(zip(keys, crops, strict=True))
            answer.explanations = await explain(
                answer, face_crops, self.server.score_with_members, options.explain
            )
            clock.stage("explain", t)
        clock.stage("total", clock.start)
        answer.timings_ms = schemas.Timings(**clock.timings)
        return answer


FaceKey = tuple[int, int]  # (frame index in the clip, face number in the frame)
FaceScores = dict[str, float]  # model (or "ensemble") -> P(fake)


class StreamedScoring:
    """Faces go to Triton in chunks as soon as they are found, so inference overlaps
    decoding and detection instead of waiting for the last frame."""

    def __init__(
        self, score: Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]], chunk: int
    ) -> None:
        self.score = score
        self.chunk = chunk
        self.waiting: list[tuple[FaceKey, np.ndarray]] = []
        self.tasks: list[asyncio.Task[dict[FaceKey, FaceScores]]] = []
        self.done = 0  # faces scored so far
        self.progress: Callable[[int], Awaitable[None]] | None = None
        self.closed = False

    def add(self, found: FrameFaces) -> None:
        """One frame's faces (on the event loop); a full chunk is sent at once."""
        if self.closed:
            return
        self.waiting += [((found.index, i), crop) for i, crop in enumerate(found.crops)]
        while len(self.waiting) >= self.chunk:
            self._send(self.chunk)

    def _send(self, count: int) -> None:
        sent, self.waiting = self.waiting[:count], self.waiting[count:]
        self.tasks.append(asyncio.create_task(self._scored(sent)))

    async def _scored(self, sent: list[tuple[FaceKey, np.ndarray]]) -> dict[FaceKey, FaceScores]:
        result = await self.score(np.stack([crop for _, crop in sent]))
        self.done += len(sent)
        if self.progress is not None:
            await self.progress(self.done)
        return {key: {m: float(v[n]) for m, v in result.items()} for n, (key, _) in enumerate(sent)}

    async def results(
        self, progress: Callable[[int], Awaitable[None]]
    ) -> dict[FaceKey, FaceScores]:
        """Every face's scores, once all final frames' faces were added; reports progress.
        Faces of frames the reader dropped that arrive later are not scored."""
        self.progress, self.closed = progress, True
        if self.waiting:
            self._send(len(self.waiting))
        scored: dict[FaceKey, FaceScores] = {}
        for part in await asyncio.gather(*self.tasks):
            scored |= part
        return scored

    def cancel(self) -> None:
        """Stop what is still running; a failure nobody awaited is not worth a warning."""
        self.closed = True
        for task in self.tasks:
            if task.done() and not task.cancelled():
                task.exception()
            task.cancel()


class EarlyFaces:
    """Face detection started on each frame as the reader decodes it, so detection runs
    while the rest of the clip is decoding instead of after it; each frame's faces are
    handed to `found` (on the event loop) as soon as they are known."""

    def __init__(
        self,
        extractor: FaceExtractor,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
        found: Callable[[FrameFaces], None],
    ) -> None:
        self.extractor = extractor
        self.executor = executor
        self.loop = loop
        self.found = found
        self.started: dict[int, Future[FrameFaces]] = {}
        # The request's context (its trace span, its request id), for `found` and
        # the Triton calls it starts: worker threads do not carry it.
        self.context = contextvars.copy_context()

    def submit(self, frame: Frame) -> None:
        """MediaReader's on_frame: called from the decoding thread."""
        future = self.executor.submit(self.extractor.extract_frame, frame)
        future.add_done_callback(self._hand_over)
        self.started[frame.index] = future

    def _hand_over(self, future: Future[FrameFaces]) -> None:
        # A worker thread: the faces go to the event loop, which owns the scoring.
        if not future.cancelled() and future.exception() is None:
            self.loop.call_soon_threadsafe(self.found, future.result(), context=self.context)

    async def faces(self, frame: Frame) -> FrameFaces:
        """The faces of one of the reader's final frames: found early, or now (a truncated
        file is re-sampled after decoding, so some final frames were never handed over)."""
        future = self.started.pop(frame.index, None)
        if future is None:
            self.submit(frame)
            future = self.started.pop(frame.index)
        return await asyncio.wrap_future(future)

    def cancel(self) -> None:
        """Drop the work on frames that were not needed (or a request that failed)."""
        for future in self.started.values():
            future.cancel()
        self.started.clear()


@dataclass(frozen=True)
class Report:
    """Turns one request's faces and scores into the API's answer."""

    selection: Selection
    options: Options
    media: Media
    found: Sequence[FrameFaces]

    @cached_property
    def faces(self) -> list[tuple[int, int]]:
        """(frame position, face index) of every face, in batch order."""
        return [(p, i) for p, frame in enumerate(self.found) for i in range(len(frame.faces))]

    def faceless(self, clock: Clock) -> schemas.DetectAnswer:
        frames = [
            schemas.FrameResult(index=f.index, timestamp_s=f.timestamp_s, faces=[])
            for f in self.found
        ]
        return self.answer(clock, "no_face", None, {}, [], frames)

    def scored(
        self,
        tracks: Sequence[Track],
        crops: np.ndarray,
        scores: dict[str, np.ndarray],
        strategy: Strategy,
        clock: Clock,
    ) -> schemas.DetectAnswer:
        members, weights = self.selection.members, self.selection.weights
        position = {face: n for n, face in enumerate(self.faces)}
        track_faces = [[position[link] for link in t.links] for t in tracks]
        track_of = {n: tid for tid, ns in enumerate(track_faces) for n in ns}
        model_scores = {m: scores[m] for m in members}
        per_track = score_tracks(track_faces, model_scores, weights, strategy)
        decisive = decisive_track(per_track)
        face_vote = scores.get("ensemble")
        if face_vote is None:
            face_vote = sum(weights[m] * model_scores[m] for m in members)

        def face(p: int, i: int, found: Face) -> schemas.Face:
            n = position[(p, i)]
            return schemas.Face(
                track=track_of[n],
                box=[round(float(v), 1) for v in found.box],
                detector_score=round(float(found.score), 4),
                p_fake=float(face_vote[n]),
                models={m: float(model_scores[m][n]) for m in members},
                thumbnail=thumbnail(crops[n]) if self.options.thumbnails else None,
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
            )
            for t in per_track
        ]
        verdict = "fake" if decisive.score >= self.options.threshold else "real"
        return self.answer(clock, verdict, decisive.score, decisive.models, results, frames)

    def answer(
        self,
        clock: Clock,
        verdict: str,
        score: float | None,
        model_scores: dict[str, float],
        tracks: list[schemas.TrackResult],
        frames: list[schemas.FrameResult],
    ) -> schemas.DetectAnswer:
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
            verdict=verdict,  # type: ignore[arg-type]
            score=score,
            threshold=self.options.threshold,
            ensemble=ensemble.name if self.options.models is None else None,
            models=models,
            tracks=tracks,
            frames=frames,
            media=media_facts(self.media),
            timings_ms=schemas.Timings(**clock.timings),
            notes=notes(self.selection),
        )


def model_summary(info: ModelInfo) -> schemas.ModelSummary:
    return schemas.ModelSummary.model_validate(info, from_attributes=True)


def select_models(ensemble: Ensemble, requested: Sequence[str] | None) -> Selection:
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
    return Selection(ensemble, members, weights)


def notes(selection: Selection) -> list[str]:
    ensemble, members, weights = selection.ensemble, selection.members, selection.weights
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
    return schemas.MediaFacts.model_validate(media.info, from_attributes=True)


def thumbnail(crop: np.ndarray) -> str:
    small = cv2.resize(crop, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
