"""Which members a request runs: by default only those that can vote (select_models)."""

import pytest

from export.members import BUILTIN
from gateway.server.errors import ApiError
from gateway.server.model_server import Ensemble, ModelInfo
from gateway.server.verdict.selection import notes, select_models

NAMES = BUILTIN


def ensemble(trained: dict[str, bool], weights: dict[str, float]) -> Ensemble:
    members = [ModelInfo(n, "1", True, 256, trained[n], weights[n], {}, 32) for n in NAMES]
    return Ensemble("deepfake_ensemble", "full", members, True, 32)


UNTRAINED_PAIR = ensemble(
    {"meso4": True, "mesoinception4": True, "xception": False, "efficientnet_b7": False},
    {"meso4": 0.5, "mesoinception4": 0.5, "xception": 0.0, "efficientnet_b7": 0.0},
)
ALL_TRAINED = ensemble(dict.fromkeys(NAMES, True), dict.fromkeys(NAMES, 0.25))


def test_by_default_members_that_cannot_vote_are_skipped_and_the_voters_called() -> None:
    selection = select_models(UNTRAINED_PAIR, None)
    assert selection.members == ["meso4", "mesoinception4"]
    assert list(selection.skipped) == ["xception", "efficientnet_b7"]
    assert "random weights" in selection.skipped["xception"]
    assert not selection.via_ensemble  # the ensemble would run all four
    assert selection.weights == {"meso4": 0.5, "mesoinception4": 0.5}
    assert any("models=all" in n for n in notes(selection))


def test_models_all_runs_the_whole_ensemble() -> None:
    selection = select_models(UNTRAINED_PAIR, ("all",))
    assert selection.members == list(NAMES) and selection.skipped == {}
    assert selection.via_ensemble
    assert selection.weights["xception"] == 0


def test_with_every_member_trained_the_default_is_the_ensemble_unchanged() -> None:
    selection = select_models(ALL_TRAINED, None)
    assert selection.members == list(NAMES) and selection.skipped == {}
    assert selection.via_ensemble


def test_a_member_weighted_zero_is_skipped_for_its_weight() -> None:
    weights = dict.fromkeys(NAMES, 0.25) | {"efficientnet_b7": 0.0}
    selection = select_models(ensemble(dict.fromkeys(NAMES, True), weights), None)
    assert list(selection.skipped) == ["efficientnet_b7"]
    assert "weight 0" in selection.skipped["efficientnet_b7"]


def test_named_members_are_called_directly_and_nothing_is_skipped() -> None:
    selection = select_models(UNTRAINED_PAIR, ("meso4", "xception"))
    assert selection.members == ["meso4", "xception"] and not selection.via_ensemble
    assert selection.skipped == {}
    with pytest.raises(ApiError) as refused:
        select_models(UNTRAINED_PAIR, ("xception",))
    assert refused.value.code == "no_voting_model"
