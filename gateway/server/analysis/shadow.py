"""Shadow scoring: a share of kept answers is scored again by each member's candidate
version (a version loaded beside the serving one, `python -m export.versions candidate`),
after the answer and outside it, and both versions' scores are kept in the review store's
`shadow_scores`, keyed by the answer's `answer_id` (so a comparison joins them to reviews).

Never in the answer's way: the draw and the start happen once the answer is computed and
kept; the scoring is a task of its own, at most `concurrency` of them per process (a sampled
answer beyond is skipped, never queued); a failure is logged and counted, never raised.
"""

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.server import metrics, schemas
from gateway.server.model_server import ModelServer
from gateway.server.reviews.record import FaceKey, Shadow
from gateway.server.reviews.store import ReviewStore
from gateway.server.settings import Settings
from gateway.server.verdict.aggregate import Strategy, decisive_track, score_tracks
from gateway.server.verdict.selection import Selection

log = logging.getLogger("gateway.shadow")
CHUNK = 16  # faces per candidate call: the crops are stacked a chunk at a time, not all at once


class ShadowScoring:
    def __init__(
        self,
        server: ModelServer,
        store: ReviewStore,
        share: float,
        concurrency: int,
        rng: random.Random | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.share = share
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self.tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls, settings: Settings, server: ModelServer, store: ReviewStore | None
    ) -> "ShadowScoring | None":
        """None when off (share 0) or without a store (settings refuse a share without it)."""
        if settings.shadow_share <= 0 or store is None:
            return None
        return cls(server, store, settings.shadow_share, settings.shadow_concurrency)

    def sample(
        self,
        answer: schemas.DetectAnswer,
        crops: Mapping[FaceKey, np.ndarray],
        selection: Selection,
        strategy: Strategy,
    ) -> None:
        """Draw the answer (kept: it has an answer_id, and faces); if drawn, start its shadow
        scoring, its video score by the answer's `strategy`. Returns at once; never raises."""
        if answer.answer_id is None or not answer.tracks or self.rng.random() >= self.share:
            return
        candidates = {
            name: (info.version, info.candidate)
            for name in selection.members
            if (info := selection.ensemble.member(name)).candidate
        }
        if not candidates:
            metrics.SHADOW_REQUESTS.labels("no_candidate").inc()
            return
        if len(self.tasks) >= self.concurrency:
            metrics.SHADOW_REQUESTS.labels("busy").inc()
            return
        task = asyncio.create_task(
            self._run(ShadowJob(answer, dict(crops), selection, strategy), candidates)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: "ShadowJob", candidates: Mapping[str, tuple[str, str]]) -> None:
        assert job.answer.answer_id is not None  # sample() starts kept answers only
        try:
            shadows = [
                await self._member(job, name, serving, candidate)
                for name, (serving, candidate) in candidates.items()
            ]
            await asyncio.to_thread(self.store.keep_shadow, job.answer.answer_id, shadows)
        except Exception:
            log.exception("shadow scoring failed", extra={"answer_id": job.answer.answer_id})
            metrics.SHADOW_REQUESTS.labels("failed").inc()
            return
        metrics.SHADOW_REQUESTS.labels("recorded").inc()

    async def _member(self, job: "ShadowJob", name: str, serving: str, candidate: str) -> Shadow:
        """One member's candidate on every face of the answer, and the video score it makes."""
        parts = [
            await self.server.score_with_version(
                np.stack([job.crops[k] for k in job.keys[i : i + CHUNK]]), name, candidate
            )
            for i in range(0, len(job.keys), CHUNK)
        ]
        theirs = np.concatenate(parts)
        ours = job.serving_scores()
        return Shadow(
            model=name,
            serving_version=serving,
            candidate_version=candidate,
            serving_video=job.video(ours),
            candidate_video=job.video(ours | {name: theirs}),
            faces=[
                {"frame": k[0], "face": k[1], "track": f.track}
                | {"serving": f.models[name], "candidate": float(theirs[n])}
                for n, (k, f) in enumerate(zip(job.keys, job.faces, strict=True))
            ],
        )

    async def close(self) -> None:
        """Shadow scorings still running are dropped (the process is stopping)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass(frozen=True)
class ShadowJob:
    """One sampled answer: its faces in the answer's order, their crops, how it was judged."""

    answer: schemas.DetectAnswer
    crops: Mapping[FaceKey, np.ndarray]
    selection: Selection
    strategy: Strategy

    @property
    def keys(self) -> list[FaceKey]:
        return [(frame.index, n) for frame in self.answer.frames for n, _ in enumerate(frame.faces)]

    @property
    def faces(self) -> list[schemas.FaceResult]:
        return [face for frame in self.answer.frames for face in frame.faces]

    def serving_scores(self) -> dict[str, np.ndarray]:
        """Each judging member's P(fake) per face, as the answer has them."""
        return {m: np.array([f.models[m] for f in self.faces]) for m in self.selection.members}

    def video(self, scores: Mapping[str, np.ndarray]) -> float:
        """The raw video score as the answer computes it (verdict/judge.py): each track's
        vote, the most fake track seen long enough deciding."""
        faces = self.faces
        tracks = [
            [n for n, f in enumerate(faces) if f.track == t]
            for t in sorted({f.track for f in faces})
        ]
        scored = score_tracks(
            tracks, scores, self.selection.weights, self.strategy, self.selection.groups
        )
        frames = len(self.answer.frames)  # the frames sampled (Report.evidence)
        return decisive_track(scored, frames, self.strategy.min_track_share).score
