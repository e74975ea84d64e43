"""/api/review-queue: the answers waiting for the caller's review (uncertain, disputed, or
sampled from confident ones: gateway/server/reviews/queue.py), and skipping one. A label is
`POST /api/reviews` (routers/reviews.py). This only translates HTTP; the queue's order, its
reasons and its tenancy are the store's (reviews/store.py).

Its own path, not /api/reviews/queue: there "queue" would also be a review's id to
`DELETE /api/reviews/{id}`, and the resource's methods (Allow) would be muddled.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from gateway.server.deps import OwnerDep, ReviewsDep
from gateway.server.errors import ApiError
from gateway.server.openapi import errors_doc
from gateway.server.reviews.models import ID_LENGTH
from gateway.server.reviews.views import QueueProgress, ReviewQueue, progress_view, queue_item
from gateway.server.routers.reviews import LIST_ERRORS, in_store

router = APIRouter(prefix="/api/review-queue", tags=["reviews"])
AnswerId = Annotated[str, Path(max_length=ID_LENGTH)]
SKIP_ERRORS = errors_doc(
    "invalid_request", "answer_not_found", "reviews_disabled", "reviews_unavailable"
)


@router.get(
    "",
    response_model=ReviewQueue,
    responses=LIST_ERRORS,
    description="The next answers waiting for this API key's review, in order, with why "
    "each is queued (`disputed`, `uncertain`, or `sampled` at random from confident ones: "
    "GATEWAY_REVIEWS_QUEUE_SAMPLE_SHARE), their faces, heatmaps and scores, and the key's "
    "progress. Label one with `POST /api/reviews`; skipping sends it to the back.",
)
async def review_queue(
    reviews: ReviewsDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=20)] = 1
) -> ReviewQueue:
    items, progress = await in_store(reviews.queue, owner, limit)
    return ReviewQueue(items=[queue_item(a) for a in items], progress=progress_view(progress))


@router.post(
    "/{answer_id}/skip",
    response_model=QueueProgress,
    responses=SKIP_ERRORS,
    description="The queued answer goes to the back of this key's queue (still reviewable); "
    "the progress after.",
)
async def skip_queued(answer_id: AnswerId, reviews: ReviewsDep, owner: OwnerDep) -> QueueProgress:
    progress = await in_store(reviews.skip, answer_id, owner)
    if progress is None:
        raise ApiError(
            "answer_not_found", f"no answer {answer_id} waiting in this API key's review queue"
        )
    return progress_view(progress)
