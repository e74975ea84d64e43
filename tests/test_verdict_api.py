"""Four verdicts with reasons through the API, in process over the fake model server: a
request's threshold at its own score is uncertain, the band is a setting, thin evidence and
no face say why, and the answer's shape is what the OpenAPI document states."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.schemas import DetectAnswer
from tests.conftest import InProcessGateway, inprocess_gateway
from tests.stack import MEDIA, OBAMA

CLIP = MEDIA / "videos/real/ffpp_c23_original_519.mp4"


def detect(gateway: InProcessGateway, path: Path, **params: object) -> DetectAnswer:
    response = gateway.gateway_client.detect_response(path, **params)
    assert response.status_code == 200, response.text
    return DetectAnswer.model_validate(response.json())


def counted(gateway: InProcessGateway, verdict: str) -> float:
    """gateway_verdicts_total{verdict} as /metrics says it."""
    for family in text_string_to_metric_families(gateway.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "gateway_verdicts_total" and sample.labels == {"verdict": verdict}:
                return sample.value
    return 0.0


def codes(answer: DetectAnswer) -> list[str]:
    return [r.code for r in answer.reasons]


def test_a_threshold_at_the_score_is_uncertain_and_says_why(api: InProcessGateway) -> None:
    """The request's threshold sets the operating point; a score within the band of it is
    uncertain, with near_threshold; further, plainly fake or real without reasons. The band
    is the measured one (GATEWAY_UNCERTAIN_BAND unset, the committed calibration's), which
    GET /api/models shows: wide, so a threshold 0.3 above the score is still too close."""
    band = api.client.get("/api/models").json()["calibration"]["uncertain_band"]
    first = detect(api, OBAMA)
    assert first.score is not None and first.score - band - 0.05 >= 0.0
    before = counted(api, "uncertain")
    near = detect(api, OBAMA, threshold=round(first.score, 4))
    assert (near.verdict, codes(near)) == ("uncertain", ["near_threshold"])
    assert near.score == pytest.approx(first.score)
    assert f"{near.score:.3f}" in near.reasons[0].message
    assert f"within {band:.3f} of the threshold" in near.reasons[0].message
    assert counted(api, "uncertain") == before + 1
    below = detect(api, OBAMA, threshold=first.score - band - 0.05)
    assert (below.verdict, below.reasons) == ("fake", [])
    for inside in (first.score - band + 0.01, min(first.score + 0.3, 1.0)):
        assert codes(detect(api, OBAMA, threshold=inside)) == ["near_threshold"]


def test_the_report_shows_the_verdict_and_its_reasons(api: InProcessGateway) -> None:
    score = detect(api, OBAMA).score
    assert score is not None
    answer = detect(api, OBAMA, threshold=round(score, 4))
    page = api.gateway_client.report(answer.model_dump(mode="json")).decode()
    assert 'data-verdict="uncertain"' in page and "<h2>Uncertain</h2>" in page
    assert '<li data-code="near_threshold"><code>near_threshold</code>: ' in page


def test_the_band_is_a_setting(tmp_path: Path) -> None:
    """GATEWAY_UNCERTAIN_BAND 0: the threshold at the score is the plain cut (fake); 0.05: plain
    on either side beyond it; 0.5: the whole range is uncertain (unset: the measured band,
    above, and tests/test_calibration.py)."""
    with inprocess_gateway(tmp_path / "none", uncertain_band=0.0) as gateway:
        score = detect(gateway, OBAMA).score
        assert score is not None
        threshold = round(score, 4)
        at = detect(gateway, OBAMA, threshold=threshold)
        assert (at.verdict, at.reasons) == ("fake" if score >= threshold else "real", [])
    with inprocess_gateway(tmp_path / "narrow", uncertain_band=0.05) as gateway:
        for threshold, verdict in ((score - 0.1, "fake"), (score + 0.1, "real")):
            plain = detect(gateway, OBAMA, threshold=threshold)
            assert (plain.verdict, plain.reasons) == (verdict, [])
        assert codes(detect(gateway, OBAMA, threshold=score + 0.04)) == ["near_threshold"]
    with inprocess_gateway(tmp_path / "wide", uncertain_band=0.5) as gateway:
        for threshold in (max(score - 0.45, 0.0), score, min(score + 0.45, 1.0)):
            assert detect(gateway, OBAMA, threshold=threshold).verdict == "uncertain"


def test_a_video_with_faces_in_few_frames_is_uncertain(api: InProcessGateway) -> None:
    """Two sampled frames of a clip: faces in 2, under the 4 needed."""
    answer = detect(api, CLIP, frames=2)
    assert answer.verdict == "uncertain" and "few_face_frames" in codes(answer)
    assert "faces in 2 of 2 sampled frames, under the 4 needed" in [
        r.message for r in answer.reasons
    ]
    # Sixteen frames of the same clip: no such doubt.
    assert "few_face_frames" not in codes(detect(api, CLIP, frames=16))


def test_no_face_says_why(api: InProcessGateway, tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((240, 320, 3), 128, np.uint8))
    answer = detect(api, gray)
    assert (answer.verdict, codes(answer)) == ("no_face", ["no_face_found"])
    assert answer.reasons[0].message == "no face found in the 1 sampled frame(s)"


def test_the_openapi_document_states_the_four_verdicts_and_the_reasons(
    api: InProcessGateway,
) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    answer = schemas["DetectAnswer"]["properties"]
    assert answer["verdict"]["enum"] == ["fake", "real", "uncertain", "no_face"]
    assert answer["reasons"]["items"] == {"$ref": "#/components/schemas/Reason"}
    assert set(schemas["Reason"]["required"]) == {"code", "message"}
