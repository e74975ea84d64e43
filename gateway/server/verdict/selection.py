"""Which models judge a request: by default only the members that can vote
(select_models), their normalised weights, and the notes that explain the choice."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from gateway.server import schemas
from gateway.server.errors import ApiError
from gateway.server.model_server import Ensemble, ModelInfo
from gateway.server.options import ALL_MODELS
from gateway.server.verdict.aggregate import (
    voting_weights,
)
from preprocess.calibration import Calibration, vote_key


@dataclass(frozen=True)
class Selection:
    """The models one request is judged by, and their normalised vote weights; by default
    the members that cannot vote are `skipped` (name -> why), not run."""

    ensemble: Ensemble
    members: list[str]
    weights: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    via_ensemble: bool = False  # one call to the Triton ensemble, else each member directly

    @cached_property
    def groups(self) -> dict[str, str] | None:
        """Member -> specialist group when the vote is max_of_groups, else None (read per
        face and per frame in live mode: computed once)."""
        if self.ensemble.rule != "max_of_groups":
            return None
        return {m: self.ensemble.member(m).group for m in self.members}

    @cached_property
    def calibration(self) -> Calibration | None:
        """The ensemble's calibration when this request votes as the one it was fit on (by
        default it does) with the members' versions it saw, else None: answered raw."""
        calibration = self.ensemble.calibration
        if calibration is None:
            return None
        groups = {m: self.ensemble.member(m).group for m in self.members}
        versions = {m: self.ensemble.member(m).version for m in self.members}
        same_vote = calibration.vote == vote_key(self.ensemble.rule, self.weights, groups)
        if not same_vote or any(versions.get(m) != v for m, v in calibration.versions.items()):
            return None
        return calibration


def model_summary(info: ModelInfo) -> schemas.ModelSummary:
    return schemas.ModelSummary.model_validate(info, from_attributes=True)


def cannot_vote(info: ModelInfo) -> str | None:
    """Why a member's score cannot move a verdict, or None if it votes."""
    if not info.trained and info.weight <= 0:
        return "random weights (no trained checkpoint was exported): it cannot vote"
    if info.weight <= 0:
        return "vote weight 0: it cannot vote"
    return None


def select_models(ensemble: Ensemble, requested: Sequence[str] | None) -> Selection:
    """The models to call and their normalised vote weights.

    None (the default) runs only the members that vote: the ensemble when all of them do,
    else those members called directly, the others `skipped` (a random-weight member costs
    the most CPU and cannot change the answer). ("all",) runs the whole ensemble; a list
    runs those members."""
    available = [m.name for m in ensemble.members]
    skipped: dict[str, str] = {}
    via_ensemble = requested is None or tuple(requested) == (ALL_MODELS,)
    if requested is None:
        reasons = {m.name: cannot_vote(m) for m in ensemble.members}
        skipped = {name: why for name, why in reasons.items() if why is not None}
        members = [name for name in available if name not in skipped] or available
        if len(members) == len(available):
            skipped = {}
    elif tuple(requested) == (ALL_MODELS,):
        members = available
    else:
        members = list(dict.fromkeys(requested))
    unknown = [m for m in members if m not in available]
    if unknown or not members:
        raise ApiError(
            "unknown_model",
            f"unknown model(s) {unknown or '(none given)'}; this server has {available} "
            f"(or '{ALL_MODELS}')",
        )
    weights = voting_weights({m.name: m.weight for m in ensemble.members}, members)
    if weights is None:
        untrained = ", ".join(members)
        raise ApiError(
            "no_voting_model",
            f"none of {untrained} votes (untrained or weight 0): their scores cannot "
            "make a verdict; add a trained model such as "
            f"{[m.name for m in ensemble.members if m.weight > 0]}",
        )
    return Selection(ensemble, members, weights, skipped, via_ensemble and not skipped)


def notes(selection: Selection) -> list[str]:
    ensemble, members, weights = selection.ensemble, selection.members, selection.weights
    result = []
    untrained = [m for m in members if not ensemble.member(m).trained]
    if untrained:
        result.append(
            f"{', '.join(untrained)}: random weights (no trained checkpoint was exported); "
            "their scores are reported for completeness and mean nothing"
        )
    silent = [m for m in members if weights[m] == 0 and m not in untrained]
    if silent:
        result.append(f"{', '.join(silent)}: vote weight 0, reported only")
    if ensemble.calibration is not None and selection.calibration is None:
        result.append(
            "score is the raw vote, not calibrated: these models, or their serving versions, "
            "are not the ones the calibration was fit on (make calibrate fits the default "
            "vote of the serving versions)"
        )
    if selection.skipped:
        result.append(
            f"{', '.join(selection.skipped)}: not run, they cannot vote "
            f"(see skipped); models={ALL_MODELS} runs them too, for display"
        )
    return result
