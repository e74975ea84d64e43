"""Where answers wait to be reviewed and reviews are kept: SQLAlchemy 2 over SQLite (a
file under GATEWAY_REVIEWS_DIR) or PostgreSQL (GATEWAY_REVIEWS_DATABASE_URL), its schema
made and moved by the Alembic migrations beside this file (`migrate`, at start-up).

Every read and write names the owner (the API key's id): one key never sees, reviews or
deletes another's. Blocking calls: the gateway runs them on a thread (routers/reviews.py).
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, Select, case, create_engine, delete, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload, sessionmaker

from gateway.server.reviews.models import Answer, Base, Face, Review, ShadowScore
from gateway.server.reviews.queue import ORDER
from gateway.server.reviews.record import Record, Shadow, png

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class QueueProgress:
    reviewed: int  # queued answers the owner has reviewed (while their reviews are kept)
    left: int  # queued answers waiting, skipped ones included
    skipped: int  # of those, the ones skipped (at the back of the queue)


class AlreadyReviewed(Exception):
    """The answer has a review: one label per answer (delete the review to label it again)."""


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes: every time here is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def make_engine(url: str, password: str | None = None) -> Engine:
    """An engine for `url`; `password` (a Secret apart from the URL) put into it if given.
    SQLite: its folder made, foreign keys on (deleting an answer deletes its crops)."""
    parsed = make_url(url)
    if password:
        parsed = parsed.set(password=password)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)

    @event.listens_for(engine, "connect")
    def _foreign_keys(connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def alembic_config(engine: Engine) -> Config:
    """Alembic's configuration without an alembic.ini: the scripts beside this file, the
    engine handed to migrations/env.py."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


class ReviewStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, password: str | None = None) -> "ReviewStore":
        """The store at `url`, migrated to the latest schema."""
        store = cls(make_engine(url, password))
        store.migrate()
        return store

    def migrate(self) -> None:
        command.upgrade(alembic_config(self.engine), "head")

    def schema_drift(self) -> list:
        """What the models declare that the database lacks (or the reverse): [] when the
        migrations made exactly the models' schema (alembic check's comparison)."""
        with self.engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    # --- answers ---------------------------------------------------------------------

    def keep(
        self,
        record: Record,
        owner: str,
        retention_s: float,
        answer_id: str | None = None,
        queued: str | None = None,
    ) -> str:
        """The answer's record, reviewable by `owner` for `retention_s` (in the queue if
        `queued` says why: reviews/queue.py); its id (a new one unless given: a live session
        announces its id when it starts)."""
        answer_id = answer_id or new_id()
        created = now()
        answer = Answer(
            id=answer_id,
            owner=owner,
            source=record.source,
            created=created,
            expires=created + timedelta(seconds=retention_s),
            sha256=record.sha256,
            verdict=record.verdict,
            score=record.score,
            scores=record.scores,
            explanations=record.explanations,
            queued=queued,
            faces=[
                Face(
                    position=n,
                    frame=f.frame,
                    face=f.face,
                    track=f.track,
                    p_fake=f.p_fake,
                    models=f.models,
                    png=png(f.crop),
                )
                for n, f in enumerate(record.faces)
            ],
        )
        with self.session() as session:
            session.add(answer)
        return answer_id

    def answer(self, answer_id: str, owner: str) -> Answer | None:
        with self.session() as session:
            return self._owned_answer(session, answer_id, owner)

    def _owned_answer(self, session: Session, answer_id: str, owner: str) -> Answer | None:
        answer = session.get(Answer, answer_id, options=[selectinload(Answer.faces)])
        if answer is None or answer.owner != owner:
            return None
        if answer.expires is not None and aware(answer.expires) <= now():
            return None  # expired, not purged yet: gone as far as anyone can tell
        return answer

    # --- the queue (reviews/queue.py) ----------------------------------------------------

    def _waiting(self, owner: str, moment: datetime) -> Select[tuple[Answer]]:
        """The owner's queued answers nobody has reviewed yet, not expired (a reviewed
        answer's `expires` is None: the review's retention applies)."""
        return (
            select(Answer)
            .outerjoin(Review, Review.answer_id == Answer.id)
            .where(
                Answer.owner == owner,
                Answer.queued.is_not(None),
                Review.id.is_(None),
                Answer.expires > moment,
            )
        )

    def queue(self, owner: str, limit: int) -> tuple[list[Answer], QueueProgress]:
        """The next `limit` answers waiting for the owner's review, with their crops, and
        where the owner stands in the queue."""
        moment = now()
        priority = case(
            {why: n for n, why in enumerate(ORDER)}, value=Answer.queued, else_=len(ORDER)
        )
        with self.session() as session:
            items = session.scalars(
                self._waiting(owner, moment)
                .options(selectinload(Answer.faces))
                .order_by(
                    Answer.skipped.is_not(None),  # unskipped first
                    Answer.skipped,  # then the longest skipped
                    priority,
                    Answer.created,  # oldest first: the first to expire
                    Answer.id,
                )
                .limit(limit)
            )
            return list(items), self._progress(session, owner, moment)

    def skip(self, answer_id: str, owner: str) -> QueueProgress | None:
        """The answer sent to the back of the owner's queue (None: no such answer waiting)."""
        moment = now()
        with self.session() as session:
            answer = session.scalar(self._waiting(owner, moment).where(Answer.id == answer_id))
            if answer is None:
                return None
            answer.skipped = moment
            session.flush()
            return self._progress(session, owner, moment)

    def _progress(self, session: Session, owner: str, moment: datetime) -> QueueProgress:
        waiting = self._waiting(owner, moment).subquery()
        left, skipped = session.execute(
            select(func.count(), func.count(waiting.c.skipped)).select_from(waiting)
        ).one()
        reviewed = session.scalar(
            select(func.count())
            .select_from(Review)
            .join(Answer, Review.answer_id == Answer.id)
            .where(Review.owner == owner, Answer.queued.is_not(None))
        )
        return QueueProgress(reviewed=reviewed or 0, left=left, skipped=skipped)

    # --- reviews ---------------------------------------------------------------------

    def review(
        self,
        answer_id: str,
        owner: str,
        label: str,
        kind: str | None,
        note: str | None,
        retention_s: float,
    ) -> Review | None:
        """The answer turned into a review (None: no such answer of `owner`'s); raises
        AlreadyReviewed when it has one."""
        with self.session() as session:
            answer = self._owned_answer(session, answer_id, owner)
            if answer is None:
                return None
            if answer.review is not None:
                raise AlreadyReviewed(answer_id)
            created = now()
            review = Review(
                id=new_id(),
                owner=owner,
                reviewer=owner,
                label=label,
                kind=kind,
                note=note,
                created=created,
                expires=created + timedelta(seconds=retention_s),
            )
            answer.review = review
            answer.expires = None  # the review's retention applies from now on
            session.flush()
            return self._loaded(session, review.id, owner)

    def get(self, review_id: str, owner: str) -> Review | None:
        with self.session() as session:
            return self._loaded(session, review_id, owner)

    def _loaded(self, session: Session, review_id: str, owner: str) -> Review | None:
        review = session.get(
            Review,
            review_id,
            options=[selectinload(Review.answer).selectinload(Answer.faces)],
        )
        return review if review is not None and review.owner == owner else None

    def reviews(self, owner: str, offset: int, limit: int) -> tuple[list[Review], int]:
        """The owner's reviews, newest first, and how many there are."""
        with self.session() as session:
            mine = select(Review).where(Review.owner == owner)
            total = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
            page = session.scalars(
                mine.options(selectinload(Review.answer))
                .order_by(Review.created.desc(), Review.id)
                .offset(offset)
                .limit(limit)
            )
            return list(page), total

    def delete(self, review_id: str, owner: str) -> bool:
        """The review, its answer's record and crops; False when `owner` has no such review."""
        with self.session() as session:
            review = session.get(Review, review_id)
            if review is None or review.owner != owner:
                return False
            session.delete(session.get_one(Answer, review.answer_id))
            return True

    def labelled(self, owner: str | None = None) -> list[Review]:
        """Every review kept (or one owner's), oldest first, with its answer and crops: what
        `make train --reviews` and `make compare` learn from and measure on (an operator's
        read of the whole store, not an API key's)."""
        with self.session() as session:
            chosen = select(Review).options(selectinload(Review.answer).selectinload(Answer.faces))
            if owner is not None:
                chosen = chosen.where(Review.owner == owner)
            return list(session.scalars(chosen.order_by(Review.created, Review.id)))

    # --- shadow scores (analysis/shadow.py) ---------------------------------------------

    def keep_shadow(self, answer_id: str, shadows: list[Shadow]) -> None:
        """A candidate version's scores in the shadow of a kept answer, one row per member."""
        created = now()
        with self.session() as session:
            session.add_all(
                ShadowScore(answer_id=answer_id, created=created, **vars(shadow))
                for shadow in shadows
            )

    def shadow_scores(self, answer_id: str) -> list[ShadowScore]:
        """The shadow rows of an answer (for comparisons joined to its review), by member."""
        with self.session() as session:
            query = select(ShadowScore).where(ShadowScore.answer_id == answer_id)
            return list(session.scalars(query.order_by(ShadowScore.model, ShadowScore.id)))

    # --- retention -------------------------------------------------------------------

    def purge(self, moment: datetime | None = None) -> tuple[int, int]:
        """Unreviewed answers and reviews past their time, with their crops: (answers,
        reviews) deleted."""
        moment = moment or now()
        with self.session() as session:
            expired = select(Review.answer_id).where(Review.expires <= moment)
            reviews = session.execute(delete(Answer).where(Answer.id.in_(expired))).rowcount
            answers = session.execute(
                delete(Answer).where(Answer.expires.is_not(None), Answer.expires <= moment)
            ).rowcount
        return answers, reviews
