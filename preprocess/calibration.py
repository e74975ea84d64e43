"""The calibration of the video score: the vote's raw score to P(fake), shared by export and
the gateway (like tensors.py).

`make calibrate` (export/calibrate.py) fits it per profile on labelled clips and writes it
into model_repository/calibration.toml; export puts each profile's table into its
deepfake_vote config (parameter `calibration`, JSON), where the gateway reads it with the
vote rule. A calibration holds only for the vote it was fit on (`vote`, vote_key) and the
members' versions it saw: a request judged by other models, a repository whose vote
changed, or a fine-tuned version serving, is answered raw.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

METHODS = ("platt", "temperature")
# Scores are clipped this far from 0 and 1 before the logit: a member's 1.0 stays finite.
EPS = 1e-6


def logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def vote_key(rule: str, weights: Mapping[str, float], groups: Mapping[str, str] | None) -> str:
    """What a vote computes, as text: its rule, and each voting member's normalised weight
    (and group, under max_of_groups), by name. Members at weight 0 are left out: a lite
    and a full profile whose extra members cannot vote vote alike."""
    voting = {m: w for m, w in weights.items() if w > 0}
    total = sum(voting.values()) or 1.0
    grouped = rule == "max_of_groups" and groups
    parts = [
        f"{m}={w / total:.4f}" + (f"@{groups[m]}" if grouped and groups else "")
        for m, w in sorted(voting.items())
    ]
    return f"{rule}: " + ",".join(parts)


@dataclass(frozen=True)
class Calibration:
    """P(fake) = sigmoid(a * logit(raw) + b): Platt scaling (a, b) or temperature
    scaling (b = 0, a = 1/T). `a` > 0, so a higher raw score is never less fake and the
    most fake track stays the most fake."""

    method: str
    a: float
    b: float
    vote: str  # vote_key of the vote it was fit on
    uncertain_band: float  # half-width around the threshold, measured (export/calibrate.py)
    versions: dict = field(default_factory=dict)  # each voting member's version it was fit on
    provenance: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of {METHODS}")
        if not self.a > 0 or (self.method == "temperature" and self.b != 0):
            raise ValueError(f"calibration {self.method} a={self.a} b={self.b}: needs a > 0")

    @property
    def caveat(self) -> str:
        n, sources = self.provenance.get("n", "?"), self.provenance.get("sources", "?")
        prior = self.provenance.get("prior_fake")
        share = "" if prior is None else f" P(fake) assumes their share of fakes, {prior:.0%}:"
        return (
            f"fit and measured on {n} clips from {sources} sources: the intervals are wide, "
            f"a clip or two moves every figure.{share} calibrate on your own labelled clips "
            "(make calibrate DATA=folder) before trusting it, and set the operating point "
            "with `threshold`"
        )

    def apply(self, raw: float) -> float:
        return sigmoid(self.a * logit(raw) + self.b)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        return cls(
            method=str(data["method"]),
            a=float(data["a"]),
            b=float(data.get("b", 0.0)),
            vote=str(data["vote"]),
            uncertain_band=float(data["uncertain_band"]),
            versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            provenance=dict(data.get("provenance", {})),
            figures=dict(data.get("figures", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> "Calibration | None":
        """The vote config's `calibration` parameter; empty: none."""
        return cls.from_dict(json.loads(text)) if text.strip() else None
