"""Reviews (issue 28): an answer of /api/detect, of a job's item or of a live session is
reviewable afterwards by its answer_id; the review keeps the decisive faces' crops the
members saw and every member's scores, never the media; retention, deletion, tenancy.

The store runs against SQLite and a real PostgreSQL server (tests/postgres_support.py);
the API in process over the fake model server, and once against the real lite stack."""

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import MetaData, inspect

from gateway.server.reviews.models import Answer, Face
from gateway.server.reviews.record import FaceCrop, Record
from gateway.server.reviews.store import AlreadyReviewed, ReviewStore, make_engine
from gateway.server.security import key_id
from model_repository.local_triton import TritonSettings
from tests.conftest import MEDIA, InProcessGateway, inprocess_gateway, start_gateway
from tests.fake_triton import member_score
from tests.live_client import jpeg_frames, live_session
from tests.postgres_support import PASSWORD, postgres_server
from tests.stack import OBAMA, TWO_PEOPLE

ALICE, BOB = "alice-review-key-0123", "bob-review-key-0123"
AS_ALICE, AS_BOB = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
CLIP = MEDIA / "videos/real/face_recognition_short_hamilton_clip.mp4"


# --- the store, on SQLite and on PostgreSQL ----------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


# A real PostgreSQL is a server of the stack (as the jobs' redis-server): the full tier.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    """An empty store, migrated from nothing: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        opened = ReviewStore.open(f"sqlite:///{tmp_path / 'reviews.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        empty_database(url)
        opened = ReviewStore.open(url, PASSWORD)
    try:
        yield opened
    finally:
        opened.close()


def empty_database(url: str) -> None:
    """Every table dropped (Alembic's version table too): the next store starts from empty."""
    engine = make_engine(url, PASSWORD)
    with engine.begin() as connection:
        meta = MetaData()
        meta.reflect(connection)
        meta.drop_all(connection)
    engine.dispose()


def a_record(seed: int = 0, faces: int = 3) -> Record:
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(faces)]
    return Record(
        source="detect",
        sha256=f"{seed:064x}",
        verdict="fake",
        score=0.8,
        scores={"threshold": 0.5, "tracks": [{"id": 0, "score": 0.8, "models": {"m": 0.8}}]},
        faces=[FaceCrop(n, 0, 0, 0.8, {"m": 0.8}, c) for n, c in enumerate(crops)],
    )


def test_the_migrations_make_exactly_the_models_schema(store: ReviewStore) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"answers", "faces", "reviews", "shadow_scores", "alembic_version"} <= tables
    assert store.schema_drift() == []  # what `alembic check` compares
    store.migrate()  # a second start migrates nothing and fails nothing
    assert store.schema_drift() == []


def test_a_kept_answer_becomes_a_review_of_its_owner_only(store: ReviewStore) -> None:
    record = a_record()
    answer_id = store.keep(record, "key:alice", 60)
    assert store.answer(answer_id, "key:bob") is None  # another key's answer: not there
    assert store.review(answer_id, "key:bob", "real", None, None, 60) is None
    review = store.review(answer_id, "key:alice", "real", "face_swap", "the lips", 3600)
    assert review is not None and (review.label, review.kind, review.note) == (
        "real",
        "face_swap",
        "the lips",
    )
    assert review.reviewer == "key:alice" and review.answer.expires is None
    crops = [
        cv2.imdecode(np.frombuffer(f.png, np.uint8), cv2.IMREAD_COLOR) for f in review.answer.faces
    ]
    for face, decoded in zip(record.faces, crops, strict=True):
        assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), face.crop)  # lossless
    with pytest.raises(AlreadyReviewed):
        store.review(answer_id, "key:alice", "fake", None, None, 60)
    assert store.get(review.id, "key:bob") is None
    assert store.reviews("key:bob", 0, 10) == ([], 0)
    page, total = store.reviews("key:alice", 0, 10)
    assert total == 1 and [r.id for r in page] == [review.id]
    assert not store.delete(review.id, "key:bob")
    assert store.delete(review.id, "key:alice")
    assert store.get(review.id, "key:alice") is None
    assert store.answer(answer_id, "key:alice") is None  # its record and crops went with it
    with store.session() as session:
        assert session.query(Face).count() == 0


def test_retention_purges_unreviewed_answers_and_expired_reviews(store: ReviewStore) -> None:
    kept = store.keep(a_record(1), "key:alice", 60)
    reviewed = store.keep(a_record(2), "key:alice", 60)
    review = store.review(reviewed, "key:alice", "fake", None, None, 3600)
    assert review is not None
    assert store.purge() == (0, 0)
    # An hour and a minute on: the unreviewed answer's 60 s are over; the review has lived
    # past its answer's retention (a review takes it over) but not past its own hour...
    assert store.purge(datetime.now(UTC) + timedelta(seconds=120)) == (1, 0)
    assert store.answer(kept, "key:alice") is None
    assert store.get(review.id, "key:alice") is not None
    # ...which ends too: the review, its record and its crops are purged.
    assert store.purge(datetime.now(UTC) + timedelta(seconds=3700)) == (0, 1)
    assert store.get(review.id, "key:alice") is None
    with store.session() as session:
        assert session.query(Face).count() == 0


def test_an_expired_answer_is_not_reviewable_before_the_purge(store: ReviewStore) -> None:
    answer_id = store.keep(a_record(3), "key:alice", 0.001)
    time.sleep(0.01)
    assert store.review(answer_id, "key:alice", "fake", None, None, 60) is None


# --- the API in process --------------------------------------------------------------------


def reviews_gateway(
    tmp: Path, **settings: object
) -> contextlib.AbstractContextManager[InProcessGateway]:
    """The gateway in process with reviews on, its SQLite store (unless `settings` name a
    database) in `tmp`."""
    return inprocess_gateway(tmp, reviews_enabled=True, reviews_dir=tmp / "reviews", **settings)


@pytest.fixture(scope="module")
def reviewing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """The gateway in process with reviews on (SQLite), two API keys."""
    tmp = tmp_path_factory.mktemp("reviews")
    with reviews_gateway(tmp, api_keys=[ALICE, BOB]) as gateway:
        yield gateway


def detect(gateway: InProcessGateway, path: Path, headers: dict) -> dict:
    with path.open("rb") as file:
        response = gateway.client.post(
            "/api/detect", files={"file": (path.name, file)}, headers=headers
        )
    assert response.status_code == 200, response.text
    return response.json()


def review(
    gateway: InProcessGateway, answer_id: str, headers: dict, **body: object
) -> httpx.Response:
    return gateway.client.post(
        "/api/reviews", json={"answer_id": answer_id, "label": "fake", **body}, headers=headers
    )


def decoded(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data_url[len(prefix) :]), np.uint8), 1)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def assert_crops_are_what_the_members_scored(gateway: InProcessGateway, view: dict) -> None:
    """The fake model server scores a crop by a colour channel's mean: each stored crop,
    scored again, gives the scores the answer had for that face."""
    members = gateway.triton.models.members
    assert view["faces"]
    for face in view["faces"]:
        crop = decoded(face["crop"])[None]
        assert crop.shape[1:] == (380, 380, 3)  # preprocess.crop's size, as cut
        for name, score in face["models"].items():
            again = float(member_score(crop, members.index(name) % 3)[0])
            assert again == pytest.approx(score, abs=1e-6), name


def test_a_detect_answer_is_reviewed_with_its_crops_and_scores(
    reviewing: InProcessGateway,
) -> None:
    answer = detect(reviewing, TWO_PEOPLE, AS_ALICE)
    assert answer["answer_id"]
    response = review(reviewing, answer["answer_id"], AS_ALICE, kind="face_swap", note="eyes")
    assert response.status_code == 201, response.text
    view = response.json()
    assert response.headers["location"] == f"/api/reviews/{view['id']}"
    assert (view["label"], view["kind"], view["note"]) == ("fake", "face_swap", "eyes")
    assert view["reviewer"] == key_id(ALICE) and ALICE not in response.text
    assert (view["source"], view["verdict"], view["score"]) == (
        "detect",
        answer["verdict"],
        answer["score"],
    )
    stored = view["answer"]
    assert stored["sha256"] == answer["sha256"] and stored["scores"]["threshold"] == 0.5
    assert stored["scores"]["tracks"] == [
        {k: t[k] for k in ("id", "score", "models", "frames", "share", "short", "decisive")}
        for t in answer["tracks"]
    ]
    assert len(stored["scores"]["faces"]) == 2  # every face's scores, both people
    decisive = next(t["id"] for t in answer["tracks"] if t["decisive"])
    assert [f["track"] for f in view["faces"]] == [decisive]  # crops: the decisive face only
    assert_crops_are_what_the_members_scored(reviewing, view)
    assert "filename" not in json.dumps(stored) and answer["filename"] not in response.text
    assert reviewing.client.get(f"/api/reviews/{view['id']}", headers=AS_ALICE).json() == view


def test_a_job_items_answer_is_reviewed(reviewing: InProcessGateway) -> None:
    with OBAMA.open("rb") as file:
        submitted = reviewing.client.post(
            "/api/jobs", files={"file": (OBAMA.name, file)}, headers=AS_ALICE
        )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 120
    while (job := reviewing.client.get(f"/api/jobs/{job_id}", headers=AS_ALICE).json())[
        "finished"
    ] is None:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    result = job["items"][0]["result"]
    assert result["answer_id"]
    response = review(reviewing, result["answer_id"], AS_ALICE, label="real")
    assert response.status_code == 201, response.text
    view = response.json()
    assert (view["source"], view["label"], view["answer"]["sha256"]) == (
        "job",
        "real",
        result["sha256"],
    )
    assert_crops_are_what_the_members_scored(reviewing, view)


def test_a_live_sessions_verdict_is_reviewed(reviewing: InProcessGateway) -> None:
    frames = jpeg_frames(CLIP, 6, step=5)
    started, answers = live_session(reviewing.client, {"window": 4}, frames, AS_ALICE)
    last = answers[-1]
    response = review(reviewing, started["answer_id"], AS_ALICE)
    assert response.status_code == 201, response.text
    view = response.json()
    assert (view["source"], view["verdict"], view["score"]) == (
        "live",
        last["verdict"],
        last["score"],
    )
    assert view["answer"]["sha256"] is None
    decisive = max(last["tracks"], key=lambda t: t["score"])
    assert [f["frame"] for f in view["faces"]] == decisive["frames"]  # its window's faces
    assert_crops_are_what_the_members_scored(reviewing, view)


def test_reviews_are_listed_and_deleted_per_key(reviewing: InProcessGateway) -> None:
    mine = review(reviewing, detect(reviewing, OBAMA, AS_BOB)["answer_id"], AS_BOB).json()
    alices = reviewing.client.get("/api/reviews", headers=AS_ALICE).json()
    assert mine["id"] not in [r["id"] for r in alices["reviews"]]
    bobs = reviewing.client.get("/api/reviews", params={"limit": 100}, headers=AS_BOB).json()
    assert [r["id"] for r in bobs["reviews"]] == [mine["id"]] and bobs["total"] == 1
    assert "faces" not in bobs["reviews"][0]  # a page has no crops: read one for them
    for method in ("GET", "DELETE"):
        other = reviewing.client.request(method, f"/api/reviews/{mine['id']}", headers=AS_ALICE)
        assert other.status_code == 404 and other.json()["error"]["code"] == "review_not_found"
    gone = reviewing.client.delete(f"/api/reviews/{mine['id']}", headers=AS_BOB)
    assert gone.status_code == 204
    again = reviewing.client.get(f"/api/reviews/{mine['id']}", headers=AS_BOB)
    assert again.status_code == 404
    # Its answer went with it: not reviewable again.
    assert (
        review(reviewing, mine["answer_id"], AS_BOB).json()["error"]["code"] == "answer_not_found"
    )


def test_one_key_cannot_review_anothers_answer(reviewing: InProcessGateway) -> None:
    answer_id = detect(reviewing, OBAMA, AS_ALICE)["answer_id"]
    refused = review(reviewing, answer_id, AS_BOB)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "answer_not_found"
    assert review(reviewing, answer_id, AS_ALICE).status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"label": "maybe"}, 422, "invalid_request"),
        ({"label": None}, 422, "invalid_request"),
        ({"answer_id": ""}, 422, "invalid_request"),
        ({"answer_id": "x" * 33}, 422, "invalid_request"),
        ({"note": "n" * 2001}, 422, "invalid_request"),
        ({"extra": 1}, 422, "invalid_request"),
        ({"answer_id": "0" * 32}, 404, "answer_not_found"),
    ],
)
def test_bad_reviews_get_their_json_4xx(
    reviewing: InProcessGateway, body: dict, status: int, code: str
) -> None:
    sent = {"answer_id": "0" * 32, "label": "fake"} | body
    response = reviewing.client.post("/api/reviews", json=sent, headers=AS_ALICE)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_an_answer_is_reviewed_once(reviewing: InProcessGateway) -> None:
    answer_id = detect(reviewing, OBAMA, AS_ALICE)["answer_id"]
    assert review(reviewing, answer_id, AS_ALICE).status_code == 201
    twice = review(reviewing, answer_id, AS_ALICE, label="real")
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "already_reviewed"


def test_bad_list_and_review_ids_get_their_json_4xx(reviewing: InProcessGateway) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        response = reviewing.client.get("/api/reviews", params=params, headers=AS_ALICE)
        assert response.status_code == 422, params
    long = reviewing.client.get("/api/reviews/" + "x" * 40, headers=AS_ALICE)
    assert long.status_code == 422
    assert reviewing.client.get("/api/reviews", headers={}).status_code == 401


def test_the_purge_runs_in_the_gateway(tmp_path: Path) -> None:
    """An unreviewed answer is gone after its retention: the lifespan's purge deletes it."""
    with reviews_gateway(
        tmp_path,
        reviews_answer_retention_s=0.5,
        reviews_purge_interval_s=0.2,
    ) as gateway:
        answer_id = detect(gateway, OBAMA, {})["answer_id"]
        store = gateway.client.app.state.analyzer.keeper.store
        assert store.answer(answer_id, "public") is not None
        deadline = time.monotonic() + 10
        while not purged(store, answer_id):
            assert time.monotonic() < deadline, "the answer was not purged"
            time.sleep(0.1)
        assert review(gateway, answer_id, {}).status_code == 404


def purged(store: ReviewStore, answer_id: str) -> bool:
    with store.session() as session:
        return session.get(Answer, answer_id) is None


def test_with_reviews_off_answers_have_no_id_and_the_routes_say_so(
    api: InProcessGateway,
) -> None:
    assert detect(api, OBAMA, {})["answer_id"] is None
    response = api.client.get("/api/reviews")
    assert response.status_code == 404 and response.json()["error"]["code"] == "reviews_disabled"
    assert api.client.app.state.analyzer.keeper is None  # no store opened


@pytest.mark.stack
def test_the_api_stores_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """The gateway itself on PostgreSQL: URL and password (a Secret) apart, as in Kubernetes."""
    empty_database(postgres_url)
    with reviews_gateway(
        tmp_path,
        reviews_database_url=postgres_url,
        reviews_database_password=PASSWORD,
        api_keys=[ALICE],
    ) as gateway:
        answer_id = detect(gateway, OBAMA, AS_ALICE)["answer_id"]
        created = review(gateway, answer_id, AS_ALICE)
        assert created.status_code == 201, created.text
        assert_crops_are_what_the_members_scored(gateway, created.json())
        listed = gateway.client.get("/api/reviews", headers=AS_ALICE).json()
        assert [r["id"] for r in listed["reviews"]] == [created.json()["id"]]
    assert not (tmp_path / "reviews").exists()  # no SQLite file beside


# --- end to end: the real gateway over the lite Triton -------------------------------------


@pytest.mark.stack
def test_reviews_against_the_real_gateway(lite_triton: TritonSettings, tmp_path: Path) -> None:
    with start_gateway(
        lite_triton.grpc_url,
        tmp_path,
        reviews_enabled="true",
        reviews_dir=str(tmp_path / "reviews"),
        api_keys=ALICE,
    ) as gateway:
        with OBAMA.open("rb") as file:
            answer = httpx.post(
                gateway.url + "/api/detect",
                files={"file": (OBAMA.name, file)},
                headers=AS_ALICE,
                timeout=120,
            ).json()
        created = httpx.post(
            gateway.url + "/api/reviews",
            json={"answer_id": answer["answer_id"], "label": "real"},
            headers=AS_ALICE,
            timeout=30,
        )
        assert created.status_code == 201, created.text
        view = httpx.get(
            gateway.url + f"/api/reviews/{created.json()['id']}", headers=AS_ALICE, timeout=30
        ).json()
    assert (view["verdict"], view["score"], view["label"]) == (
        answer["verdict"],
        answer["score"],
        "real",
    )
    assert [f["models"] for f in view["faces"]] == [answer["frames"][0]["faces"][0]["models"]]
    assert decoded(view["faces"][0]["crop"]).shape == (380, 380, 3)
