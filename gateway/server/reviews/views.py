"""What clients send and see of reviews: the request, a review with its answer's record (the
crops as PNG data URLs, every member's scores), a page of them, and the review queue."""

import base64
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.server.reviews.models import ID_LENGTH, Answer, Face, Review
from gateway.server.reviews.queue import Why
from gateway.server.reviews.store import QueueProgress as Progress

NOTE_MAX = 2000
KIND_MAX = 64


class ReviewRequest(BaseModel):
    answer_id: str = Field(
        min_length=1, max_length=ID_LENGTH, description="the answer's `answer_id`"
    )
    label: Literal["fake", "real"] = Field(description="what the reviewer judges the file is")
    kind: str | None = Field(
        None,
        max_length=KIND_MAX,
        description="the manipulation, if known (face_swap, reenactment, synthetic…)",
    )
    note: str | None = Field(None, max_length=NOTE_MAX, description="free text")

    model_config = {"extra": "forbid"}


class FaceView(BaseModel):
    frame: int = Field(description="the frame's index in the clip (live: the frame's number)")
    face: int = Field(description="the face's number in that frame")
    track: int
    p_fake: float | None = Field(description="the vote on this face")
    models: dict[str, float] = Field(description="each member's P(fake) on this face")
    crop: str = Field(description="data: URL of a PNG, the crop as the members saw it")


class AnswerView(BaseModel):
    answer_id: str
    source: Literal["detect", "job", "live"]
    created: datetime
    sha256: str | None = Field(description="SHA-256 of the file (none for a live session)")
    verdict: str = Field(description="as the answer gave it")
    score: float | None = Field(description="as the answer gave it")
    scores: dict[str, Any] = Field(
        description="threshold, the models (versions, weights), every member's per-track and "
        "per-face scores"
    )


class ReviewSummary(BaseModel):
    id: str
    answer_id: str
    label: Literal["fake", "real"]
    kind: str | None
    note: str | None
    reviewer: str = Field(description="the reviewing API key's id (never the key)")
    created: datetime
    expires: datetime
    source: Literal["detect", "job", "live"]
    verdict: str = Field(description="the answer's verdict")
    score: float | None = Field(description="the answer's score")


class ReviewView(ReviewSummary):
    answer: AnswerView
    faces: list[FaceView] = Field(description="the decisive person's faces")


class ReviewList(BaseModel):
    reviews: list[ReviewSummary]
    total: int
    offset: int
    limit: int


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def face_view(face: Face) -> FaceView:
    return FaceView(
        frame=face.frame,
        face=face.face,
        track=face.track,
        p_fake=face.p_fake,
        models=face.models,
        crop="data:image/png;base64," + base64.b64encode(face.png).decode(),
    )


def summary(review: Review) -> ReviewSummary:
    answer = review.answer
    return ReviewSummary(
        id=review.id,
        answer_id=review.answer_id,
        label=review.label,  # type: ignore[arg-type]
        kind=review.kind,
        note=review.note,
        reviewer=review.reviewer,
        created=utc(review.created),
        expires=utc(review.expires),
        source=answer.source,  # type: ignore[arg-type]
        verdict=answer.verdict,
        score=answer.score,
    )


def answer_view(answer: Answer) -> AnswerView:
    return AnswerView(
        answer_id=answer.id,
        source=answer.source,  # type: ignore[arg-type]
        created=utc(answer.created),
        sha256=answer.sha256,
        verdict=answer.verdict,
        score=answer.score,
        scores=answer.scores,
    )


def review_view(review: Review) -> ReviewView:
    return ReviewView(
        **summary(review).model_dump(),
        answer=answer_view(review.answer),
        faces=[face_view(f) for f in review.answer.faces],
    )


# --- the review queue (reviews/queue.py) -----------------------------------------------------

NO_HEATMAPS_LIVE = "a live session's verdict has no heatmaps"
NO_HEATMAPS_ASKED = "the answer was made without explain=true"


class HeatmapView(BaseModel):
    frame: int
    face: int
    model: str = Field(description="a voting member, or 'ensemble' for the vote")
    p_fake: float = Field(description="this model's P(fake) on the intact face")
    heatmap: str = Field(description="data: URL of a PNG, the map over the face crop")


class QueueItem(BaseModel):
    answer_id: str = Field(description="what `POST /api/reviews` names to label it")
    why: Why = Field(
        description="why it is queued: `disputed` (the vote's groups disagree), `uncertain` "
        "(the verdict), `sampled` (a confident answer drawn at random)"
    )
    source: Literal["detect", "job", "live"]
    created: datetime
    expires: datetime = Field(description="when it leaves the queue unless reviewed")
    skipped: datetime | None = Field(description="when it was last skipped, if it was")
    verdict: str = Field(description="as the answer gave it")
    score: float | None = Field(description="as the answer gave it")
    raw_score: float | None = Field(
        None, description="the uncalibrated score, if the answer had one"
    )
    threshold: float | None
    reasons: list[dict[str, str]] = Field(description="the answer's reasons: {code, message}")
    models: list[dict[str, Any]] = Field(
        description="the members' scores on the video (name, version, weight, voting, score, "
        "group); empty for a live verdict, whose scores are per person"
    )
    faces: list[FaceView] = Field(description="the decisive person's faces")
    heatmaps: list[HeatmapView] = Field(
        description="where the models saw a fake on the decisive person's faces"
    )
    no_heatmaps: str | None = Field(description="why there are no heatmaps, when there are none")


class QueueProgress(BaseModel):
    reviewed: int = Field(description="queued answers this key has reviewed")
    left: int = Field(description="queued answers waiting, skipped ones included")
    skipped: int = Field(description="of those, the skipped ones (at the back of the queue)")


class ReviewQueue(BaseModel):
    items: list[QueueItem] = Field(description="the next answers to review, in order")
    progress: QueueProgress


def queue_item(answer: Answer) -> QueueItem:
    scores = answer.scores
    heatmaps = [HeatmapView(**e) for e in answer.explanations or []]
    return QueueItem(
        answer_id=answer.id,
        why=answer.queued,  # type: ignore[arg-type]
        source=answer.source,  # type: ignore[arg-type]
        created=utc(answer.created),
        expires=utc(answer.expires or answer.created),
        skipped=utc(answer.skipped) if answer.skipped is not None else None,
        verdict=answer.verdict,
        score=answer.score,
        raw_score=scores.get("raw_score"),
        threshold=scores.get("threshold"),
        reasons=scores.get("reasons", []),
        models=scores.get("models", []),
        faces=[face_view(f) for f in answer.faces],
        heatmaps=heatmaps,
        no_heatmaps=None
        if heatmaps
        else NO_HEATMAPS_LIVE
        if answer.source == "live"
        else NO_HEATMAPS_ASKED,
    )


def progress_view(progress: Progress) -> QueueProgress:
    return QueueProgress(reviewed=progress.reviewed, left=progress.left, skipped=progress.skipped)
