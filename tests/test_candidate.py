"""From reviews to a candidate version, measured before it serves (issue 28): the review store
as training data (split by file, the provenance's hash), the candidate's definition (the
serving version pinned first), the comparison's figures and flips; and, in the stack tier,
the loop end to end on the real lite gateway and Triton."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from export import compare, reviews, train, versions
from gateway.server.reviews.record import FaceCrop, Record
from gateway.server.reviews.store import ReviewStore
from gateway.server.schemas import Comparison

# --- the review store as training data ----------------------------------------------------


def record(sha256: str | None, seed: int, faces: int = 2) -> Record:
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(faces)]
    return Record(
        source="detect" if sha256 else "live",
        sha256=sha256,
        verdict="uncertain",
        score=0.5,
        scores={"threshold": 0.5},
        faces=[FaceCrop(n, 0, 0, 0.5, {"meso4": 0.5}, c) for n, c in enumerate(crops)],
    )


@pytest.fixture
def store_url(tmp_path: Path) -> tuple[str, dict[str, list[np.ndarray]]]:
    """A SQLite store: 6 files (3 fake, 3 real), two of them answered and reviewed twice,
    one live verdict (no file), one file reviewed both ways; another key's review too."""
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    store = ReviewStore.open(url)
    plan = [(f"{n:064x}", "fake" if n < 3 else "real", "key:a") for n in range(6)]
    plan += [(f"{0:064x}", "fake", "key:a"), (f"{3:064x}", "real", "key:b")]
    plan += [(None, "fake", "key:a")]
    plan += [(f"{9:064x}", "fake", "key:a"), (f"{9:064x}", "real", "key:a")]
    crops: dict[str, list[np.ndarray]] = {}
    for seed, (sha, label, owner) in enumerate(plan):
        kept = record(sha, seed)
        answer_id = store.keep(kept, owner, 60)
        crops.setdefault(sha or f"answer:{answer_id}", []).extend(f.crop for f in kept.faces)
        store.review(answer_id, owner, label, None, None, 3600)
    store.close()
    return url, crops


def test_reviews_are_faces_grouped_by_file_and_split_by_file(store_url: tuple) -> None:
    url, crops = store_url
    found = reviews.load(url)
    keys = {f.key for f in found.files}
    assert f"{9:064x}" not in keys  # reviewed both ways: no label to learn
    assert len(keys) == 7 and sum(k.startswith("answer:") for k in keys) == 1
    for f in found.files:  # every review's crops of the file, lossless
        assert np.array_equal(f.faces, np.stack(crops[f.key]))
    assert {f.key: len(f.review_ids) for f in found.files}[f"{0:064x}"] == 2
    assert found.provenance["count"] == 9 and found.provenance["files"] == 7
    assert found.provenance["first"] <= found.provenance["last"]
    first = train.split_by(found.files, lambda f: f.key, lambda f: f.label, 0.25)
    again = train.split_by(found.files[::-1], lambda f: f.key, lambda f: f.label, 0.25)
    assert [f.key for f in first[0]] == [f.key for f in again[0]]
    train_keys, val_keys = ({f.key for f in side} for side in first)
    assert train_keys.isdisjoint(val_keys) and train_keys | val_keys == keys
    assert {f.label for f in first[1]} == {0, 1}
    faces, labels = reviews.stacked(first[1])
    assert len(faces) == len(labels) == sum(len(f.faces) for f in first[1])
    only_b = reviews.load(url, owner="key:b")
    assert [f.key for f in only_b.files] == [f"{3:064x}"]


def test_the_provenance_hash_names_the_reviews_and_their_labels() -> None:
    labels = {"b": "fake", "a": "real"}
    digest = reviews.reviews_digest(labels)
    assert digest == reviews.reviews_digest(dict(reversed(labels.items())))
    assert digest != reviews.reviews_digest({"b": "real", "a": "real"})  # a label changed
    assert digest != reviews.reviews_digest({"b": "fake"})  # a review gone
    assert digest != reviews.reviews_digest({"b": "fake", "a": "real", "c": "fake"})


def test_calibration_fits_on_the_reviews_raw_scores_grouped_by_file(tmp_path: Path) -> None:
    """make calibrate --reviews, in process: each review is a sample, its answer's raw score
    labelled as the reviewer said; one file's reviews are one source group."""
    from export import calibrate
    from tests.conftest import MEDIA, inprocess_gateway

    key = "calibrate-review-key-0123"
    images = [("real", "face_recognition_obama.jpg"), ("fake", "dfdc_mqzvfufzoq_fr0.jpg")]
    images.append(images[0])  # the same file answered and reviewed twice
    tmp = tmp_path / "gateway"
    with inprocess_gateway(
        tmp, reviews_enabled=True, reviews_dir=tmp / "reviews", api_keys=[key]
    ) as gateway:
        answers = []
        for label, name in images:
            with (MEDIA / "images" / label / name).open("rb") as file:
                answer = gateway.client.post(
                    "/api/detect", files={"file": (name, file)}, headers={"X-API-Key": key}
                ).json()
            reviewed = gateway.client.post(
                "/api/reviews",
                json={"answer_id": answer["answer_id"], "label": label},
                headers={"X-API-Key": key},
            )
            assert reviewed.status_code == 201, reviewed.text
            answers.append(answer)
        url = f"sqlite:///{tmp / 'reviews' / 'reviews.db'}"
        gateway.client.headers["X-API-Key"] = key  # make calibrate's client, with the key
        clips, facts, faceless, files = calibrate.reviewed_scores(gateway.gateway_client, url, None)
    assert [c.label for c in clips] == [0, 1, 0] and faceless == []
    assert [c.raw for c in clips] == pytest.approx([a["raw_score"] for a in answers])
    assert [files[c.name] for c in clips] == [a["sha256"] for a in answers]
    assert calibrate.source_groups([c.name for c in clips], files) == [0, 1, 0]
    assert facts["profile"] == "lite"


# --- the candidate -------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    member = tmp_path / "members" / "meso4"
    (member / "configs").mkdir(parents=True)
    (member / "1").mkdir()
    for config in versions.config_files(member):
        config.write_text('name: "meso4"\n')
    return tmp_path


def test_a_new_version_is_a_candidate_until_promoted_and_rolled_back(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") is None
    assert versions.pin_serving(repo, "meso4") == 1  # what training does first
    (repo / "members/meso4/2").mkdir()  # then the new version, not loaded by the pin
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") is None
    assert versions.make_candidate(repo, "meso4", 2) == 1  # what training does last
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") == 2
    for config in versions.config_files(repo / "members/meso4"):
        text = config.read_text()
        assert "versions: [1, 2]" in text
        assert 'key: "serving_version" value: { string_value: "1" }' in text
        assert 'key: "candidate_version" value: { string_value: "2" }' in text
    versions.main(["--repository", str(repo), "list", "meso4"])
    assert capsys.readouterr().out.splitlines()[-1] == "serving 1, candidate 2"
    versions.serve(repo, "meso4", "2")  # promotion
    assert versions.serving(repo, "meso4") == 2 and versions.candidate(repo, "meso4") is None
    assert "candidate" not in (repo / "members/meso4/config.pbtxt").read_text()
    versions.serve(repo, "meso4", "1")  # rollback: 2 is no candidate, until named again
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") is None
    versions.serve(repo, "meso4", "latest")
    assert versions.serving(repo, "meso4") == 2 and versions.candidate(repo, "meso4") is None


def test_the_comparison_is_recorded_with_the_versions_provenance(repo: Path) -> None:
    onnx = repo / "members/meso4/1/model.onnx"
    onnx.write_bytes(b"graph")
    versions.record_version(repo, "meso4", 2, {"created": "today"}, onnx)
    versions.update_version(repo, "meso4", 2, {"comparison": {"worse_than_serving": True}})
    for config in versions.config_files(repo / "members/meso4"):
        recorded = versions.version_parameters(config)[2]
        assert recorded["created"] == "today" and recorded["comparison"]["worse_than_serving"]
    with pytest.raises(SystemExit):
        versions.update_version(repo, "meso4", 3, {})


# --- the comparison ------------------------------------------------------------------------


def scored_set() -> compare.Scored:
    """4 files, 3 faces each: the candidate separates them, the serving version does not."""
    labels = np.array([1, 1, 0, 0])
    file_of = np.repeat(np.arange(4), 3)
    serving = np.array([0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4])
    candidate = np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.8, 0.2, 0.3, 0.1, 0.3, 0.2, 0.1])
    names = ["a", "b", "c", "d"]
    return compare.Scored(names, labels, file_of, serving, candidate)


def test_the_figures_are_the_metrics_with_paired_intervals() -> None:
    scored = scored_set()
    y = scored.labels[scored.file_of]
    figures = compare.figures(scored, [0, 1, 2, 3], draws=300)
    assert figures["auc"]["serving"] == round(roc_auc_score(y, scored.serving), 4) == 0.5
    assert figures["auc"]["candidate"] == 1.0
    assert figures["log_loss"]["candidate"] == round(log_loss(y, scored.candidate), 4)
    assert figures["auc"]["difference"] == 0.5
    for name in ("auc", "log_loss", "ece"):
        for side in ("serving", "candidate", "difference"):
            low, high = figures[name][f"{side}_interval"]
            assert low <= figures[name][side] <= high or name == "ece"
    assert compare.worse_on(figures) == []
    swapped = compare.Scored(*[getattr(scored, k) for k in ("names", "labels", "file_of")],
                             serving=scored.candidate, candidate=scored.serving)  # fmt: skip
    assert compare.worse_on(compare.figures(swapped, [0, 1, 2, 3], 50)) == ["auc", "log_loss"]


def test_the_answers_that_would_flip_are_named() -> None:
    flips = compare.flips(scored_set())
    # a: fake 0.6 -> 0.8 stays fake; b: 0.4 -> 0.7 to fake; c: 0.6 -> 0.2 to real; d stays real
    assert [(f["file"], f["label"], f["to"]) for f in flips] == [
        ("b", "fake", "fake"),
        ("c", "real", "real"),
    ]
    assert flips[0]["serving"] == 0.4 and flips[0]["candidate"] == 0.7


def test_a_worse_candidate_says_so_in_the_cli_output() -> None:
    comparison = {
        "serving": 1,
        "candidate": 2,
        "shared_clips": {"files": 4, "faces": 12, "figures": {}, "flips": []},
        "held_out_reviews": None,
        "worse_than_serving": True,
        "worse_on": ["auc"],
    }
    text = compare.printed(comparison, colour=True)
    assert "\033[1;31mWORSE THAN SERVING on the shared clips: auc" in text
    assert "WORSE" not in compare.printed(comparison | {"worse_than_serving": False}, False)
    assert json.dumps(comparison)  # what is stored is JSON


# --- end to end: reviews on the real lite gateway -> a candidate -> compared -> promoted -----

# Reviewed: two clips of each class; the split by file puts one of each on each side. Of the
# shared clips, these four make a fine-tune that beats the served weights on its validation
# files within 3 epochs (at 1e-3), so the candidate is not the served weights (training keeps
# the best validation epoch: with no better epoch it would be the served weights again).
CLIPS = {
    "real": ("cvprw2019_demo.mp4", "dfdc_lynaeydofd.mp4"),
    "fake": ("ffpp_c23_NeuralTextures_004_982.mp4", "sadtalker_generated_still_full_e.mp4"),
}
# Compared on: four other shared clips (the whole folder in `make compare`).
SHARED = {
    "real": ("ffpp_c23_original_519.mp4", "ffpp_c23_original_634.mp4"),
    "fake": ("ffpp_c23_Deepfakes_519_515.mp4", "ffpp_c23_FaceSwap_634_660.mp4"),
}
KEY = "candidate-review-key-0123"
AS_KEY = {"X-API-Key": KEY}


def meso4(url: str) -> dict:
    import httpx

    models = httpx.get(f"{url}/api/models", headers=AS_KEY, timeout=30).json()["models"]
    return next(m for m in models if m["name"] == "meso4")


def detect_six(url: str, clip: Path) -> dict:
    """The gateway's answer for `clip` over 6 sampled frames, as the test's key."""
    import httpx

    with clip.open("rb") as file:
        return httpx.post(
            f"{url}/api/detect",
            params={"frames": 6},
            files={"file": (clip.name, file)},
            headers=AS_KEY,
            timeout=120,
        ).json()


def scored(answer: dict) -> dict:
    """An answer but for what differs per request, and the models' recorded `versions` (the
    repository's catalogue, which now lists version 2: what answered is `version`)."""
    per_request = ("answer_id", "request_id", "timings_ms")
    kept = {k: v for k, v in answer.items() if k not in per_request}
    return kept | {"models": [m | {"versions": None} for m in answer["models"]]}


@pytest.mark.stack
def test_reviews_make_a_candidate_compared_shadowed_then_promoted_and_rolled_back(
    exported: Path, tmp_path: Path
) -> None:
    import shutil
    import threading
    import time

    import httpx

    from export.repository import profile_members
    from model_repository.local_triton import LocalTriton
    from tests.conftest import MEDIA, REPOSITORY, start_gateway
    from tests.stack import on_free_ports

    started = time.monotonic()
    data, shared, repo = tmp_path / "clips", tmp_path / "shared", tmp_path / "repo"
    for folder, clips in ((data, CLIPS), (shared, SHARED)):
        for label, names in clips.items():
            (folder / label).mkdir(parents=True)
            for name in names:
                (folder / label / name).symlink_to(MEDIA / "videos" / label / name)
    shutil.copytree(REPOSITORY / "lite", repo / "lite")
    for member in profile_members(REPOSITORY, "lite"):
        shutil.copytree(REPOSITORY / "members" / member, repo / "members" / member)
    settings = on_free_ports(
        profile="lite",
        repository=repo,
        work_dir=tmp_path / "triton",
    )
    url = f"sqlite:///{tmp_path / 'reviews' / 'reviews.db'}"
    with (
        LocalTriton(settings) as triton,
        start_gateway(
            settings.grpc_url,
            tmp_path / "gateway",
            reviews_enabled="true",
            reviews_dir=str(tmp_path / "reviews"),
            api_keys=KEY,
            shadow_share="1",  # every answer kept is shadow-scored by a candidate, if any
        ) as gateway,
    ):
        # 1. Reviews of real answers, labelled as the clips' folders say.
        before: dict[str, dict] = {}  # each clip's answer by version 1 alone
        for label, names in CLIPS.items():
            for name in names:
                answer = detect_six(gateway.url, data / label / name)
                before[name] = answer
                created = httpx.post(
                    f"{gateway.url}/api/reviews",
                    json={"answer_id": answer["answer_id"], "label": label},
                    headers=AS_KEY,
                    timeout=30,
                )
                assert created.status_code == 201, created.text
        # 2. A fine-tune from those reviews: a candidate, not served.
        config = train.TrainConfig(
            member="meso4", reviews=url, epochs=3, learning_rate=1e-3, seed=0
        )
        report = train.run(config, repo)
        assert report["version"] == 2 and report["reviews"]["count"] == 4
        assert report["history"]["best_epoch"] >= 1  # the candidate is not the served weights
        assert set(report["train_files"]).isdisjoint(report["val_files"])
        assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") == 2
        # 3. Measured against the serving version; the member reloaded to show it.
        status = compare.main(
            ["--repository", str(repo), "--member", "meso4", "--data", str(shared),
             "--reviews", url, "--frames", "2", "--bootstrap", "200",
             "--triton-url", triton.settings.http_url]
        )  # fmt: skip
        stored = json.loads((repo / "members/meso4/2/comparison.json").read_text())
        assert status == (compare.WORSE if stored["worse_than_serving"] else 0)
        assert stored["held_out_reviews"]["files"] == 2  # the split's validation files
        shown = meso4(gateway.url)
        assert (shown["version"], shown["candidate"]) == ("1", "2")
        # as stored, in the API's schema (whose optional fields default to null)
        expected = Comparison.model_validate(stored).model_dump()
        assert shown["versions"]["2"]["comparison"] == expected
        assert shown["versions"]["2"]["comparison"]["shared_clips"]["figures"]["auc"]["candidate"]
        assert shown["versions"]["2"]["reviews"] == report["reviews"]
        # 3b. The candidate, loaded beside version 1, is shadow-scored; answers are unchanged.
        name = CLIPS["real"][0]
        again = detect_six(gateway.url, data / "real" / name)
        assert scored(again) == scored(before[name])
        store = ReviewStore.open(url)
        try:
            deadline = time.monotonic() + 60
            while not (rows := store.shadow_scores(again["answer_id"])):
                assert time.monotonic() < deadline, "no shadow row"
                time.sleep(0.2)
        finally:
            store.close()
        ((row,),) = [rows]
        assert (row.model, row.serving_version, row.candidate_version) == ("meso4", "1", "2")
        faces = [f for frame in again["frames"] for f in frame["faces"]]
        assert [r["serving"] for r in row.faces] == [f["models"]["meso4"] for f in faces]
        assert [r["candidate"] for r in row.faces] != [r["serving"] for r in row.faces]
        # 4. Promotion and rollback, one command each, while the gateway answers.
        failures: list[str] = []
        answered: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            clip = shared / "real" / SHARED["real"][0]
            with httpx.Client(base_url=gateway.url, timeout=60) as client:
                while not stop.is_set():
                    with clip.open("rb") as f:
                        response = client.post(
                            "/api/detect",
                            params={"frames": 2},
                            files={"file": (clip.name, f)},
                            headers=AS_KEY,
                        )
                    answered.append(response.status_code)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            http = ["--repository", str(repo), "serve", "meso4"]
            versions.main([*http, "2", "--triton-url", triton.settings.http_url])
            promoted = meso4(gateway.url)
            versions.main([*http, "1", "--triton-url", triton.settings.http_url])
            rolled_back = meso4(gateway.url)
        finally:
            stop.set()
            asker.join()
    assert (promoted["version"], promoted["candidate"]) == ("2", None)
    assert (rolled_back["version"], rolled_back["candidate"]) == ("1", None)  # dropped
    assert answered and not failures, failures
    print(f"the review loop end to end: {time.monotonic() - started:.0f} s")


def test_training_needs_one_source_and_never_records_the_stores_password() -> None:
    with pytest.raises(SystemExit):
        train.main(["--member", "meso4"])  # neither --data nor --reviews
    with pytest.raises(SystemExit):
        train.main(["--data", "x", "--reviews", "sqlite://"])
    shown = train.hide_password("postgresql+psycopg://reviews:s3cret@db:5432/reviews")
    assert "s3cret" not in shown and shown.startswith("postgresql+psycopg://reviews:")
