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
    plan += [(f"{0:064x}", "fake", "key:a"), (f"{3:064x}", "real", "key:b"), (None, "fake", "key:a")]
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


# --- the candidate -------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    member = tmp_path / "members" / "meso4"
    (member / "configs").mkdir(parents=True)
    (member / "1").mkdir()
    for config in versions.config_files(member):
        config.write_text('name: "meso4"\n')
    return tmp_path


def test_a_new_version_is_a_candidate_until_promoted_and_rolled_back(repo: Path) -> None:
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") is None
    assert versions.pin_serving(repo, "meso4") == 1  # what training does first
    (repo / "members/meso4/2").mkdir()  # then the new version
    assert versions.serving(repo, "meso4") == 1 and versions.candidate(repo, "meso4") == 2
    versions.serve(repo, "meso4", "1")  # training's pin again, now naming the candidate
    for config in versions.config_files(repo / "members/meso4"):
        text = config.read_text()
        assert "versions: [1]" in text
        assert 'key: "candidate" value: { string_value: "2" }' in text
    versions.serve(repo, "meso4", "2")  # promotion
    assert versions.serving(repo, "meso4") == 2 and versions.candidate(repo, "meso4") is None
    assert "candidate" not in (repo / "members/meso4/config.pbtxt").read_text()
    versions.serve(repo, "meso4", "1")  # rollback: 2 is the candidate again
    assert versions.candidate(repo, "meso4") == 2
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
