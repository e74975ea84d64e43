"""The API in process (FastAPI's TestClient) over the fake model server: the fast tier's
view of the gateway. The real stack answers the same requests in test_gateway_api.py."""

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from export.repository import profile_members
from gateway.server.model_server import Ensemble, ModelServer
from gateway.server.schemas import DetectAnswer, ModelsAnswer
from gateway.server.verdict.aggregate import vote
from model_repository.local_triton import TritonSettings
from tests.conftest import MEMBERS, REPOSITORY, InProcessGateway, inprocess_gateway
from tests.fake_triton import ENSEMBLE, fake_triton, read_config
from tests.stack import OBAMA, TWO_PEOPLE
from tests.test_gateway_api import BAD_FILES, MALFORMED, assert_provenance_is_true


def requests_counted(gateway: InProcessGateway, route: str, method: str, status: int) -> float:
    """gateway_requests_total for one route, method and status, as /metrics says it."""
    text = gateway.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_requests":
            for sample in family.samples:
                labels = {"route": route, "method": method, "status": str(status)}
                if sample.name.endswith("_total") and sample.labels == labels:
                    return sample.value
    return 0.0


def test_models_are_what_the_committed_configs_say(api: InProcessGateway) -> None:
    answer = ModelsAnswer.model_validate(api.client.get("/api/models").json())
    assert (answer.ensemble, answer.profile, answer.ready) == (ENSEMBLE, "lite", True)
    assert [m.name for m in answer.models] == list(profile_members(REPOSITORY, "lite"))
    for model in answer.models:
        config = read_config(api.triton.models.repository / "members" / model.name)
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert model.input_size == int(params["input_size"]) == 256
        assert model.weights.sha256 == params["weights_sha256"] and len(model.weights.sha256) == 64
        assert model.weights.file.endswith(("_DF.h5", "_F2F.h5"))
        assert model.trained and model.weight == api.triton.models.vote_weights[model.name]
        # the committed cpu configs: fp32 on every CPU, and saying so
        assert (model.precision, model.precision_reason) == (
            params["precision"],
            "fp32: the cpu configuration, on every CPU",
        )


def test_a_face_gets_the_vote_of_the_scores_the_model_server_gave(api: InProcessGateway) -> None:
    calls = api.triton.service.infer_calls
    response = api.gateway_client.detect_response(TWO_PEOPLE)
    assert response.status_code == 200, response.text
    answer = DetectAnswer.model_validate(response.json())
    faces = [face for frame in answer.frames for face in frame.faces]
    assert len(faces) == 2
    # The colour-mean scores lie near 0.5: the cut, or uncertain with its reason.
    cut = "fake" if answer.score is not None and answer.score >= answer.threshold else "real"
    assert answer.verdict == ("uncertain" if answer.reasons else cut), answer.reasons
    assert api.triton.service.infer_calls > calls
    weights, groups = api.triton.models.vote_weights, api.triton.models.vote_groups
    for face in faces:
        assert set(face.models) == set(profile_members(REPOSITORY, "lite"))
        # The fake's scores are colour means of the crop: two people, two different crops.
        assert face.p_fake == pytest.approx(vote(face.models, weights, groups), abs=1e-6)
    assert faces[0].models != faces[1].models
    assert answer.raw_score == pytest.approx(max(t.score for t in answer.tracks))
    assert list(api.uploads.iterdir()) == []


def test_every_models_provenance_is_true(tmp_path: Path) -> None:
    """The full profile: the MesoNets' files are the shared weights with their sha256, and
    Xception and B7 (no public weights) say they are random and do not vote."""
    with inprocess_gateway(tmp_path, profile="full") as gateway:
        answer = ModelsAnswer.model_validate(gateway.client.get("/api/models").json())
    assert [m.name for m in answer.models] == list(MEMBERS)
    for model in answer.models:
        assert_provenance_is_true(model)
    untrained = {m.name for m in answer.models if not m.trained}
    assert untrained == {"xception", "efficientnet_b7"}


def test_the_same_upload_gets_the_same_answer(api: InProcessGateway) -> None:
    first, second = (api.gateway_client.detect_response(OBAMA).json() for _ in range(2))
    assert first["score"] == second["score"] and first["tracks"] == second["tracks"]


def test_a_refused_upload_is_counted_once(api: InProcessGateway) -> None:
    before = requests_counted(api, "/api/detect", "POST", 415)
    response = api.client.post("/api/detect", files={"file": ("notes.mp4", b"not a video\n" * 50)})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media"
    assert requests_counted(api, "/api/detect", "POST", 415) == before + 1
    assert list(api.uploads.iterdir()) == []


def test_a_wrong_method_says_which_are_allowed(api: InProcessGateway) -> None:
    response = api.client.get("/api/detect")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_docs_page_needs_nothing_but_the_gateway(api: InProcessGateway) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text and "<script>" not in page.text  # no CDN, no inline script
    for asset in (
        "docs/assets/swagger-ui-bundle.js",
        "docs/assets/swagger-ui.css",
        "static/docs.js",
    ):
        assert f'"{asset}"' in page.text
        answer = api.client.get("/" + asset)
        assert answer.status_code == 200 and len(answer.content) > 100, asset
    assert "SwaggerUIBundle" in api.client.get("/docs/assets/swagger-ui-bundle.js").text


def test_keys_on_the_api_answer_the_documented_401(tmp_path: Path) -> None:
    with inprocess_gateway(tmp_path, api_keys=["k-123456789"]) as gateway:
        refused = gateway.client.get("/api/models")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        documented = gateway.client.get("/openapi.json").json()["paths"]["/api/models"]["get"]
        assert "401" in documented["responses"]
        allowed = gateway.client.get("/api/models", headers={"X-API-Key": "k-123456789"})
        assert allowed.status_code == 200
        assert gateway.client.get("/healthz").status_code == 200  # probes stay open


def test_without_the_model_server_the_gateway_is_alive_not_ready(tmp_path: Path) -> None:
    with inprocess_gateway(tmp_path) as gateway:
        gateway.triton.models.ready = False
        assert gateway.client.get("/healthz").status_code == 200
        ready = gateway.client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        models = gateway.client.get("/api/models")
        assert models.status_code == 503, models.text
        assert models.json()["error"]["code"] == "triton_unavailable"
        assert models.headers["retry-after"] == "5"


def test_the_fake_describes_the_models_as_a_real_triton_does(lite_triton: TritonSettings) -> None:
    """The fast tier's premise, checked in the full tier: what the gateway reads from the
    fake (members, vote weights, provenance, sizes, batch sizes) is what Triton says."""

    async def facts(url: str) -> Ensemble:
        server = ModelServer(url, ENSEMBLE, timeout_s=30, retries=1, max_batch=32)
        try:
            return await server.ensemble()
        finally:
            await server.close()

    with fake_triton("lite") as fake:
        assert asyncio.run(facts(fake.url)) == asyncio.run(facts(lite_triton.grpc_url))


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_get_their_json_4xx(api: InProcessGateway, name: str) -> None:
    data, status, code = BAD_FILES[name]
    response = api.client.post("/api/detect", files={"file": (name, data)})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert list(api.uploads.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "status", "code"), MALFORMED)
def test_malformed_bodies_get_their_json_4xx(
    api: InProcessGateway, kwargs: dict, status: int, code: str
) -> None:
    response = api.client.post("/api/detect", **kwargs)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert list(api.uploads.iterdir()) == []


def test_each_key_has_its_own_rate(tmp_path: Path) -> None:
    """A burst of 2, then one a minute, per key: a fresh gateway, so no other test has
    spent any of it."""
    keys = ["rate-key-one-0123456789", "rate-key-two-0123456789"]
    settings = {"api_keys": keys, "rate_limit_per_minute": 1, "rate_limit_burst": 2}
    with inprocess_gateway(tmp_path, **settings) as gateway:

        def status(key: str) -> int:
            return gateway.client.get("/api", headers={"X-API-Key": key}).status_code

        assert [status(keys[0]) for _ in range(3)] == [200, 200, 429]
        limited = gateway.client.get("/api", headers={"X-API-Key": keys[0]})
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert [status(keys[1]) for _ in range(3)] == [200, 200, 429]
        assert gateway.client.get("/healthz").status_code == 200  # probes are not limited


def test_batches_never_exceed_the_max_batch_size_triton_states(tmp_path: Path) -> None:
    """GATEWAY_MAX_BATCH (32 here) is a cap, not a promise: a model whose config
    says max_batch_size 1 gets one face per request (the fake, like Triton,
    refuses a larger batch), and the two faces are still both scored."""
    from fastapi.testclient import TestClient

    from gateway.clients.client import GatewayClient
    from gateway.server.app import create_app
    from tests.conftest import gateway_settings

    with fake_triton() as triton:
        for config in triton.models.configs.values():
            config.max_batch_size = 1
        settings = gateway_settings(triton.url, tmp_path, max_batch=32)
        with TestClient(create_app(settings)) as client:
            response = GatewayClient(http=client).detect_response(TWO_PEOPLE)
    assert response.status_code == 200, response.text
    answer = DetectAnswer.model_validate(response.json())
    assert sum(len(frame.faces) for frame in answer.frames) == 2


def test_a_refused_job_upload_answers_a_documented_status_and_keeps_no_place(
    tmp_path: Path,
) -> None:
    """Each malformed job upload gets its documented 4xx (the 400 malformed_upload among
    them), writes nothing and gives back the place it held: with room for one unfinished
    job, one is still taken after them, and only one."""
    with inprocess_gateway(tmp_path, jobs_workers=0, jobs_max_active_per_key=1) as gateway:
        client = gateway.client
        documented = client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]
        garbage = {
            "content": b"garbage",
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        }
        for kwargs, status, code in [*MALFORMED, (garbage, 400, "malformed_upload")]:
            response = client.post("/api/jobs", **kwargs)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
            assert str(status) in documented["responses"], status
        uploads = gateway.settings.jobs_dir / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []
        image = {"file": (OBAMA.name, OBAMA.read_bytes())}
        assert client.post("/api/jobs", files=image).status_code == 202
        refused = client.post("/api/jobs", files=image)
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_jobs")
