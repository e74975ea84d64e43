"""make eval's comparison of members and vote rules, from answers' per-track scores."""

from pathlib import Path

import numpy as np
import pytest

from gateway.programs.evaluate import compare, manipulation, reliability


def answer(tracks: list[tuple[int, dict[str, float]]], frames: int = 32) -> dict:
    return {
        "frames": [{"faces": []}] * frames,
        "tracks": [
            {"frames": list(range(n)), "models": models, "score": 0.0} for n, models in tracks
        ],
        "models": [
            {"name": "df", "trained": True, "group": "swap"},
            {"name": "f2f", "trained": True, "group": "f2f"},
        ],
    }


ANSWERS = {
    "real/stage.mp4": answer([(32, {"df": 0.1, "f2f": 0.2}), (2, {"df": 0.95, "f2f": 0.9})]),
    "fake/ffpp_c23_Face2Face_1.mp4": answer([(32, {"df": 0.2, "f2f": 0.8})]),
    "fake/ffpp_c23_Deepfakes_1.mp4": answer([(32, {"df": 0.9, "f2f": 0.3})]),
}


def test_members_and_rules_are_compared_per_manipulation_type() -> None:
    table = compare(ANSWERS, min_share=1 / 3)
    assert set(table) == {"df", "f2f", "mean of all", "max of groups"}
    assert table["df"]["caught"] == {"Deepfakes": "1/1", "Face2Face": "0/1"}
    assert table["f2f"]["caught"] == {"Deepfakes": "0/1", "Face2Face": "1/1"}
    assert table["max of groups"]["caught"] == {"Deepfakes": "1/1", "Face2Face": "1/1"}
    assert table["max of groups"]["correct"] == 3 and table["max of groups"]["auc"] == 1.0
    assert table["mean of all"]["scores"]["fake/ffpp_c23_Face2Face_1.mp4"] == 0.5


def test_the_short_track_rule_keeps_a_glimpse_from_deciding() -> None:
    strict, loose = compare(ANSWERS, 1 / 3), compare(ANSWERS, 0.0)
    assert loose["df"]["scores"]["real/stage.mp4"] == 0.95
    assert strict["df"]["scores"]["real/stage.mp4"] == 0.1


def test_manipulation_types_come_from_clip_names() -> None:
    assert manipulation("fake/dfdc_abc.mp4") == "DFDC"
    assert manipulation("fake/ffpp_deepfakes_003_000.mp4") == "Deepfakes"
    assert manipulation("fake/cvprw2019_demo_fake.mp4") == "other"


def test_make_eval_draws_the_reliability_diagram_of_raw_served_and_out_of_sample_scores(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    answers = {
        f"{label}/ffpp_{n:03d}.mp4": {"raw_score": raw, "score": min(1.0, raw + 0.1)}
        for n, (label, raw) in enumerate(
            [("real", float(r)) for r in rng.uniform(0, 0.6, 10)]
            + [("fake", float(r)) for r in rng.uniform(0.3, 1, 10)]
        )
    }
    answers["real/no_face.mp4"] = {"raw_score": None, "score": None}
    png = tmp_path / "reliability.png"
    figures = reliability(answers, png)
    assert png.stat().st_size > 1000
    assert set(figures) == {"raw", "served by the gateway", "calibrated out of sample"}
    for table in figures.values():
        assert set(table) == {"log_loss", "brier", "ece", "accuracy"}
        value, (low, high) = table["brier"]
        assert low <= high and 0 <= value <= 1
    assert figures["raw"]["brier"][0] == pytest.approx(  # rounded to 4 decimals
        np.mean([(a["raw_score"] - (c[0] == "f")) ** 2 for c, a in answers.items() if a["score"]]),
        abs=1e-4,
    )
