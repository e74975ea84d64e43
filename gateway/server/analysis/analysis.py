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
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np

from gateway.server import metrics, schemas
from gateway.server.analysis.scoring import (
    EarlyFaces,
    FaceKey,
    Stop,
    StreamedScoring,
    analysis_timeout,
)
from gateway.server.analysis.shadow import ShadowScoring
from gateway.server.model_server import ModelServer
from gateway.server.options import Options
from gateway.server.reviews.keeper import Keeper
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import (
    Strategy,
)
from gateway.server.verdict.answer import Clock, Report, media_facts
from gateway.server.verdict.explain import explain
from gateway.server.verdict.rules import Doubts
from gateway.server.verdict.selection import Selection, select_models
from preprocess.credentials import (
    UNTRUSTED,
    ContentCredentials,
    CredentialPolicy,
    read_credentials,
)
from preprocess.faces import load_detector
from preprocess.media import MediaReader
from preprocess.pipeline import FaceExtractor
from preprocess.sparse import EVERY_FRAME, SparseConfig
from preprocess.tracks import link_tracks

Emit = Callable[[dict], Awaitable[None]]


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
        chunk: int = 4,
        timeout_s: float = 300.0,
        max_faces: int = 512,
        frames_ahead: int = 2,
        sparse: SparseConfig = EVERY_FRAME,
        doubts: Doubts | None = None,
        credentials: CredentialPolicy = UNTRUSTED,
        keeper: Keeper | None = None,
        shadow: ShadowScoring | None = None,
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
        self.doubts = doubts or Doubts()  # when a verdict is uncertain (verdict/rules.py)
        self.credentials = credentials  # how content credentials are validated (trust anchors)
        self.keeper = keeper  # reviews on: answers' records kept to be reviewed
        # GATEWAY_SHADOW_SHARE > 0: a share of kept answers scored by candidate versions too
        self.shadow = shadow

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
        keeper = Keeper.from_settings(settings)
        store = keeper.store if keeper is not None else None
        return cls(
            MediaReader(settings.media_limits(), settings.video_hwaccel),
            extractor,
            server,
            executor,
            chunk=settings.infer_chunk,
            timeout_s=settings.analysis_timeout_s,
            max_faces=settings.max_request_faces,
            frames_ahead=settings.workers,
            sparse=SparseConfig(every=settings.detect_every),
            doubts=Doubts.from_settings(settings),
            credentials=settings.credential_policy(),
            keeper=keeper,
            shadow=ShadowScoring.from_settings(settings, server, store),
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
        t = time.perf_counter()
        scoring, early = self._pipeline(selection, options, stop)
        try:
            reading = self.executor.submit(
                self.reader.scan, path, options.frames, early.submit, stop.check
            )
            early.threads.append(reading)
            scan = await asyncio.wrap_future(reading)
            t = clock.stage("decode", t)
            credentials = self._credentials(path, scan.info.format, early)
            facts = media_facts(scan.info).model_dump()
            await emit({"event": "decoded", "media": facts, "frames": len(scan.indices)})
            found = await early.faces(scan.indices)
            tracks = link_tracks([f.faces for f in found])
            t = clock.stage("detect", t)
            held = await asyncio.wrap_future(credentials)
            report = Report(
                selection, options, scan.info, found, early.thumbnails, self.doubts, held
            )
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
        return await self._after_verdict(answer, scoring.crops, options, selection, clock, t)

    async def _after_verdict(
        self,
        answer: schemas.DetectAnswer,
        crops: Mapping[FaceKey, np.ndarray],
        options: Options,
        selection: Selection,
        clock: Clock,
        t: float,
    ) -> schemas.DetectAnswer:
        """What needs the verdict and the crops: the heatmaps (explain=true), then the
        answer's reviewable record (reviews on: its answer_id); the timings last."""
        if options.explain is not None:
            answer.explanations = await explain(
                answer, crops, self.server.score_with_members, options.explain, selection.groups
            )
            clock.stage("explain", t)
        if self.keeper is not None and options.owner is not None:
            answer.answer_id = await self.keeper.answer(
                answer, crops, options.owner, options.source
            )
        if self.shadow is not None:  # after the answer, beside it: never in it
            self.shadow.sample(answer, crops, selection, self.strategy)
        clock.stage("total", clock.start)
        answer.timings_ms = schemas.Timings(**clock.timings)
        return answer

    def _credentials(
        self, path: Path, fmt: str, early: EarlyFaces
    ) -> "Future[ContentCredentials | None]":
        """The file's content credentials, read in a worker while the faces are found: one of
        early's threads, so a cancelled analysis still waits for it."""
        reading = self.executor.submit(read_credentials, path, fmt, self.credentials)
        early.threads.append(reading)
        return reading

    def keeps_crops(self, options: Options) -> bool:
        """Crops outlive their scoring only when needed after the verdict: for explanations,
        or for the answer's reviewable record (at most max_faces of them, as for every
        request)."""
        return options.explain is not None or (
            self.keeper is not None and options.owner is not None
        )

    def _pipeline(
        self, selection: Selection, options: Options, stop: Stop
    ) -> tuple[StreamedScoring, EarlyFaces]:
        """The face detection that runs ahead of the decoder, feeding the scoring of each
        chunk of crops as soon as it is full."""
        score = (
            self.server.score_with_ensemble
            if selection.via_ensemble
            else self.server.score_with_members
        )
        scoring = StreamedScoring(
            lambda crops: score(crops, selection.members),
            self.chunk,
            keep_crops=self.keeps_crops(options),
        )
        early = EarlyFaces(
            self.extractor,
            self.executor,
            asyncio.get_running_loop(),
            scoring.add,
            stop,
            thumbnails=options.thumbnails,
            max_faces=self.max_faces,
            ahead=self.frames_ahead,
            sparse=self.sparse,
        )
        return scoring, early
