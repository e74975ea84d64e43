"""The calibration of the video score (issue 27): the fit, the leave-one-source-out split,
the figures and their bootstrap, the uncertain band (export/calibrate.py); the map the
gateway applies (preprocess/calibration.py), the configs export writes, the answer's
`score` and `raw_score`, GET /api/models; and `make calibrate` on the shared clips against
the real lite stack."""

import json
import math
import shutil
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sklearn_log_loss

from export import calibrate
from export.members import discover
from export.profiles import VOTE, read_calibration, vote_of, write_profile
from gateway.server.model_server import Ensemble, ModelInfo
from gateway.server.schemas import DetectAnswer, ModelsAnswer
from gateway.server.verdict.aggregate import Strategy
from gateway.server.verdict.judge import Judge
from gateway.server.verdict.rules import FALLBACK_BAND, Doubts, Evidence
from gateway.server.verdict.selection import Selection, notes
from preprocess.calibration import Calibration, sigmoid, vote_key
from tests.conftest import MEDIA, REPOSITORY, Gateway, InProcessGateway

SHARED_CLIPS = sorted(
    str(p.relative_to(MEDIA / "videos")) for p in (MEDIA / "videos").glob("*/*.mp4")
)


def calibration(a: float = 2.0, b: float = -1.0, vote: str = "") -> Calibration:
    return Calibration("platt", a, b, vote=vote, uncertain_band=0.1, provenance={"n": 19})


# --- sources and the split --------------------------------------------------------------


def test_clips_of_one_source_video_or_person_share_a_group() -> None:
    groups = dict(zip(SHARED_CLIPS, calibrate.source_groups(SHARED_CLIPS), strict=True))
    same = [
        ("real/ffpp_c23_original_519.mp4", "fake/ffpp_c23_Deepfakes_519_515.mp4"),
        ("real/ffpp_c23_original_634.mp4", "fake/ffpp_c23_FaceSwap_634_660.mp4"),
        ("real/ffpp_c23_original_004.mp4", "fake/ffpp_c23_NeuralTextures_004_982.mp4"),
        ("real/cvprw2019_demo.mp4", "fake/cvprw2019_demo_fake.mp4"),
        ("real/hdtf_via_sadtalker_WDA_KatieHill_000.mp4", "fake/sadtalker_generated_camera"),
    ]
    for one, start in same:
        other = next(c for c in SHARED_CLIPS if c.startswith(start))
        assert groups[one] == groups[other], (one, other)
    dfdc = [groups[c] for c in SHARED_CLIPS if "dfdc" in c]
    assert len(set(dfdc)) == len(dfdc) == 4  # no DFDC metadata here: each its own source
    assert len(set(groups.values())) == 12
    # transitively: a clip sharing a source with either side joins the group
    assert len(set(calibrate.source_groups(["ffpp_a_001_002", "ffpp_b_002_003", "ffpp_003"]))) == 1


def test_sources_named_in_the_folder_override_the_names() -> None:
    names = ["real/a.mp4", "fake/b.mp4", "fake/c.mp4"]
    groups = calibrate.source_groups(names, {"real/a.mp4": "ann", "fake/c.mp4": "ann"})
    assert groups[0] == groups[2] != groups[1]


def test_leave_one_source_out_never_puts_a_source_on_both_sides() -> None:
    groups = calibrate.source_groups(SHARED_CLIPS)
    folds = calibrate.leave_one_source_out(groups)
    assert len(folds) == len(set(groups))
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(groups)))  # every clip tested once
    for train, test in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        assert len(train) + len(test) == len(groups)


# --- the fit --------------------------------------------------------------------------


def platt_data(a: float, b: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores whose true P(fake) is sigmoid(a logit(raw) + b), labels drawn from it."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.01, 0.99, n)
    p = 1 / (1 + np.exp(-(a * np.log(raw / (1 - raw)) + b)))
    return raw, (rng.uniform(size=n) < p).astype(int)


def test_platt_recovers_the_map_the_labels_were_drawn_from() -> None:
    raw, y = platt_data(0.6, 1.1, 4000)
    a, b = calibrate.fit(raw, y, "platt")
    assert a == pytest.approx(0.6, abs=0.08) and b == pytest.approx(1.1, abs=0.12)


def test_temperature_has_one_parameter_and_the_map_stays_monotone() -> None:
    raw, y = platt_data(0.5, 0.0, 2000)
    a, b = calibrate.fit(raw, y, "temperature")
    assert b == 0.0 and a == pytest.approx(0.5, abs=0.08)
    # labels that fall as the score rises: the map does not turn round, it flattens
    a, _ = calibrate.fit(raw, 1 - y, "platt")
    assert a == pytest.approx(1e-3)


def test_isotonic_is_refused_on_a_few_clips() -> None:
    with pytest.raises(SystemExit, match="isotonic"):
        calibrate.fit(np.array([0.2, 0.8]), np.array([0, 1]), "isotonic")


def test_platts_targets_keep_a_separable_set_from_certainty() -> None:
    """Two perfectly separated clips: plain logistic regression would run a to infinity."""
    a, b = calibrate.fit(np.array([0.2, 0.3, 0.7, 0.8]), np.array([0, 0, 1, 1]))
    cal = calibration(a, b)
    assert 0.7 < cal.apply(0.8) < 0.95 and 0.05 < cal.apply(0.2) < 0.3


def test_out_of_sample_scores_come_from_fits_without_the_clips_source() -> None:
    raw = np.array([0.1, 0.2, 0.9, 0.8, 0.5, 0.55])
    y = np.array([0, 0, 1, 1, 1, 0])
    groups = [0, 1, 2, 3, 4, 4]
    oos = calibrate.out_of_sample(raw, y, groups, "platt")
    for train, test in calibrate.leave_one_source_out(groups):
        a, b = calibrate.fit(raw[train], y[train])
        assert oos[test] == pytest.approx([calibration(a, b).apply(r) for r in raw[test]])
    in_sample = [calibration(*calibrate.fit(raw, y)).apply(r) for r in raw]
    assert not np.allclose(oos, in_sample)


# --- the figures ----------------------------------------------------------------------


def test_log_loss_and_brier_are_the_usual_ones() -> None:
    rng = np.random.default_rng(1)
    p, y = rng.uniform(0.01, 0.99, 50), rng.integers(0, 2, 50)
    assert calibrate.log_loss(p, y) == pytest.approx(sklearn_log_loss(y, p))
    assert calibrate.brier(p, y) == pytest.approx(brier_score_loss(y, p))


def test_expected_calibration_error_weighs_each_bins_gap() -> None:
    p = np.array([0.1, 0.1, 0.9, 0.9, 0.5])
    y = np.array([0, 1, 1, 1, 1])
    # bins of 0.2: [0.1, 0.1] vs 1/2 fakes, [0.9, 0.9] vs 2/2, [0.5] vs 1
    expected = 2 / 5 * 0.4 + 2 / 5 * 0.1 + 1 / 5 * 0.5
    assert calibrate.expected_calibration_error(p, y) == pytest.approx(expected)
    assert calibrate.expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0


def test_the_bootstrap_draws_whole_sources_and_its_interval_narrows_with_data() -> None:
    groups = [0, 0, 0, 1, 2, 2]
    for draw in calibrate.resamples(groups, 200):
        counts = np.bincount(draw, minlength=6)
        assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
    assert all(
        np.array_equal(x, z)
        for x, z in zip(calibrate.resamples(groups, 5), calibrate.resamples(groups, 5), strict=True)
    )

    def width(n: int) -> float:
        raw, y = platt_data(1.0, 0.0, n, seed=2)
        low, high = calibrate.interval(calibrate.brier, raw, y, calibrate.resamples(range(n), 500))
        assert low <= calibrate.brier(raw, y) <= high
        return high - low

    assert width(400) < width(25) / 2


def test_figures_hold_every_metric_raw_and_calibrated_with_intervals() -> None:
    raw, y = platt_data(0.5, 1.0, 60)
    cal = calibrate.out_of_sample(raw, y, list(range(60)), "platt")
    table = calibrate.figures(raw, cal, y, list(range(60)), 300)
    assert set(table) == {"log_loss", "brier", "ece", "accuracy"}
    for f in table.values():
        assert f["raw_interval"][0] <= f["raw_interval"][1]
        assert f["calibrated_interval"][0] <= f["calibrated_interval"][1]
    # an uncalibrated score (true map a=0.5, b=1) gains from calibration
    assert table["log_loss"]["calibrated"] < table["log_loss"]["raw"]


def test_the_uncertain_band_is_the_narrowest_that_reaches_the_target() -> None:
    p = np.array([0.95, 0.9, 0.1, 0.6, 0.45, 0.3])
    y = np.array([1, 1, 0, 0, 1, 0])  # 0.6 and 0.45 are wrong at 0.5
    assert calibrate.uncertain_band(p, y, 0.5, 1.0) == pytest.approx(0.1)  # both inside
    assert calibrate.uncertain_band(p, y, 0.5, 0.8) == pytest.approx(0.05)  # 4/5 right outside
    assert calibrate.uncertain_band(p, y, 0.5, 0.6) == 0.0
    wrong = np.array([0, 0, 1, 1, 0, 1])
    assert calibrate.uncertain_band(p, wrong, 0.5, 0.9) == pytest.approx(0.45)  # all inside


# --- the map the gateway applies, and the data export writes ---------------------------


def test_the_map_is_platts_and_monotone() -> None:
    cal = calibration(2.0, -1.0)
    assert cal.apply(0.5) == pytest.approx(sigmoid(-1.0))
    assert cal.apply(0.8) == pytest.approx(1 / (1 + math.exp(-(2 * math.log(4) - 1))))
    values = [cal.apply(r) for r in np.linspace(0, 1, 101)]
    assert values == sorted(values) and values[0] > 0 and values[-1] < 1
    assert Calibration.from_json(cal.to_json()) == cal
    assert Calibration.from_json("") is None
    with pytest.raises(ValueError):
        Calibration("platt", -1.0, 0.0, vote="", uncertain_band=0.1)
    with pytest.raises(ValueError):
        Calibration("isotonic", 1.0, 0.0, vote="", uncertain_band=0.1)


def test_a_vote_key_ignores_members_that_cannot_vote() -> None:
    lite = {"meso4": 0.5, "meso4_f2f": 0.5}
    full = lite | {"xception": 0.0}
    groups = {"meso4": "swap", "meso4_f2f": "f2f", "xception": "swap"}
    assert vote_key("max_of_groups", lite, groups) == vote_key("max_of_groups", full, groups)
    assert vote_key("max_of_groups", lite, groups) != vote_key("mean", lite, groups)
    assert vote_key("mean", {"meso4": 2.0, "meso4_f2f": 2.0}, None) == vote_key("mean", lite, {})


def repository_copy(tmp: Path) -> Path:
    """The committed model repository without its graphs: what export's configs read."""
    repo = tmp / "model_repository"
    shutil.copytree(REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "1"))
    return repo


def test_export_writes_a_calibration_only_into_the_vote_it_was_fit_on(tmp_path: Path) -> None:
    repo = repository_copy(tmp_path)
    manifests = discover(repo)
    names = ["meso4", "mesoinception4", "meso4_f2f", "mesoinception4_f2f"]
    fitted = calibration(vote=vote_of(repo, names, manifests).key)
    calibrate.write_calibration(repo, "lite", fitted)
    config = (repo / "lite" / VOTE / "config.pbtxt").read_text()
    assert '"calibration"' in config
    # the full profile votes alike while Xception and B7 cannot vote: the same table fits
    full = vote_of(repo, [*names[:2], "xception", "efficientnet_b7", *names[2:]], manifests)
    assert read_calibration(repo, "lite", full) == fitted
    # a changed vote leaves it out: the gateway answers raw until make calibrate runs again
    vote_toml = repo / "vote.toml"
    vote_toml.write_text(vote_toml.read_text().replace('rule = "max_of_groups"', 'rule = "mean"'))
    write_profile(repo, "lite", manifests)
    assert '"calibration"' not in (repo / "lite" / VOTE / "config.pbtxt").read_text()
    table = tomllib.loads((repo / "calibration.toml").read_text())["lite"]
    assert Calibration.from_dict(table) == fitted  # the TOML written reads back the same


# --- the judging path -----------------------------------------------------------------


def selection(cal: Calibration | None, weights: dict[str, float] | None = None) -> Selection:
    groups = {"df": "swap", "f2f": "f2f"}
    members = [ModelInfo(m, "1", True, 256, True, 1.0, {}, 8, group=g) for m, g in groups.items()]
    ensemble = Ensemble("deepfake_ensemble", "lite", members, True, 8, "max_of_groups", cal)
    weights = weights or {"df": 0.5, "f2f": 0.5}
    return Selection(ensemble, [m for m in groups if m in weights], weights)


# Only the band among the doubts (verdict/rules.py), on plain evidence: 4 of 4 frames, big faces.
BAND_ONLY = Doubts(band=0.05, group_margin=1.0, min_face_frames=1, min_face_scale=0.0)
PLAIN = Evidence(4, 4, 4, [400.0] * 4, 0.0)


def judge(cal: Calibration | None, threshold: float = 0.5, **weights: float) -> Judge:
    return Judge(selection(cal, weights or None), Strategy(), threshold, BAND_ONLY)


def test_the_verdict_cuts_the_calibrated_score_and_keeps_the_raw_one() -> None:
    key = vote_key("max_of_groups", {"df": 1, "f2f": 1}, {"df": "swap", "f2f": "f2f"})
    cal = calibration(2.0, -1.0, key)  # raw 0.55 -> 0.355
    track = [[0, 1, 2, 3]]
    scores = {"df": np.full(4, 0.55, np.float32), "f2f": np.full(4, 0.1, np.float32)}
    judged = judge(cal).tracks(track, scores, PLAIN)
    assert judged.raw_score == pytest.approx(0.55)
    assert judged.score == pytest.approx(cal.apply(judged.raw_score))
    assert judged.score == pytest.approx(0.355, abs=1e-3) and judged.verdict == "real"
    raw = judge(None).tracks(track, scores, PLAIN)
    assert raw.score == raw.raw_score == pytest.approx(0.55) and raw.verdict == "fake"
    # a request's threshold applies to the calibrated score
    assert judge(cal, 0.3).tracks(track, scores, PLAIN).verdict == "fake"
    # and so does the band around it: raw 0.62 is far from 0.5, its calibrated 0.497 is not
    near = {"df": np.full(4, 0.62, np.float32), "f2f": np.full(4, 0.1, np.float32)}
    assert judge(None).tracks(track, near, PLAIN).verdict == "fake"
    doubted = judge(cal).tracks(track, near, PLAIN)
    assert doubted.verdict == "uncertain" and doubted.reasons[0].code == "near_threshold"
    # another version serving (a fine-tuned df) is not what was calibrated either
    fitted_on_v1 = Calibration("platt", 2.0, -1.0, key, 0.1, versions={"df": "1", "f2f": "1"})
    assert selection(fitted_on_v1).calibration == fitted_on_v1
    assert selection(replace(fitted_on_v1, versions={"df": "2", "f2f": "1"})).calibration is None
    # another vote (one member asked for) is not what was calibrated: raw, and said so
    alone = judge(cal, df=1.0)
    assert alone.selection.calibration is None
    assert alone.tracks([[0, 1]], {"df": scores["df"]}, PLAIN).score == pytest.approx(0.55)
    assert any("not calibrated" in n for n in notes(alone.selection))
    assert not any("not calibrated" in n for n in notes(selection(cal)))


def test_an_unset_band_is_the_calibrations_measured_one_where_the_score_is_calibrated() -> None:
    """GATEWAY_UNCERTAIN_BAND unset: the band make calibrate measured, around a calibrated
    score; a raw score (another vote) keeps the fallback, whose scale it is; a set band wins."""
    key = vote_key("max_of_groups", {"df": 1, "f2f": 1}, {"df": "swap", "f2f": "f2f"})
    cal = replace(calibration(2.0, -1.0, key), uncertain_band=0.3)
    unset = Doubts(band=None, group_margin=1.0, min_face_frames=1, min_face_scale=0.0)
    assert unset.band_for(selection(cal)) == 0.3
    assert unset.band_for(selection(cal, {"df": 1.0})) == FALLBACK_BAND
    assert replace(unset, band=0.01).band_for(selection(cal)) == 0.01
    track = [[0, 1, 2, 3]]
    clear = {"df": np.full(4, 0.7, np.float32), "f2f": np.full(4, 0.1, np.float32)}  # -> 0.666
    doubted = Judge(selection(cal), Strategy(), 0.5, unset).tracks(track, clear, PLAIN)
    assert doubted.verdict == "uncertain" and doubted.reasons[0].code == "near_threshold"
    assert judge(cal).tracks(track, clear, PLAIN).verdict == "fake"  # band 0.05


# --- the service ----------------------------------------------------------------------


def committed() -> Calibration:
    """The lite profile's calibration as committed (make calibrate on the shared clips)."""
    return Calibration.from_dict(
        tomllib.loads((REPOSITORY / "calibration.toml").read_text())["lite"]
    )


def test_the_models_route_shows_the_calibration_and_says_its_intervals_are_wide(
    api: InProcessGateway,
) -> None:
    answer = ModelsAnswer.model_validate(api.client.get("/api/models").json())
    assert answer.calibration is not None
    served = committed()
    assert answer.calibration.parameters == {"a": served.a, "b": served.b}
    assert answer.calibration.uncertain_band == served.uncertain_band
    assert answer.calibration.provenance["n"] == 19 and "data_sha256" in served.provenance
    for name in ("log_loss", "brier", "ece"):
        figure = answer.calibration.figures[name]
        assert set(figure) == {"raw", "raw_interval", "calibrated", "calibrated_interval"}
    caveat = answer.calibration.caveat
    assert "19 clips" in caveat and "wide" in caveat and "58%" in caveat  # the share of fakes


def test_the_answers_score_is_calibrated_and_its_raw_score_kept(api: InProcessGateway) -> None:
    served = committed()
    image = MEDIA / "images/real/face_recognition_obama.jpg"
    answer = DetectAnswer.model_validate(api.gateway_client.detect(image))
    decisive = next(t for t in answer.tracks if t.decisive)
    assert answer.raw_score == pytest.approx(decisive.score)
    assert answer.score == pytest.approx(served.apply(answer.raw_score))
    assert answer.score != pytest.approx(answer.raw_score)
    one = DetectAnswer.model_validate(api.gateway_client.detect(image, models="meso4"))
    assert one.score == pytest.approx(one.raw_score)
    assert any("not calibrated" in n for n in one.notes)


def test_the_raw_scores_come_from_the_gateways_answers(
    api: InProcessGateway, tmp_path: Path
) -> None:
    """make calibrate's collection, in process: each clip's raw_score, and the vote that
    judged them, as export writes it for the profile."""
    for label, name in (
        ("real", "face_recognition_obama.jpg"),
        ("fake", "dfdc_mqzvfufzoq_fr0.jpg"),
    ):
        (tmp_path / label).mkdir()
        shutil.copy(MEDIA / "images" / label / name, tmp_path / label / name)
    clips, facts, faceless = calibrate.raw_scores(api.gateway_client, tmp_path)
    assert [c.label for c in clips] == [0, 1] and faceless == []
    answers = [api.gateway_client.detect(tmp_path / c.name) for c in clips]
    assert [c.raw for c in clips] == pytest.approx([a["raw_score"] for a in answers])
    assert facts["profile"] == "lite" and facts["frames"] > 0
    assert facts["vote"] == committed().vote and facts["versions"] == committed().versions


# --- make calibrate on the shared clips, against the real lite stack -------------------


def test_make_calibrate_fits_the_shared_clips_in_a_few_minutes(
    lite_gateway: Gateway, tmp_path: Path
) -> None:
    repo = repository_copy(tmp_path)
    start = time.monotonic()
    calibrate.main(["--url", lite_gateway.url, "--repo", str(repo), "--out", str(tmp_path)])
    seconds = time.monotonic() - start
    assert seconds < 360, f"make calibrate took {seconds:.0f} s"  # 171 s here, 2 shared cores
    table = tomllib.loads((repo / "calibration.toml").read_text())["lite"]
    fitted = Calibration.from_dict(table)
    assert fitted.provenance["n"] == 19 and fitted.provenance["sources"] == 12
    assert fitted.provenance["fake"] == 11 and fitted.a > 0
    for f in fitted.figures.values():
        assert f["calibrated_interval"][0] <= f["calibrated_interval"][1]
    rows = json.loads((tmp_path / "lite.json").read_text())
    assert len(rows) == 19 and (tmp_path / "lite.png").stat().st_size > 1000
    # the committed calibration was fit on the same clips through the same path
    served = committed()
    assert fitted.provenance["data_sha256"] == served.provenance["data_sha256"]
    assert fitted.a == pytest.approx(served.a, abs=0.02)
    assert fitted.b == pytest.approx(served.b, abs=0.02)
    config = (repo / "lite" / VOTE / "config.pbtxt").read_text()
    assert fitted.to_json().replace('"', '\\"') in config
