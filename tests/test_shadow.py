# ruff: noqa: F811 — the store fixtures are imported from test_reviews, then used
"""Shadow scoring (issue 28): a candidate version loaded beside the serving one scores a share
of answers' faces after the answer, never in it; both versions' scores land in the review
store's shadow_scores, keyed by the answer_id.

In process over the fake Triton (its candidate answers 1 - the serving P(fake), and a call
naming no version gets it, as Triton's newest loaded), and once against the real lite Triton
with a second version of meso4 loaded beside version 1."""

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper

from export import versions
from export.repository import profile_members
from gateway.server import metrics
from gateway.server.reviews.models import ShadowScore
from gateway.server.reviews.record import Shadow
from gateway.server.reviews.store import ReviewStore
from gateway.server.settings import Settings
from model_repository.local_triton import LocalTriton
from tests.conftest import REPOSITORY, InProcessGateway, inprocess_gateway, start_gateway
from tests.stack import OBAMA, TWO_PEOPLE, on_free_ports
from tests.test_reviews import a_record, postgres_url, store  # noqa: F401 — fixtures

KEY = "shadow-test-key-0123"
AS_KEY = {"X-API-Key": KEY}
# What may differ between two answers to the same file: its ids, its timings.
PER_REQUEST = ("answer_id", "request_id", "timings_ms")


def shadow_settings(tmp: Path, share: float) -> dict:
    return {
        "reviews_enabled": True,
        "reviews_dir": tmp / "reviews",
        "api_keys": [KEY],
        "shadow_share": share,
    }


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """No candidate anywhere: the answers as they are without one."""
    tmp = tmp_path_factory.mktemp("plain")
    with inprocess_gateway(tmp, **shadow_settings(tmp, 1.0)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def shadowing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """meso4's version 2 loaded beside version 1 (serving), every kept answer shadowed."""
    tmp = tmp_path_factory.mktemp("shadowing")
    with inprocess_gateway(tmp, candidates={"meso4": 2}, **shadow_settings(tmp, 1.0)) as gateway:
        yield gateway


def detect(gateway: InProcessGateway, path: Path, query: str = "") -> dict:
    with path.open("rb") as file:
        response = gateway.client.post(
            f"/api/detect{query}", files={"file": (path.name, file)}, headers=AS_KEY
        )
    assert response.status_code == 200, response.text
    return response.json()


def same(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in PER_REQUEST}


def shadow_rows(gateway: InProcessGateway, answer_id: str, wait_s: float = 10.0) -> list:
    """The answer's shadow rows once its shadow scoring is over (it runs after the answer)."""
    shadow = gateway.client.app.state.analyzer.shadow
    deadline = time.monotonic() + wait_s
    while shadow.tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not shadow.tasks
    return shadow.store.shadow_scores(answer_id)


def outcomes() -> dict[str, float]:
    return {o: metrics.SHADOW_REQUESTS.labels(o)._value.get() for o in metrics.SHADOW_OUTCOMES}


def counted(before: dict[str, float]) -> dict[str, float]:
    return {o: n - before[o] for o, n in outcomes().items() if n != before[o]}


@pytest.mark.parametrize("query", ["", "?models=meso4,mesoinception4"], ids=["ensemble", "members"])
def test_answers_are_the_same_with_a_candidate_shadowed(
    plain: InProcessGateway, shadowing: InProcessGateway, query: str
) -> None:
    """Through the ensemble and through members called directly (where Triton's default
    version would be the candidate), the answer is the one without a candidate."""
    before = outcomes()
    shadowed = detect(shadowing, TWO_PEOPLE, query)
    assert shadowed["answer_id"] and shadow_rows(shadowing, shadowed["answer_id"])
    assert counted(before) == {"recorded": 1}
    assert same(shadowed) == same(detect(plain, TWO_PEOPLE, query))


def test_the_shadow_row_holds_both_versions_scores(shadowing: InProcessGateway) -> None:
    answer = detect(shadowing, TWO_PEOPLE)
    (row,) = shadow_rows(shadowing, answer["answer_id"])
    assert isinstance(row, ShadowScore)
    assert (row.model, row.serving_version, row.candidate_version) == ("meso4", "1", "2")
    faces = [(f["index"], n, face) for f in answer["frames"] for n, face in enumerate(f["faces"])]
    assert [(r["frame"], r["face"], r["track"]) for r in row.faces] == [
        (index, n, face["track"]) for index, n, face in faces
    ]
    assert [r["serving"] for r in row.faces] == [face["models"]["meso4"] for *_, face in faces]
    for stored in row.faces:  # the fake's candidate: 1 - the serving version's P(fake)
        assert stored["candidate"] == pytest.approx(1 - stored["serving"], abs=1e-6)
    assert row.serving_video == pytest.approx(answer["raw_score"], abs=1e-9)
    assert abs(row.candidate_video - row.serving_video) > 1e-3


def test_share_zero_shadows_nothing_and_no_candidate_is_counted(
    plain: InProcessGateway, shadowing: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = outcomes()
    monkeypatch.setattr(shadowing.client.app.state.analyzer.shadow, "share", 0.0)
    answer = detect(shadowing, OBAMA)
    assert answer["answer_id"] and shadow_rows(shadowing, answer["answer_id"]) == []
    assert counted(before) == {}
    kept = detect(plain, OBAMA)  # share 1, but no member has a candidate
    assert kept["answer_id"] and shadow_rows(plain, kept["answer_id"]) == []
    assert counted(before) == {"no_candidate": 1}


def test_a_failing_shadow_leaves_the_answer_alone(
    plain: InProcessGateway, shadowing: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = shadowing.client.app.state.analyzer.shadow

    async def broken(*args: object) -> np.ndarray:
        raise RuntimeError("the candidate is gone")

    before = outcomes()
    monkeypatch.setattr(shadow.server, "score_with_version", broken)
    answer = detect(shadowing, OBAMA)
    assert answer["answer_id"] and shadow_rows(shadowing, answer["answer_id"]) == []
    assert same(answer) == same(detect(plain, OBAMA))
    monkeypatch.undo()

    def full(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shadow.store, "keep_shadow", full)
    unkept = detect(shadowing, OBAMA)
    assert same(unkept) == same(answer)
    assert shadow_rows(shadowing, unkept["answer_id"]) == []  # (once its shadow is over)
    monkeypatch.undo()
    monkeypatch.setattr(shadow, "concurrency", 0)  # every slot taken: skipped, not queued
    assert same(detect(shadowing, OBAMA)) == same(answer)
    # (plain's answer: no candidate there)
    assert counted(before) == {"failed": 2, "busy": 1, "no_candidate": 1}


def a_shadow(model: str = "meso4") -> Shadow:
    faces = [{"frame": 0, "face": 0, "track": 0, "serving": 0.25, "candidate": 0.75}]
    return Shadow(model, "1", "2", 0.25, 0.75, faces)


def test_shadow_rows_live_and_go_with_their_answer(store: ReviewStore) -> None:
    """On SQLite and PostgreSQL: rows kept per member, purged with an unreviewed answer, kept
    with a reviewed one until its review goes."""
    kept = store.keep(a_record(1), "key:alice", 60)
    reviewed = store.keep(a_record(2), "key:alice", 60)
    store.keep_shadow(kept, [a_shadow("meso4"), a_shadow("mesoinception4")])
    store.keep_shadow(reviewed, [a_shadow()])
    (row, _) = store.shadow_scores(kept)
    assert (row.model, row.serving_video, row.candidate_video) == ("meso4", 0.25, 0.75)
    assert row.faces == a_shadow().faces
    review = store.review(reviewed, "key:alice", "fake", None, None, 3600)
    assert review is not None
    store.purge(datetime.now(UTC) + timedelta(seconds=120))
    assert store.shadow_scores(kept) == [] and len(store.shadow_scores(reviewed)) == 1
    store.purge(datetime.now(UTC) + timedelta(seconds=3700))
    assert store.shadow_scores(reviewed) == []


def test_a_share_without_the_review_store_is_refused() -> None:
    with pytest.raises(ValueError, match="shadow_share > 0 needs reviews_enabled"):
        Settings(shadow_share=0.5, reviews_enabled=False)


# --- the repository: a candidate loaded beside the serving version -----------------------


def lite_copy(root: Path) -> Path:
    """The lite profile and its members, meso4's version 1 as a file (not a link)."""
    repo = root / "repo"
    shutil.copytree(REPOSITORY / "lite", repo / "lite")
    for member in profile_members(REPOSITORY, "lite"):
        shutil.copytree(REPOSITORY / "members" / member, repo / "members" / member)
    return repo


def step_version(repo: Path, model: str) -> int:
    text = (repo / "lite/deepfake_ensemble/config.pbtxt").read_text()
    return int(text.split(f'model_name: "{model}"\n')[1].split("model_version: ")[1].split()[0])


def test_a_candidate_loads_beside_the_serving_version_which_the_ensemble_pins(
    tmp_path: Path,
) -> None:
    repo = lite_copy(tmp_path)
    (repo / "members/meso4/1").mkdir(exist_ok=True)  # the configs are what counts: no export
    (repo / "members/meso4/2").mkdir()
    assert versions.make_candidate(repo, "meso4", 2) == 1
    for config in (repo / "members/meso4").rglob("*.pbtxt"):
        text = config.read_text()
        assert "specific: { versions: [1, 2] }" in text, config
        assert 'key: "serving_version" value: { string_value: "1" }' in text
        assert 'key: "candidate_version" value: { string_value: "2" }' in text
    assert step_version(repo, "meso4") == 1 and step_version(repo, "mesoinception4") == -1
    with pytest.raises(SystemExit, match="serves already"):
        versions.make_candidate(repo, "meso4", 1)
    versions.serve(repo, "meso4", "2")  # promoted: the candidate and the pin are gone
    assert "candidate_version" not in (repo / "members/meso4/config.pbtxt").read_text()
    assert step_version(repo, "meso4") == -1


# --- against the real lite Triton ---------------------------------------------------------


def one_minus(source: Path, target: Path) -> None:
    """A version whose P(fake) is 1 - the source's: the candidate is told apart by its scores."""
    model = onnx.load(str(source))
    (output,) = model.graph.output
    for node in model.graph.node:
        node.output[:] = ["served_p" if o == output.name else o for o in node.output]
    one = helper.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0])
    model.graph.initializer.append(one)
    model.graph.node.append(helper.make_node("Sub", ["one", "served_p"], [output.name]))
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


def post(url: str, path: Path) -> dict:
    with path.open("rb") as file:
        response = httpx.post(
            url + "/api/detect", files={"file": (path.name, file)}, headers=AS_KEY, timeout=120
        )
    assert response.status_code == 200, response.text
    return response.json()


def rows_when_written(store: ReviewStore, answer_id: str, wait_s: float = 60.0) -> list:
    deadline = time.monotonic() + wait_s
    while not (rows := store.shadow_scores(answer_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


@pytest.mark.stack
def test_shadow_scores_against_the_real_triton(
    exported: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """meso4's version 2 (1 - version 1's P(fake)) loaded beside version 1: answers are those
    of a gateway without shadow, their meso4 scores version 1's, the shadow rows version 2's."""
    root = tmp_path_factory.mktemp("shadow-stack")
    repo = lite_copy(root)
    one_minus(repo / "members/meso4/1/model.onnx", repo / "members/meso4/2/model.onnx")
    versions.serve(repo, "meso4", "1")  # version 1 serves; 2 is loaded beside it below
    served = on_free_ports(
        profile="lite",
        repository=repo,
        work_dir=root / "triton",
    )
    on_dir, off_dir = root / "on", root / "off"
    with (
        LocalTriton(served) as triton,
        candidate_loaded(repo, triton.settings.http_url),
        start_gateway(triton.settings.grpc_url, on_dir, **stack_settings(on_dir, 1.0)) as on,
        start_gateway(triton.settings.grpc_url, off_dir, **stack_settings(off_dir, 0.0)) as off,
    ):
        answers = [post(on.url, path) for path in (TWO_PEOPLE, OBAMA)]
        unshadowed = [post(off.url, path) for path in (TWO_PEOPLE, OBAMA)]
        store = ReviewStore.open(f"sqlite:///{on_dir / 'reviews' / 'reviews.db'}")
        try:
            rows = [rows_when_written(store, a["answer_id"]) for a in answers]
        finally:
            store.close()
        metrics_text = httpx.get(on.url + "/metrics", timeout=30).text
    assert [same(a) for a in answers] == [same(a) for a in unshadowed]
    assert 'gateway_shadow_requests_total{outcome="recorded"} 2.0' in metrics_text
    for answer, (row,) in zip(answers, rows, strict=True):
        assert (row.model, row.serving_version, row.candidate_version) == ("meso4", "1", "2")
        faces = [f for frame in answer["frames"] for f in frame["faces"]]
        assert [r["serving"] for r in row.faces] == [f["models"]["meso4"] for f in faces]
        for stored in row.faces:  # version 2 is 1 - version 1: the answer had version 1's
            assert stored["candidate"] == pytest.approx(1 - stored["serving"], abs=1e-4)
        assert row.serving_video == pytest.approx(answer["raw_score"], abs=1e-9)


@contextlib.contextmanager
def candidate_loaded(repo: Path, http_url: str) -> Iterator[None]:
    """meso4's version 2 loaded beside version 1 on the running Triton, as an operator does."""
    versions.main(["--repository", str(repo), "candidate", "meso4", "2", "--triton-url", http_url])
    ready = httpx.get(f"{http_url}/v2/models/meso4", timeout=30).json()["versions"]
    assert sorted(ready) == ["1", "2"]
    yield


def stack_settings(tmp: Path, share: float) -> dict:
    """shadow_settings as a gateway process's environment reads them."""
    return {
        "reviews_enabled": "true",
        "reviews_dir": str(tmp / "reviews"),
        "api_keys": KEY,
        "shadow_share": str(share),
    }
