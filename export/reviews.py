"""The review store as training data (`make train REVIEWS=...`, `make calibrate`, `make
compare`): each reviewed answer's decisive faces, cut by the pipeline as the members saw them
(PNG, lossless), labelled as the reviewer said, grouped by file (its sha256) so that a split
never puts one file's faces on both sides.

Read through the reviews room's store (gateway/server/reviews/store.py), never by hand SQL;
the media files were never kept, so the crops are all there is.
"""

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC

import numpy as np

from export.data import LABELS

log = logging.getLogger("export.reviews")


def add_arguments(
    parser: argparse.ArgumentParser, what: str, source: argparse._ActionsContainer | None = None
) -> None:
    """`--reviews DATABASE_URL` (`what` the command does with them; in `source`, the group
    of a command's data sources, where it has one) and `--reviews-owner`, as make train and
    make calibrate take them."""
    (source or parser).add_argument("--reviews", metavar="DATABASE_URL", help=what)
    parser.add_argument("--reviews-owner", help="only this key id's reviews (default: all)")


@dataclass(frozen=True)
class ReviewedFile:
    """One file's reviewed faces: `key` is its sha256 (a live session, which has no file:
    `answer:<id>`), every review of it agreeing on `label`."""

    key: str
    label: int
    faces: np.ndarray  # uint8 [n, H, W, 3] RGB, as the members saw them
    review_ids: tuple[str, ...]


@dataclass(frozen=True)
class ReviewSet:
    files: list[ReviewedFile]
    provenance: dict  # count, sha256, first, last: what a version learnt from


def reviews_digest(labels: dict[str, str]) -> str:
    """sha256 of the reviews' ids and labels ("id\\tlabel" lines, sorted by id): the same
    reviews with the same labels, the same digest; one label changed, another."""
    lines = [f"{review_id}\t{labels[review_id]}" for review_id in sorted(labels)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def password() -> str | None:
    """The store's password, kept apart from its URL as the gateway keeps it."""
    return os.environ.get("GATEWAY_REVIEWS_DATABASE_PASSWORD") or None


def load(url: str, password: str | None = None, owner: str | None = None) -> ReviewSet:
    """Every kept review at `url` (or one key's) with faces, grouped by file. A file whose
    reviews disagree is left out (and said so): it has no label to learn."""
    from gateway.server.reviews.record import crop_of
    from gateway.server.reviews.store import ReviewStore, aware

    store = ReviewStore.open(url, password)
    try:
        reviews = [r for r in store.labelled(owner) if r.answer.faces]
    finally:
        store.close()
    grouped: dict[str, list] = {}
    for review in reviews:
        grouped.setdefault(review.answer.sha256 or f"answer:{review.answer_id}", []).append(review)
    files, used = [], {}
    for key, of_file in grouped.items():
        labels = {r.label for r in of_file}
        if len(labels) > 1:
            log.warning("%s: reviewed both fake and real, left out", key)
            continue
        files.append(
            ReviewedFile(
                key=key,
                label=LABELS[labels.pop()],
                faces=np.stack([crop_of(f.png) for r in of_file for f in r.answer.faces]),
                review_ids=tuple(r.id for r in of_file),
            )
        )
        used |= {r.id: (r.label, aware(r.created)) for r in of_file}
    if not used:
        raise SystemExit(f"{url}: no reviews with faces")
    times = sorted(created for _, created in used.values())
    provenance = {
        "count": len(used),
        "files": len(files),
        "sha256": reviews_digest({i: label for i, (label, _) in used.items()}),
        "first": times[0].astimezone(UTC).isoformat(timespec="seconds"),
        "last": times[-1].astimezone(UTC).isoformat(timespec="seconds"),
    }
    return ReviewSet(files=files, provenance=provenance)


def stacked(files: list[ReviewedFile]) -> tuple[np.ndarray, np.ndarray]:
    """The files' faces and one label per face, as training takes them."""
    faces = np.concatenate([f.faces for f in files])
    labels = np.concatenate([np.full(len(f.faces), f.label, np.float32) for f in files])
    return faces, labels


@dataclass(frozen=True)
class ReviewedScore:
    """A reviewed file answer's numbers, as `make calibrate --reviews` takes them."""

    review_id: str
    key: str  # the file's sha256 (its source group)
    label: int
    raw: float | None  # the answer's raw_score (its score before calibration)
    models: list[dict]  # name, version, weight, voting, group, as the answer had them


def scores(url: str, password: str | None = None, owner: str | None = None) -> list[ReviewedScore]:
    """Every kept review of a file's answer with its recorded scores (a live verdict has no
    models' list: left out, and so is an answer reviewed without one)."""
    from gateway.server.reviews.store import ReviewStore

    store = ReviewStore.open(url, password)
    try:
        found = store.labelled(owner)
    finally:
        store.close()
    return [
        ReviewedScore(
            review_id=r.id,
            key=r.answer.sha256 or f"answer:{r.answer_id}",
            label=LABELS[r.label],
            raw=r.answer.scores.get("raw_score", r.answer.score),
            models=r.answer.scores["models"],
        )
        for r in found
        if r.answer.scores.get("models")
    ]
