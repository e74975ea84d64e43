"""Fine-tuning (python -m export.train) on a few shared clips, the result served
by the real Triton as a new model version, rolled back and forward while the
gateway keeps answering."""

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from export import data, train, versions
from export.repository import profile_members
from model_repository.local_triton import LocalTriton
from tests.conftest import MEDIA, REPOSITORY, start_gateway
from tests.stack import on_free_ports

# Two source scenes, each real and manipulated: one scene of each class trains,
# the other validates (the split is by file, deterministic).
CLIPS = {
    "real": ("ffpp_c23_original_519.mp4", "ffpp_c23_original_634.mp4"),
    "fake": ("ffpp_c23_Deepfakes_519_515.mp4", "ffpp_c23_FaceSwap_634_660.mp4"),
}
IMAGE = MEDIA / "images/fake/dfdc_mqzvfufzoq_fr0.jpg"


@pytest.fixture(scope="module")
def trained(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the lite repository, and the report of meso4 fine-tuned into it."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    for label, names in CLIPS.items():
        (data / label).mkdir(parents=True)
        for name in names:
            (data / label / name).symlink_to(MEDIA / "videos" / label / name)
    repo = root / "repo"
    shutil.copytree(REPOSITORY / "lite", repo / "lite")
    for member in profile_members(REPOSITORY, "lite"):
        shutil.copytree(REPOSITORY / "members" / member, repo / "members" / member)
    config = train.TrainConfig(
        member="meso4", data=data, frames=4, epochs=3, learning_rate=1e-3, seed=0
    )
    return repo, train.run(config, repo)


def test_fine_tuning_lowers_the_training_loss_and_reports_everything(trained: tuple) -> None:
    repo, report = trained
    history = report["history"]
    assert 1 <= len(history["train_loss"]) <= 3
    assert history["train_loss"][-1] < report["train_loss_before"]
    assert set(report["train_files"]).isdisjoint(report["val_files"])
    assert {f.split("/")[0] for f in report["val_files"]} == {"real", "fake"}
    for side in ("val_before", "val_after"):
        figures = report[side]
        assert figures["auc"] is not None and 0 <= figures["accuracy"] <= 1
        assert np.array(figures["confusion"]).sum() == figures["faces"] > 0
    folder = repo / "members/meso4/2"
    assert (folder / "loss.png").read_bytes()[:4] == b"\x89PNG"
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert meta["fine_tuned_from"].startswith("Meso4_DF.h5 sha256:")
    assert len(meta["data_sha256"]) == 64 and meta["created"]
    assert {"val_auc_before", "val_auc_after", "val_accuracy_after"} <= set(meta)
    recorded = versions.version_parameters(repo / "members/meso4/configs/cpu.pbtxt")
    assert recorded[2]["data_sha256"] == meta["data_sha256"] and len(recorded[2]["sha256"]) == 64


def test_the_split_is_by_file_and_deterministic(tmp_path: Path) -> None:
    for label in ("real", "fake"):
        (tmp_path / label).mkdir()
        for n in range(5):
            (tmp_path / label / f"{label}{n}.mp4").write_bytes(b"x")
    files = data.labelled_files(tmp_path)
    first = train.split(files, tmp_path, 0.25)
    assert first == train.split(list(reversed(files)), tmp_path, 0.25)
    train_files, val_files = first
    assert len(val_files) == 4 and len(train_files) == 6  # ceil(0.25 * 5) per class
    assert not {p for p, _ in train_files} & {p for p, _ in val_files}


@pytest.fixture(scope="module")
def served(trained: tuple, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    repo, _ = trained
    settings = on_free_ports(
        profile="lite",
        repository=repo,
        work_dir=tmp_path_factory.mktemp("triton-versions"),
    )
    with (
        LocalTriton(settings) as triton,
        start_gateway(settings.grpc_url, tmp_path_factory.mktemp("gw")) as gateway,
    ):
        yield repo, triton.settings, gateway


def meso4(url: str) -> dict:
    models = httpx.get(f"{url}/api/models", timeout=30).json()["models"]
    return next(m for m in models if m["name"] == "meso4")


def test_new_version_serves_and_rolls_back_while_the_gateway_answers(served: tuple) -> None:
    repo, triton, gateway = served
    # Training made the new version the candidate: loaded beside version 1, which serves
    # (the ensemble's step names it), until promoted.
    trained = meso4(gateway.url)
    assert (trained["version"], trained["candidate"]) == ("1", "2")
    ensemble = (repo / "lite/deepfake_ensemble/config.pbtxt").read_text()
    assert 'model_name: "meso4"\n      model_version: 1\n' in ensemble
    assert set(trained["versions"]) == {"2"}
    promote = ["--repository", str(repo), "serve", "meso4", "2"]
    versions.main([*promote, "--triton-url", triton.http_url])
    latest = meso4(gateway.url)
    assert (latest["version"], latest["candidate"]) == ("2", None)
    assert latest["weights"]["source"].startswith("fine-tuned from Meso4_DF.h5")
    failures: list[str] = []
    answered: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            while not stop.is_set():
                with IMAGE.open("rb") as f:
                    response = client.post("/api/detect", files={"file": (IMAGE.name, f)})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                answered.append(response.status_code)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        versions.main(
            ["--repository", str(repo), "serve", "meso4", "1", "--triton-url", triton.http_url]
        )
        rolled_back = meso4(gateway.url)
        versions.main(
            ["--repository", str(repo), "serve", "meso4", "latest", "--triton-url", triton.http_url]
        )
        forward = meso4(gateway.url)
    finally:
        stop.set()
        asker.join()
    assert rolled_back["version"] == "1"
    assert rolled_back["weights"]["file"] == "Meso4_DF.h5"
    assert forward["version"] == "2"
    assert answered and not failures, failures


def test_models_show_manifest_members_and_the_vote_rule(served: tuple) -> None:
    _, _, gateway = served
    answer = httpx.get(f"{gateway.url}/api/models", timeout=30).json()
    assert answer["vote_rule"] == "max_of_groups"
    models = {m["name"]: m for m in answer["models"]}
    for name in ("meso4_f2f", "mesoinception4_f2f"):
        assert models[name]["group"] == "f2f" and models[name]["weight"] > 0
        assert "Face2Face" in models[name]["trained_on"]
    assert models["meso4"]["group"] == "swap"


def test_short_tracks_are_marked_and_do_not_decide(served: tuple) -> None:
    """ffpp_c23_original_004: the presenter throughout, and a face seen briefly."""
    _, _, gateway = served
    clip = MEDIA / "videos/real/ffpp_c23_original_004.mp4"
    with clip.open("rb") as f:
        answer = httpx.post(
            f"{gateway.url}/api/detect",
            params={"frames": 16},
            files={"file": (clip.name, f)},
            timeout=120,
        ).json()
    tracks = answer["tracks"]
    short = [t for t in tracks if t["short"]]
    assert short and all(t["share"] < 1 / 3 for t in short)
    assert answer["raw_score"] == max(t["score"] for t in tracks if not t["short"])
    (decisive,) = [t for t in tracks if t["decisive"]]
    assert not decisive["short"] and decisive["score"] == answer["raw_score"]
