"""Reviews recorded on the real stack (a real Triton, the gateway as `python -m gateway`):
a job item's answer and a live session's verdict become reviews through the API, each
with the scores it was answered with. (/api/detect's: tests/test_reviews.py.)"""

from collections.abc import Iterator

import httpx
import pytest

from model_repository.local_triton import TritonSettings
from tests.conftest import Gateway, start_gateway
from tests.jobs_support import submit, wait_job
from tests.live_client import LiveSocket, jpeg_frames
from tests.stack import MEDIA, OBAMA

pytestmark = pytest.mark.stack

KEY = "carol-review-key-0123"
AS_CAROL = {"X-API-Key": KEY}
CLIP = MEDIA / "videos/fake/cvprw2019_demo_fake.mp4"


@pytest.fixture(scope="module")
def reviewing(
    lite_triton: TritonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("reviews-stack")
    settings = {"reviews_enabled": "true", "reviews_dir": str(tmp / "reviews"), "api_keys": KEY}
    with start_gateway(lite_triton.grpc_url, tmp, **settings) as gateway:
        yield gateway


def review(gateway: Gateway, answer_id: str, label: str) -> dict:
    body = {"answer_id": answer_id, "label": label, "note": "from the stack test"}
    created = httpx.post(gateway.url + "/api/reviews", json=body, headers=AS_CAROL, timeout=30)
    assert created.status_code == 201, created.text
    url = f"{gateway.url}/api/reviews/{created.json()['id']}"
    return httpx.get(url, headers=AS_CAROL, timeout=30).json()


def test_a_job_items_answer_is_reviewed_on_the_real_stack(reviewing: Gateway) -> None:
    submitted = submit(reviewing.url, [(OBAMA.name, OBAMA.read_bytes())], AS_CAROL)
    assert submitted.status_code == 202, submitted.text
    job = wait_job(reviewing.url, submitted.json()["id"], AS_CAROL)
    result = job["items"][0]["result"]
    view = review(reviewing, result["answer_id"], "real")
    assert (view["source"], view["label"], view["note"]) == ("job", "real", "from the stack test")
    assert (view["verdict"], view["score"]) == (result["verdict"], result["score"])
    assert view["answer"]["sha256"] == result["sha256"]
    assert [f["models"] for f in view["faces"]] == [result["frames"][0]["faces"][0]["models"]]


def test_a_live_verdict_is_reviewed_on_the_real_stack(reviewing: Gateway) -> None:
    session = LiveSocket.open(reviewing.url, f"api_key={KEY}")
    started = session.start(window=4)
    assert started["event"] == "started" and started["answer_id"], started
    answers = []
    for jpeg in jpeg_frames(CLIP, 4):
        session.frame(jpeg)
        answers.append(session.next("frame"))
    session.ws.send('{"stop": true}')
    assert session.next("end")["reason"] == "stopped"
    session.ws.close()
    view = review(reviewing, started["answer_id"], "fake")
    last = answers[-1]
    assert (view["source"], view["label"]) == ("live", "fake")
    assert (view["verdict"], view["score"]) == (last["verdict"], last["score"])
    assert view["faces"], view
