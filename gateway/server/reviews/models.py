"""The review store's tables (SQLAlchemy 2 ORM; Alembic migrations in migrations/ make them).

An answer's reviewable record (`Answer`: its scores, its decisive faces' crops in `Face`)
lives until it expires, unless a `Review` turns it into training data: the review then owns
it (the answer's `expires` is cleared) and it goes when the review does. The media itself
is never here: only the crops the members saw, and the file's SHA-256.
"""

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ID_LENGTH = 32  # uuid4().hex
OWNER_LENGTH = 64  # security.key_id's "key:" + 12 hex, or "public"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Answer(Base):
    """What an answer was, kept so that it can be reviewed after its media is gone."""

    __tablename__ = "answers"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), index=True)
    source: Mapped[str] = mapped_column(String(16))  # detect, job or live
    created: Mapped[datetime]
    # None once reviewed: the review's retention applies instead.
    expires: Mapped[datetime | None] = mapped_column(index=True)
    sha256: Mapped[str | None] = mapped_column(String(64))  # a live session has no file
    verdict: Mapped[str] = mapped_column(String(32))  # as the answer gave it
    score: Mapped[float | None] = mapped_column(Float)
    # Every member's per-track and per-face scores, the vote's, the threshold, the models'
    # versions: reviews/record.py's `scores_of`.
    scores: Mapped[dict[str, Any]]
    # The answer's heatmaps of the decisive person's faces (explain=true), each
    # {frame, face, model, p_fake, heatmap}; None when the answer had none (reviews/queue.py).
    explanations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # Why it waits in the review queue (reviews/queue.py: uncertain, disputed, sampled); None:
    # not queued (it is still reviewable by its answer_id).
    queued: Mapped[str | None] = mapped_column(String(16), index=True)
    skipped: Mapped[datetime | None]  # last skipped in the queue: behind the unskipped
    faces: Mapped[list["Face"]] = relationship(
        back_populates="answer",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Face.position",
    )
    review: Mapped["Review | None"] = relationship(
        back_populates="answer", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(Base):
    """One decisive face's crop as the pipeline cut it (PNG, lossless) and its scores."""

    __tablename__ = "faces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[str] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]  # order in the record
    frame: Mapped[int]  # the frame's index in the clip (a live session's frame number)
    face: Mapped[int]  # the face's number in that frame
    track: Mapped[int]
    p_fake: Mapped[float | None] = mapped_column(Float)  # the vote on this face
    models: Mapped[dict[str, Any]]  # member -> P(fake) on this face
    png: Mapped[bytes] = mapped_column(LargeBinary)
    answer: Mapped[Answer] = relationship(back_populates="faces")


class Review(Base):
    """A reviewer's label on one answer."""

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    answer_id: Mapped[str] = mapped_column(
        ForeignKey("answers.id", ondelete="CASCADE"), unique=True
    )
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), index=True)
    reviewer: Mapped[str] = mapped_column(String(OWNER_LENGTH))  # the key's id, never the key
    label: Mapped[str] = mapped_column(String(8))  # fake or real
    kind: Mapped[str | None] = mapped_column(String(64))  # the manipulation, if said
    note: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(index=True)
    expires: Mapped[datetime] = mapped_column(index=True)
    answer: Mapped[Answer] = relationship(back_populates="review")


class ShadowScore(Base):
    """One member's candidate version scored in the shadow of an answer (analysis/shadow.py):
    its per-face and video scores beside the serving version's, never in the answer. It goes
    with its answer (the answer's retention, or its review's), and joins reviews by
    answer_id: what the candidate would have said about a reviewed answer."""

    __tablename__ = "shadow_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[str] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(64))  # the member
    serving_version: Mapped[str] = mapped_column(String(16))
    candidate_version: Mapped[str] = mapped_column(String(16))
    # The raw video score (the decisive track's vote) with the serving version, as the answer
    # had it, and with the candidate's scores in this member's place.
    serving_video: Mapped[float] = mapped_column(Float)
    candidate_video: Mapped[float] = mapped_column(Float)
    # Every face of the answer: {frame, face, track, serving, candidate} (this member's P(fake)).
    faces: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
