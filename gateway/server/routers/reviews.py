"""/api/reviews: a person's `fake` or `real` on an answer (a detect answer, a job's item, a
live session's verdict) named by its `answer_id`; the caller's reviews listed, read, deleted.
The review queue that feeds them: routers/review_queue.py.

The store and what it keeps are gateway/server/reviews/; this only translates HTTP. One key
never reaches another's answers or reviews: each is found by its id and its owner.
"""

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from gateway.server.deps import OwnerDep, PageLimit, PageOffset, ReviewsDep, SettingsDep
from gateway.server.errors import ApiError, Store
from gateway.server.openapi import errors_doc
from gateway.server.reviews.models import ID_LENGTH
from gateway.server.reviews.store import AlreadyReviewed
from gateway.server.reviews.views import (
    ReviewList,
    ReviewRequest,
    ReviewView,
    review_view,
    summary,
)

log = logging.getLogger("gateway.reviews")
router = APIRouter(prefix="/api/reviews", tags=["reviews"])
ReviewId = Annotated[str, Path(max_length=ID_LENGTH)]
STORE = Store(
    "review store",
    (SQLAlchemyError,),
    "reviews_unavailable",
    "the review store cannot be reached now; retry later",
)
in_store = STORE.call

CREATE_ERRORS = errors_doc(
    "http_error",  # a body that is not JSON text at all (FastAPI's 400), as POST /api/live's
    "invalid_request",
    "answer_not_found",
    "already_reviewed",
    "reviews_disabled",
    "reviews_unavailable",
)
LIST_ERRORS = errors_doc("invalid_request", "reviews_disabled", "reviews_unavailable")
REVIEW_ERRORS = errors_doc(
    "invalid_request", "review_not_found", "reviews_disabled", "reviews_unavailable"
)


def review_not_found(review_id: str) -> ApiError:
    return ApiError("review_not_found", f"no review {review_id} for this API key")


@router.post(
    "",
    status_code=201,
    response_model=ReviewView,
    responses=CREATE_ERRORS,
    description="Review an answer by its `answer_id` (answers carry one while reviews are on, "
    "for GATEWAY_REVIEWS_ANSWER_RETENTION_S): the answer's record (its decisive faces' crops "
    "and every member's scores, never the media) is kept with the label for "
    "GATEWAY_REVIEWS_RETENTION_S. One review per answer.",
)
async def create_review(
    request: Request,
    body: ReviewRequest,
    reviews: ReviewsDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> JSONResponse:
    try:
        review = await in_store(
            reviews.review,
            body.answer_id,
            owner,
            body.label,
            body.kind,
            body.note,
            settings.reviews_retention_s,
        )
    except AlreadyReviewed:
        raise ApiError(
            "already_reviewed",
            f"answer {body.answer_id} has a review already: delete it to review again",
        ) from None
    if review is None:
        raise ApiError(
            "answer_not_found",
            f"no reviewable answer {body.answer_id} for this API key (or it was purged)",
        )
    log.info("answer reviewed", extra={"request_id": request.state.request_id})
    view = review_view(review)
    return JSONResponse(
        view.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/api/reviews/{view.id}"},
    )


@router.get("", response_model=ReviewList, responses=LIST_ERRORS)
async def list_reviews(
    reviews: ReviewsDep, owner: OwnerDep, offset: PageOffset = 0, limit: PageLimit = 20
) -> ReviewList:
    """This API key's reviews, newest first (without their crops: read one for them)."""
    page, total = await in_store(reviews.reviews, owner, offset, limit)
    return ReviewList(reviews=[summary(r) for r in page], total=total, offset=offset, limit=limit)


@router.get("/{review_id}", response_model=ReviewView, responses=REVIEW_ERRORS)
async def get_review(review_id: ReviewId, reviews: ReviewsDep, owner: OwnerDep) -> ReviewView:
    """One review with its answer's record: the crops and every member's scores."""
    review = await in_store(reviews.get, review_id, owner)
    if review is None:
        raise review_not_found(review_id)
    return review_view(review)


@router.delete(
    "/{review_id}",
    status_code=204,
    response_class=Response,
    responses=REVIEW_ERRORS,
    description="The review, its answer's record and crops are deleted at once.",
)
async def delete_review(
    request: Request, review_id: ReviewId, reviews: ReviewsDep, owner: OwnerDep
) -> Response:
    if not await in_store(reviews.delete, review_id, owner):
        raise review_not_found(review_id)
    log.info("review deleted", extra={"request_id": request.state.request_id})
    return Response(status_code=204)
