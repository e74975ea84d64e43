"""One upload, start to finish: decode → faces → Triton → verdict.

The same Analyzer serves the HTTP gateway and the CLI's direct gRPC mode, so
both give the same answer. CPU-bound stages run in a thread pool, never on the
event loop; progress is reported through an optional async callback.

Bounded per request: each decoded frame is reduced at once to its faces' crops and
dropped; crops are dropped once Triton scored them (a thumbnail kept if asked for);
a deadline and a cancel flag are checked per frame, and an analysis returns only once
every thread it started has (so a freed admission slot means freed CPU).
"""

import asyncio
import base64
import contextvars
import functools
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures import wait as wait_threads
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import anyio
import cv2
import numpy as np

from gateway import metrics, schemas
from gateway.aggregate import (
    Strategy,
    decisive_track,
    is_short,
    score_tracks,
    vote,
    voting_weights,
)
from gateway.errors import ApiError
from gateway.explain import ExplainConfig, explain
from gateway.model_server import Ensemble, ModelInfo, ModelServer
from gateway.settings import Settings
from preprocess.faces import Face, load_detector
from preprocess.media import Frame, MediaInfo, MediaLimitExceeded, MediaReader
from preprocess.pipeline import FaceExtractor, FrameFaces
from preprocess.sparse import EVERY_FRAME, SparseConfig, follow, interpolate, is_key
from preprocess.tracks import Track, link_tracks

Emit = Callable[[dict], Awaitable[None]]
THUMBNAIL_PX = 96


class Cancelled(Exception):
    """The analysis was stopped from outside: its client went away."""


def analysis_timeout(seconds: float) -> ApiError:
    return ApiError(
        504,
        "analysis_timeout",
        f"the analysis took over {seconds:g} s: send a shorter clip or ask for fewer frames",
    )


class Stop:
    """One request's deadline and cancel flag, checked by its threads before each frame:
    `check` raises what stopped it (a timeout, a cancel, a budget spent), so decoding and
    detection end within a frame."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._error: Exception | None = None
        self._lock = threading.Lock()

    def fail(self, error: Exception) -> None:
        with self._lock:
            self._error = self._error or error

    def cancel(self) -> None:
        self.fail(Cancelled("the analysis was cancelled"))

    def check(self) -> None:
        if self._error is None and time.monotonic() > self.deadline:
            self.fail(analysis_timeout(self.timeout_s))
        if self._error is not None:
            raise self._error

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class Options:
    frames: int
    threshold: float
    models: tuple[str, ...] | None = None  # None: the voting members; ("all",): every one
    thumbnails: bool = False
    explain: ExplainConfig | None = None  # None: no saliency maps
    filename: str = ""
    size: int | None = None  # the uploaded file's bytes and SHA-256, for reports
    sha256: str | None = None
    request_id: str = ""
    upload_ms: float = 0.0  # receiving the upload, before the analysis


ALL_MODELS = "all"  # models=all: every member, also those that cannot vote


def parse_models(models: str | None) -> tuple[str, ...] | None:
    """ "meso4, xception" -> ("meso4", "xception"); empty or None -> the voting members
    (the whole ensemble when every member votes); "all" -> ("all",): the whole ensemble."""
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
    """The models one request is judged by, and their normalised vote weights; by default
    the members that cannot vote are `skipped` (name -> why), not run."""

    ensemble: Ensemble
    members: list[str]
    weights: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    via_ensemble: bool = False  # one call to the Triton ensemble, else each member directly

    @property
    def groups(self) -> dict[str, str] | None:
        """Member -> specialist group when the vote is max_of_groups, else None."""
        if self.ensemble.rule != "max_of_groups":
            return None
        return {m: self.ensemble.member(m).group for m in self.members}


class Analyzer:
    def __init__(
        self,
        reader: MediaReader,
        extractor: FaceExtractor,
        server: ModelServer,
        executor: Executor,
        strategy: Strategy | None = None,
        chunk: int = 4,
        timeout_s: float = 300.0,
        max_faces: int = 512,
        frames_ahead: int = 2,
        sparse: SparseConfig = EVERY_FRAME,
    ) -> None:
        self.reader = reader
        self.extractor = extractor
        self.server = server
        self.executor = executor
        self.strategy = strategy or Strategy()
        self.chunk = chunk  # faces per Triton request while the clip is still being read
        self.timeout_s = timeout_s  # one analysis's deadline: 504 beyond
        self.max_faces = max_faces  # faces one request may hold: 422 beyond
        self.frames_ahead = frames_ahead  # decoded frames waiting for detection, per request
        self.sparse = sparse  # which sampled frames the detector runs on

    @classmethod
    def from_settings(cls, settings: Settings, executor: Executor) -> "Analyzer":
        """The analyzer the gateway, the job workers and the CLI's direct mode all use: one
        place, so every entry point gets the same models, detector and bounds. Call it on the
        event loop that will run it (the gRPC aio channel belongs to that loop)."""
        server = ModelServer(
            settings.triton_url,
            settings.ensemble,
            settings.triton_timeout_s,
            settings.triton_retries,
            settings.max_batch,
        )
        extractor = FaceExtractor(load_detector(settings.detector_config()), settings.crop_config())
        return cls(
            MediaReader(settings.media_limits()),
            extractor,
            server,
            executor,
            chunk=settings.infer_chunk,
            timeout_s=settings.analysis_timeout_s,
            max_faces=settings.max_request_faces,
            frames_ahead=settings.workers,
            sparse=SparseConfig(every=settings.detect_every),
        )

    async def analyze(
        self, path: Path, options: Options, emit: Emit | None = None
    ) -> schemas.DetectAnswer:
        """The answer; ApiError 504 past the deadline. Cancelled (the client went away), it
        stops its threads and returns only once they have."""
        stop = Stop(self.timeout_s)
        try:
            async with asyncio.timeout(stop.remaining_s()):
                return await self._analyze(path, options, emit or _silent, stop)
        except TimeoutError:
            raise analysis_timeout(self.timeout_s) from None

    async def _analyze(
        self, path: Path, options: Options, emit: Emit, stop: Stop
    ) -> schemas.DetectAnswer:
        clock = Clock.started()
        clock.timings["upload"] = round(options.upload_ms, 1)
        selection = select_models(await self.server.ensemble(), options.models)
        loop = asyncio.get_running_loop()

        t = time.perf_counter()
        score = (
            self.server.score_with_ensemble
            if selection.via_ensemble
            else self.server.score_with_members
        )
        # Explanations need the decisive faces' crops after the verdict: only then are the
        # crops kept past their scoring (at most max_faces of them, as for every request).
        scoring = StreamedScoring(
            lambda crops: score(crops, selection.members),
            self.chunk,
            keep_crops=options.explain is not None,
        )
        early = EarlyFaces(
            self.extractor,
            self.executor,
            loop,
            scoring.add,
            stop,
            thumbnails=options.thumbnails,
            max_faces=self.max_faces,
            ahead=self.frames_ahead,
            sparse=self.sparse,
        )
        try:
            reading = self.executor.submit(
                self.reader.scan, path, options.frames, early.submit, stop.check
            )
            early.threads.append(reading)
            scan = await asyncio.wrap_future(reading)
            t = clock.stage("decode", t)
            facts = media_facts(scan.info).model_dump()
            await emit({"event": "decoded", "media": facts, "frames": len(scan.indices)})
            found = await early.faces(scan.indices)
            tracks = link_tracks([f.faces for f in found])
            t = clock.stage("detect", t)
            report = Report(selection, options, scan.info, found, early.thumbnails)
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
            stop.cancel()  # nothing is left to do once here: threads still running stop
            scoring.cancel()
            await early.finish()
        t = clock.stage("infer", t)

        keys = [(found[p].index, i) for p, i in report.faces]
        scores = {name: np.array([by_face[k][name] for k in keys]) for name in by_face[keys[0]]}
        answer = report.scored(tracks, scores, self.strategy, clock)
        t = clock.stage("aggregate", t)
        if options.explain is not None:
            answer.explanations = await explain(
                answer,
                scoring.crops,
                self.server.score_with_members,
                options.explain,
                selection.groups,
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
        self,
        score: Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]],
        chunk: int,
        keep_crops: bool = False,
    ) -> None:
        self.score = score
        self.chunk = chunk
        self.keep_crops = keep_crops
        self.crops: dict[FaceKey, np.ndarray] = {}  # scored crops, kept only if keep_crops
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
        if self.keep_crops:
            self.crops |= {(found.index, i): crop for i, crop in enumerate(found.crops)}
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
    while the rest of the clip is decoding instead of after it; each frame's faces (with
    their crops) are handed to `found` on the event loop as soon as they are known, and
    only the faces (and thumbnails, if asked for) are kept: never the frame, nor a crop.

    At most `ahead` frames wait for a detection thread; beyond, the decoding thread detects
    the frame itself, so a fast decoder never piles up full-resolution frames."""

    def __init__(
        self,
        extractor: FaceExtractor,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
        found: Callable[[FrameFaces], None],
        stop: Stop,
        *,
        thumbnails: bool = False,
        max_faces: int = 512,
        ahead: int = 2,
        sparse: SparseConfig = EVERY_FRAME,
    ) -> None:
        self.extractor = extractor
        self.executor = executor
        self.loop = loop
        self.found = found
        self.stop = stop
        self.want_thumbnails = thumbnails
        self.max_faces = max_faces
        self.ahead = threading.BoundedSemaphore(ahead)
        self.threads: list[Future] = []  # every piece of work started: finish() awaits them
        self.started: dict[int, Future[FrameFaces]] = {}
        # The request's context (its trace span, its request id), for `found` and
        # the Triton calls it starts: worker threads do not carry it.
        self.context = contextvars.copy_context()
        self.thumbnails: dict[FaceKey, str] = {}
        self.face_count = 0
        self._lock = threading.Lock()
        self.sparse = sparse
        self.position = 0  # sampled frames handed over so far
        self.waiting: list[tuple[Frame, Future[FrameFaces]]] = []  # since the last key frame
        self.last_key: Future[FrameFaces] | None = None

    def submit(self, frame: Frame) -> None:
        """MediaReader's on_frame: called from the decoding thread. With sparse detection a
        frame between two key frames waits (at most `every - 1` of them) for the next key
        frame, whose thread gives it its faces."""
        self.stop.check()  # a stopped request starts nothing more
        if frame.index in self.started:  # a re-sampled truncated file hands it over again
            return
        position, self.position = self.position, self.position + 1
        if not is_key(position, self.sparse):
            waiting: Future[FrameFaces] = Future()
            self.waiting.append((frame, waiting))
            self.started[frame.index] = waiting
            return
        self._start_key(frame, inline_if_busy=True)

    def _start_key(self, frame: Frame, inline_if_busy: bool) -> None:
        between, self.waiting = self.waiting, []
        job = functools.partial(self._extract, frame, between=between, previous=self.last_key)
        if self.ahead.acquire(blocking=False):
            future = self.executor.submit(job, True)
        elif not inline_if_busy:
            future = self.executor.submit(job, False)
        else:
            future = Future()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(job(False))
            except Exception as exc:
                future.set_exception(exc)
        self.threads.append(future)
        self.started[frame.index] = future
        self.last_key = future

    def _extract(
        self,
        frame: Frame,
        queued: bool,
        between: Sequence[tuple[Frame, "Future[FrameFaces]"]] = (),
        previous: "Future[FrameFaces] | None" = None,
    ) -> FrameFaces:
        """One key frame's faces, then those of the frames waiting before it; each frame's
        crops go to `found` (the event loop, which owns the scoring); only the faces are
        returned, and kept."""
        try:
            try:
                self.stop.check()
                faces = self.extractor.extract_frame(frame)
            finally:
                if queued:
                    self.ahead.release()
            if between:
                self._fill(between, previous, faces)
            return self._found(faces)
        except BaseException as exc:
            for _, waiting in between:
                settle(waiting, exc)
            raise

    def _fill(
        self,
        between: Sequence[tuple[Frame, "Future[FrameFaces]"]],
        previous: "Future[FrameFaces] | None",
        key: FrameFaces,
    ) -> None:
        """The faces of the frames between two key frames: carried along the key frames'
        matched boxes, or detected where the two key frames disagree."""
        # The previous key frame was submitted first, so it is running or done: no deadlock.
        before = previous.result() if previous is not None else None
        pairs = None if before is None else follow(before.faces, key.faces, self.sparse.min_iou)
        for n, (frame, waiting) in enumerate(between, 1):
            self.stop.check()
            if pairs is None or before is None:
                faces = self.extractor.extract_frame(frame)
            else:
                span = key.timestamp_s - before.timestamp_s
                t = (frame.timestamp_s - before.timestamp_s) / span if span > 0 else 0.0
                t = t if 0 < t < 1 else n / (len(between) + 1)
                moved = interpolate(before.faces, key.faces, pairs, t)
                faces = self.extractor.crop_faces(frame, moved)
            settle(waiting, self._found(faces))

    def _found(self, faces: FrameFaces) -> FrameFaces:
        with self._lock:
            self.face_count += len(faces.faces)
            over = self.face_count > self.max_faces
        if over:
            self.stop.fail(
                MediaLimitExceeded(
                    f"more than {self.max_faces} faces in the frames sampled: ask for fewer "
                    "frames (or a lower max_faces per frame)"
                )
            )
            self.stop.check()
        if self.want_thumbnails:
            for i, crop in enumerate(faces.crops):
                self.thumbnails[(faces.index, i)] = thumbnail(crop)
        self.loop.call_soon_threadsafe(self.found, faces, context=self.context)
        return FrameFaces(faces.index, faces.timestamp_s, faces.faces, [])

    async def faces(self, indices: list[int]) -> list[FrameFaces]:
        """The faces of the reader's final frames, without their crops (sent to scoring)."""
        if self.waiting:  # the clip ended between key frames: its last frame is one
            last, _ = self.waiting.pop()
            self._start_key(last, inline_if_busy=False)
        found = [await asyncio.wrap_future(self.started[index]) for index in indices]
        self.stop.check()  # a budget spent by a frame the reader had dropped
        return found

    async def finish(self) -> None:
        """Until every thread this request started has returned, whatever happens to the
        caller meanwhile: the request's admission slot is free only once its CPU is."""
        for future in self.threads:
            future.cancel()  # those not started yet
        if all(f.done() for f in self.threads):
            return
        cancelled = False
        with anyio.CancelScope(shield=True):
            waiting = asyncio.ensure_future(asyncio.to_thread(self._wait_threads))
            while not waiting.done():
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    cancelled = True  # a second cancel: still wait, then pass it on
        if cancelled:
            raise asyncio.CancelledError

    def _wait_threads(self) -> None:
        # The reader may start one more piece of work before it sees the stop: wait for it too.
        while pending := [f for f in self.threads if not f.done()]:
            wait_threads(pending)


@dataclass(frozen=True)
class Report:
    """Turns one request's faces and scores into the API's answer."""

    selection: Selection
    options: Options
    info: MediaInfo
    found: Sequence[FrameFaces]
    thumbnails: dict[tuple[int, int], str]  # (frame index, face number): only if asked for

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
        scores: dict[str, np.ndarray],
        strategy: Strategy,
        clock: Clock,
    ) -> schemas.DetectAnswer:
        members, weights = self.selection.members, self.selection.weights
        position = {face: n for n, face in enumerate(self.faces)}
        track_faces = [[position[link] for link in t.links] for t in tracks]
        track_of = {n: tid for tid, ns in enumerate(track_faces) for n in ns}
        model_scores = {m: scores[m] for m in members}
        groups = self.selection.groups
        per_track = score_tracks(track_faces, model_scores, weights, strategy, groups)
        sampled = len(self.found)
        decisive = decisive_track(per_track, sampled, strategy.min_track_share)
        face_vote = scores.get("ensemble")
        if face_vote is None:
            face_vote = vote(model_scores, weights, groups)

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
        )


def model_summary(info: ModelInfo) -> schemas.ModelSummary:
    return schemas.ModelSummary.model_validate(info, from_attributes=True)


def cannot_vote(info: ModelInfo) -> str | None:
    """Why a member's score cannot move a verdict, or None if it votes."""
    if not info.trained and info.weight <= 0:
        return "random weights (no trained checkpoint was exported): it cannot vote"
    if info.weight <= 0:
        return "vote weight 0: it cannot vote"
    return None


def select_models(ensemble: Ensemble, requested: Sequence[str] | None) -> Selection:
    """The models to call and their normalised vote weights.

    None (the default) runs only the members that vote: the ensemble when all of them do,
    else those members called directly, the others `skipped` (a random-weight member costs
    the most CPU and cannot change the answer). ("all",) runs the whole ensemble; a list
    runs those members."""
    available = [m.name for m in ensemble.members]
    skipped: dict[str, str] = {}
    via_ensemble = requested is None or tuple(requested) == (ALL_MODELS,)
    if requested is None:
        reasons = {m.name: cannot_vote(m) for m in ensemble.members}
        skipped = {name: why for name, why in reasons.items() if why is not None}
        members = [name for name in available if name not in skipped] or available
        if len(members) == len(available):
            skipped = {}
    elif tuple(requested) == (ALL_MODELS,):
        members = available
    else:
        members = list(dict.fromkeys(requested))
    unknown = [m for m in members if m not in available]
    if unknown or not members:
        raise ApiError(
            422,
            "unknown_model",
            f"unknown model(s) {unknown or '(none given)'}; this server has {available} "
            f"(or '{ALL_MODELS}')",
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
    return Selection(ensemble, members, weights, skipped, via_ensemble and not skipped)


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
    if selection.skipped:
        result.append(
            f"{', '.join(selection.skipped)}: not run, they cannot vote "
            f"(see skipped); models={ALL_MODELS} runs them too, for display"
        )
    return result


def settle(future: "Future[FrameFaces]", outcome: FrameFaces | BaseException) -> None:
    """Give a waiting frame its faces (or its key frame's failure), once."""
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass  # cancelled meanwhile: nobody waits for it


def media_facts(info: MediaInfo) -> schemas.MediaFacts:
    return schemas.MediaFacts.model_validate(info, from_attributes=True)


def thumbnail(crop: np.ndarray) -> str:
    small = cv2.resize(crop, (THUMBNAIL_PX, THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
