"""What the analysis, the job workers and live sessions call when reviews are on: an
answer's record kept (reviews/record.py) under a new `answer_id`, for its owner, for the
answer retention, queued for review or not (reviews/queue.py); and the purge of what has
expired, every reviews_purge_interval_s.

Keeping is best effort: a store that fails is logged and the answer goes out without an
`answer_id` (a review is worth less than the answer the client waits for)."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.server import schemas
from gateway.server.reviews import record
from gateway.server.reviews.queue import Sampler
from gateway.server.reviews.store import ReviewStore
from gateway.server.settings import Settings

log = logging.getLogger("gateway.reviews")


@dataclass(frozen=True)
class Keeper:
    store: ReviewStore
    answer_retention_s: float
    max_faces: int
    sampler: Sampler  # which kept answers wait in the review queue (reviews/queue.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Keeper | None":
        """None with reviews off; else the store at its URL, migrated."""
        if not settings.reviews_enabled:
            return None
        password = settings.reviews_database_password
        store = ReviewStore.open(
            settings.reviews_url(), password.get_secret_value() if password else None
        )
        return cls(
            store,
            settings.reviews_answer_retention_s,
            settings.reviews_max_faces,
            Sampler(settings.reviews_queue_sample_share, settings.reviews_queue_seed),
        )

    async def answer(
        self,
        answer: schemas.DetectAnswer,
        crops: Mapping[record.FaceKey, np.ndarray],
        owner: str,
        source: str,
    ) -> str | None:
        """A file's answer (detect, job) kept: its answer_id, None if the store failed."""
        kept = record.of_answer(answer, crops, source, self.max_faces)
        return await self._keep(kept, owner)

    async def live(
        self,
        verdict: Mapping[str, Any],
        windows: Mapping[int, Sequence[record.FaceCrop]],
        threshold: float,
        owner: str,
        answer_id: str,
    ) -> str | None:
        """A live session's running verdict kept under the id its session announced: that
        id, None if the store failed."""
        kept = record.of_live(verdict, windows, threshold, self.max_faces)
        return await self._keep(kept, owner, answer_id)

    async def _keep(
        self, kept: record.Record, owner: str, answer_id: str | None = None
    ) -> str | None:
        queued = self.sampler.why(kept)  # here, on the event loop: one draw at a time
        try:
            return await asyncio.to_thread(
                self.store.keep, kept, owner, self.answer_retention_s, answer_id, queued
            )
        except Exception:
            log.exception("an answer could not be kept for review")
            return None


async def purge_forever(store: ReviewStore, interval_s: float) -> None:
    """Expired answers and reviews deleted now, then every `interval_s` (a lifespan task)."""
    while True:
        try:
            answers, reviews = await asyncio.to_thread(store.purge)
            if answers or reviews:
                log.info("purged %d answers and %d reviews past their retention", answers, reviews)
        except Exception:
            log.exception("the review store's purge failed; retrying later")
        await asyncio.sleep(interval_s)
