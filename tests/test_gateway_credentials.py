"""Content credentials in the answer and the verdict: media signed here (tests/credentials_support)
sent to the gateway in process over the fake model server, and once to the real gateway."""

# ruff: noqa: F811 — the authority fixture is imported from credentials_support, then used

import asyncio
import time
from pathlib import Path

import pytest

from gateway.programs.cli import summary
from gateway.server.analysis import analysis
from gateway.server.schemas import DetectAnswer
from preprocess.credentials import read_credentials
from tests.conftest import Gateway, InProcessGateway, inprocess_gateway
from tests.credentials_support import (
    AI_GENERATED,
    CREATED_AT,
    Authority,
    altered,
    authority,  # noqa: F401 — a fixture
    image_bytes,
    write,
)
from tests.stack import OBAMA, REAL_CLIP


@pytest.fixture(scope="module")
def signed(authority: Authority, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files every test sends: signed copies of a shared face photo and clip (in tmp,
    never in ../shared), a faceless picture declared AI-generated, and edited copies."""
    tmp = tmp_path_factory.mktemp("signed")
    obama = OBAMA.read_bytes()
    ai_faceless = authority.sign(image_bytes(), "image/jpeg", AI_GENERATED)
    return {
        "camera": write(tmp, "camera.jpg", authority.sign(obama, "image/jpeg")),
        "ai_face": write(tmp, "ai_face.jpg", authority.sign(obama, "image/jpeg", AI_GENERATED)),
        "ai_faceless": write(tmp, "ai.jpg", ai_faceless),
        "edited": write(tmp, "edited.jpg", altered(ai_faceless)),
        "edited_face": write(tmp, "edited_face.jpg", altered(authority.sign(obama, "image/jpeg"))),
        "ai_clip": write(
            tmp, "clip.mp4", authority.sign(REAL_CLIP.read_bytes(), "video/mp4", AI_GENERATED)
        ),
    }


def detect(gateway: InProcessGateway, path: Path) -> dict:
    response = gateway.gateway_client.detect_response(path, frames=4)
    assert response.status_code == 200, response.text
    DetectAnswer.model_validate(response.json())
    return response.json()


def codes(answer: dict) -> list[str]:
    return [reason["code"] for reason in answer["reasons"]]


def test_a_file_without_credentials_has_no_field(api: InProcessGateway) -> None:
    assert "content_credentials" not in detect(api, OBAMA)


def test_camera_capture_is_shown_and_leaves_the_verdict(api: InProcessGateway, signed) -> None:
    plain, answer = detect(api, OBAMA), detect(api, signed["camera"])
    credentials = answer["content_credentials"]
    assert credentials["state"] == "valid"  # no trust anchors: never trusted
    assert (credentials["signer"], credentials["issuer"]) == ("Test Camera", "Test Authority")
    assert credentials["claim_generator"] == "credentials-test/1.0"
    assert credentials["created"] == CREATED_AT
    assert credentials["actions"][0]["action"] == "c2pa.created"
    assert credentials["actions"][0]["digital_source_type"].endswith("/digitalCapture")
    assert credentials["ai_generated"] is False
    assert (answer["verdict"], answer["score"]) == (plain["verdict"], plain["score"])
    assert answer["reasons"] == plain["reasons"]


def test_declared_ai_generation_makes_it_fake_whatever_the_faces(
    api: InProcessGateway, signed
) -> None:
    faceless = detect(api, signed["ai_faceless"])
    assert faceless["verdict"] == "fake" and faceless["score"] is None
    assert codes(faceless)[0] == "declared_ai_generated"
    assert faceless["content_credentials"]["ai_generated"] is True
    with_face = detect(api, signed["ai_face"])
    assert with_face["verdict"] == "fake" and codes(with_face)[0] == "declared_ai_generated"
    assert with_face["score"] == detect(api, OBAMA)["score"]  # the faces' score, unchanged
    clip = detect(api, signed["ai_clip"])
    assert clip["verdict"] == "fake" and clip["content_credentials"]["state"] == "valid"


def test_credentials_edited_after_signing_are_invalid_and_not_believed(
    api: InProcessGateway, signed
) -> None:
    answer = detect(api, signed["edited"])
    assert answer["content_credentials"]["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in answer["content_credentials"]["failures"]
    assert answer["verdict"] == "no_face"  # its AI declaration does not count
    assert codes(answer) == ["no_face_found", "credentials_invalid"]
    with_face, plain = detect(api, signed["edited_face"]), detect(api, OBAMA)
    assert with_face["verdict"] == plain["verdict"] and with_face["score"] == plain["score"]
    assert codes(with_face) == [*codes(plain), "credentials_invalid"]


def test_trust_anchors_setting_makes_them_trusted(
    authority: Authority, signed, tmp_path: Path
) -> None:
    anchors = write(tmp_path, "anchors.pem", authority.anchors.encode())
    with inprocess_gateway(tmp_path, credentials_trust_anchors=anchors) as gateway:
        assert detect(gateway, signed["camera"])["content_credentials"]["state"] == "trusted"


def test_a_mangled_manifest_is_no_credentials_never_a_500(
    api: InProcessGateway, signed, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytearray(signed["camera"].read_bytes())
    start = data.index(b"jumb") + 100  # inside the manifest store (JUMBF): the library fails
    data[start : start + 16] = bytes(16)
    path = write(signed["camera"].parent, "mangled.jpg", bytes(data))
    with caplog.at_level("INFO", logger="preprocess.credentials"):
        assert "content_credentials" not in detect(api, path)
    assert "content credentials unreadable" in caplog.text


def test_the_real_gateway_reads_credentials(lite_gateway: Gateway, signed) -> None:
    """python -m gateway over a real lite Triton: the same rulings as in process."""
    client = lite_gateway.client
    ai = client.detect(signed["ai_face"], frames=2)
    assert ai["verdict"] == "fake" and ai["content_credentials"]["ai_generated"]
    assert codes(ai)[0] == "declared_ai_generated"
    edited = client.detect(signed["edited_face"], frames=2)
    assert edited["content_credentials"]["state"] == "invalid"
    assert "credentials_invalid" in codes(edited)
    assert "content_credentials" not in client.detect(OBAMA, frames=2)


def test_the_openapi_document_describes_them(api: InProcessGateway) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    answer = schemas["DetectAnswer"]["properties"]["content_credentials"]
    assert {"$ref": "#/components/schemas/ContentCredentials"} in answer["anyOf"]
    assert "content_credentials" not in schemas["DetectAnswer"].get("required", [])
    credentials = schemas["ContentCredentials"]["properties"]
    assert credentials["state"]["enum"] == ["invalid", "valid", "trusted"]
    assert set(credentials) >= {"signer", "issuer", "claim_generator", "created", "actions"}
    assert "digital_source_type" in schemas["CredentialAction"]["properties"]


def test_the_report_shows_them(api: InProcessGateway, signed) -> None:
    answer = detect(api, signed["ai_faceless"])
    html = api.gateway_client.report(answer)
    assert "declare it generated by AI" in html.decode()
    assert 'id="credentials" data-state="valid"' in html.decode()
    assert "trainedAlgorithmicMedia" in html.decode() and "Test Camera" in html.decode()
    plain = api.gateway_client.report(detect(api, OBAMA)).decode()
    assert 'id="credentials"' not in plain and "declare it generated" not in plain


def test_the_cli_summary_says_them(api: InProcessGateway, signed) -> None:
    text = summary(detect(api, signed["edited"]))
    assert "content credentials: invalid: assertion.dataHash.mismatch" in text
    assert "signed by Test Camera (issued by Test Authority), declares AI generation" in text
    assert "content credentials" not in summary(detect(api, OBAMA))


def test_reading_runs_off_the_event_loop(
    api: InProcessGateway, signed, monkeypatch: pytest.MonkeyPatch
) -> None:
    loops: list[bool] = []

    def reading(*args: object) -> object:
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:  # a worker thread: no loop runs here
            loops.append(False)
        return read_credentials(*args)

    monkeypatch.setattr(analysis, "read_credentials", reading)
    assert detect(api, signed["ai_faceless"])["verdict"] == "fake"
    assert loops == [False]


def test_a_job_answers_them_as_detect_does(api: InProcessGateway, signed) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in (signed["ai_faceless"], OBAMA)]
    job = api.client.post("/api/jobs", files=files, params={"frames": 4}).json()
    deadline = time.monotonic() + 120
    while (found := api.client.get(f"/api/jobs/{job['id']}").json())["finished"] is None:
        assert time.monotonic() < deadline, found["progress"]
        time.sleep(0.2)
    ai, plain = (item["result"] for item in found["items"])
    assert ai["verdict"] == "fake" and ai["content_credentials"]["ai_generated"]
    assert "content_credentials" not in plain
