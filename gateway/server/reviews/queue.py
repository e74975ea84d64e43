"""The review queue: which kept answers wait for a person, and why.

An answer is queued when it is kept (reviews/keeper.py), for one reason, the first that holds:
- `disputed`: the vote's groups disagree (the reason `groups_disagree`, which also makes the
  verdict uncertain: the more specific word wins);
- `uncertain`: the verdict is `uncertain`;
- `sampled`: a confident `fake` or `real`, drawn at random with probability
  GATEWAY_REVIEWS_QUEUE_SAMPLE_SHARE, so that reviews also measure the answers nobody doubts.
`no_face` answers are never queued: there is no face to judge.

The store (store.py) serves the queue per owner: unskipped before skipped, then disputed,
uncertain, sampled, then oldest first (the first to expire).
"""

import random
from dataclasses import dataclass, field
from typing import Literal

from gateway.server.reviews.record import Record

Why = Literal["disputed", "uncertain", "sampled"]
ORDER: tuple[Why, ...] = ("disputed", "uncertain", "sampled")  # the queue's priority
# The verdict room's reason code for groups that disagree (verdict/reasons.py CATALOGUE;
# tests/test_reviews_queue.py checks it is there): reviews sit below verdict, so no import.
DISPUTED_REASON = "groups_disagree"
CONFIDENT = ("fake", "real")


def reason_codes(record: Record) -> list[str]:
    return [r["code"] for r in record.scores.get("reasons", [])]


@dataclass
class Sampler:
    """Why a record is queued, or None. `seed` makes the sampling reproducible (tests,
    audits); None draws from the system's entropy."""

    share: float
    seed: int | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def why(self, record: Record) -> Why | None:
        if not record.faces:
            return None  # nothing a person could look at
        if DISPUTED_REASON in reason_codes(record):
            return "disputed"
        if record.verdict == "uncertain":
            return "uncertain"
        # The draw happens for confident answers only: with a seed, the n-th confident
        # answer's fate does not depend on how many doubtful ones came between.
        if record.verdict in CONFIDENT and self.rng.random() < self.share:
            return "sampled"
        return None
