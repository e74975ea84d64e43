"""`make train` (python -m export.train): fine-tune a member on your own labelled
media and add the result to the model repository as a new Triton model version.

    python -m export.train --data DIR --member meso4 [--epochs 10] [--frames 8]
    python -m export.train --reviews DATABASE_URL --member meso4 [--reviews-owner KEY_ID]

DIR holds `real/` and `fake/` (videos or images, any depth). Faces are cut by
the project's own pipeline (preprocess: the detector and crop the gateway
uses), the largest face of each sampled frame. The split is by source file,
deterministic (sha256 of each file's path under DIR), so no video has frames on
both sides. Training starts from the member's exported weights, early-stops on
the validation loss, keeps the best epoch, and writes a report (loss curves
PNG, validation AUC/accuracy before and after, confusion matrix) next to
`<member>/<n>/model.onnx`, the new version. Its provenance (what it was
fine-tuned from, the data's sha256, when, the validation figures) goes into
the ONNX metadata and the member's configs (`version_<n>` parameter), so
`GET /api/models` shows it. Which version serves: export/versions.py.

--reviews learns from the review store instead (export/reviews.py): each review's
faces as the members saw them, labelled as the reviewer said, split by file
(sha256); the version's provenance names the reviews (count, a sha256 of their
ids and labels, the first and last review's time).

The new version is the member's *candidate* (model_repository/README.md): training pins
the version serving before writing it, then writes the candidate's policy block
(export.versions make_candidate), so it is loaded beside the serving one, shadow-scored
and never served until promoted (`python -m export.versions serve <member> <n>`), after
`python -m export.compare` measured it.
"""

import argparse
import hashlib
import json
import logging
import math
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score
from torch import nn

from export import members as manifests
from export import reviews
from export.data import LABELS, data_digest, labelled_files
from export.onnx_writer import FacesToPFake, export_onnx
from export.repository import Provenance
from export.versions import make_candidate, next_version, pin_serving, record_version
from export.weights import weights_manifest
from preprocess import assets
from preprocess.tensors import is_fake

T = TypeVar("T")
REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
log = logging.getLogger("export.train")


@dataclass(frozen=True)
class TrainConfig:
    member: str
    data: Path | None = None  # a folder with real/ and fake/, or:
    frames: int = 8  # sampled per video, the largest face of each
    epochs: int = 10
    patience: int = 3  # epochs without a better validation loss before stopping
    batch_size: int = 16
    learning_rate: float = 1e-4
    val_share: float = 0.25  # of each class's files, at least one
    seed: int = 0
    reviews: str | None = None  # the review store's database URL (export/reviews.py)
    reviews_owner: str | None = None  # only this key's reviews (default: every key's)


@dataclass(frozen=True)
class Prepared:
    """Faces to train and validate on, and what they came from (the report's words)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    train_files: list[str]  # paths under the folder, or files' sha256 (reviews)
    val_files: list[str]
    data_sha256: str
    learnt_from: dict  # {"data": folder} or {"reviews": {count, sha256, first, last, ...}}


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0


# -- data ------------------------------------------------------------------------


def split_by(
    items: list[T], key: Callable[[T], str], label: Callable[[T], int], share: float
) -> tuple[list[T], list[T]]:
    """Train and validation items (files): per class, the items ordered by the sha256 of
    their key, the first ceil(share * n) to validation. A file is wholly on one side; the
    same data always splits the same, whatever order it came in."""
    train: list[T] = []
    val: list[T] = []
    for value in LABELS.values():
        ranked = sorted(
            (item for item in items if label(item) == value),
            key=lambda item: hashlib.sha256(key(item).encode()).hexdigest(),
        )
        if len(ranked) < 2:
            raise SystemExit(f"class {value}: needs at least 2 files, one to validate on")
        cut = max(1, math.ceil(share * len(ranked)))
        val += ranked[:cut]
        train += ranked[cut:]
    return train, val


def split(
    files: list[tuple[Path, int]], data: Path, share: float
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """A folder's files split by their path under `data` (split_by)."""
    return split_by(files, lambda f: str(f[0].relative_to(data)), lambda f: f[1], share)


def faces_per_file(files: list[tuple[Path, int]], frames: int) -> list[np.ndarray]:
    """Each file's faces: the largest face of each sampled frame, cut as the gateway cuts
    them (uint8 [n, H, W, 3]; n may be 0)."""
    from preprocess.crop import CropConfig
    from preprocess.faces import load_detector
    from preprocess.media import MediaReader
    from preprocess.pipeline import FaceExtractor

    extractor = FaceExtractor(load_detector(), CropConfig())
    reader = MediaReader()
    cut = []
    for path, _ in files:
        found = [extractor.extract_frame(f) for f in reader.read(path, frames).frames]
        crops = [f.crops[0] for f in found if f.crops]
        log.info("%s: %d faces", path.name, len(crops))
        cut.append(np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8))
    return cut


def cut_faces(files: list[tuple[Path, int]], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The files' faces (faces_per_file) and one label per face."""
    cut = faces_per_file(files, frames)
    per_file = [(f, label) for f, (_, label) in zip(cut, files, strict=True) if len(f)]
    if not per_file:
        raise SystemExit("no faces found in the training data")
    faces = np.concatenate([f for f, _ in per_file])
    labels = np.concatenate([np.full(len(f), label, np.float32) for f, label in per_file])
    return faces, labels


# -- training --------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep the pretrained BatchNorm statistics: a few dozen faces are too few
    to re-estimate them, and small batches would make them noise."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def predict(wrapper: FacesToPFake, faces: np.ndarray, batch: int) -> np.ndarray:
    wrapper.eval()
    with torch.no_grad():
        out = [
            wrapper(torch.from_numpy(faces[i : i + batch])).reshape(-1)
            for i in range(0, len(faces), batch)
        ]
    return torch.cat(out).numpy()


def loss_of(p_fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy(p_fake.clamp(1e-6, 1 - 1e-6), labels)


def figures(wrapper: FacesToPFake, faces: np.ndarray, labels: np.ndarray, batch: int) -> dict:
    p = predict(wrapper, faces, batch)
    both = len(set(labels.tolist())) == 2
    fake = np.array([is_fake(x) for x in p])  # the gateway's cut
    return {
        "loss": float(loss_of(torch.from_numpy(p), torch.from_numpy(labels))),
        "auc": float(roc_auc_score(labels, p)) if both else None,
        "accuracy": float((fake == (labels == 1)).mean()),
        "confusion": confusion_matrix(labels, fake, labels=[0, 1]).tolist(),
        "faces": len(labels),
    }


def fine_tune(
    wrapper: FacesToPFake,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
) -> History:
    """Adam on the BCE of P(fake), horizontal flips; the best validation epoch is kept."""
    seed_everything(config.seed)
    faces, labels = train
    optimiser = torch.optim.Adam(wrapper.parameters(), lr=config.learning_rate)
    history = History()
    best = figures(wrapper, *val, config.batch_size)["loss"]
    best_state = {k: v.clone() for k, v in wrapper.state_dict().items()}
    generator = np.random.default_rng(config.seed)
    for epoch in range(1, config.epochs + 1):
        wrapper.train()
        freeze_batchnorm(wrapper)
        order = generator.permutation(len(faces))
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            index = order[i : i + config.batch_size]
            x = torch.from_numpy(faces[index])
            flip = torch.from_numpy(generator.random(len(index)) < 0.5)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
            loss = loss_of(wrapper(x).reshape(-1), torch.from_numpy(labels[index]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        history.train_loss.append(total / len(faces))
        history.val_loss.append(figures(wrapper, *val, config.batch_size)["loss"])
        log.info(
            "epoch %d: train %.4f val %.4f", epoch, *history.train_loss[-1:], history.val_loss[-1]
        )
        if history.val_loss[-1] < best:
            best, history.best_epoch = history.val_loss[-1], epoch
            best_state = {k: v.clone() for k, v in wrapper.state_dict().items()}
        elif epoch - history.best_epoch >= config.patience:
            log.info("early stop: no better validation loss since epoch %d", history.best_epoch)
            break
    wrapper.load_state_dict(best_state)
    return history


def plot_losses(history: History, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    epochs = range(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, marker="o", label="train")
    ax.plot(epochs, history.val_loss, marker="o", label="validation")
    if history.best_epoch:
        ax.axvline(history.best_epoch, color="grey", linestyle="--", label="kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the member and its new version ------------------------------------------------


def starting_point(repo: Path, name: str) -> tuple[object, dict, Path, str]:
    """The member's architecture, its config, its pretrained weights and its
    asset name: a built-in member, or a manifest member with an architecture."""
    from export.architectures import ARCHITECTURES

    if name in ARCHITECTURES:
        arch, asset = ARCHITECTURES[name], ARCHITECTURES[name].PRETRAINED_CFG["asset"]
    else:
        member = next((m for m in manifests.discover(repo) if m.name == name), None)
        if member is None or not member.architecture:
            raise SystemExit(f"{name}: not a member with an architecture this can train")
        arch, asset = ARCHITECTURES[member.architecture], member.weights_asset
    weights = assets.resolve(weights_manifest()[asset], allow_download=False)
    return arch, arch.PRETRAINED_CFG, weights, asset


def hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def from_folder(config: TrainConfig) -> Prepared:
    assert config.data is not None
    files = labelled_files(config.data)
    train_files, val_files = split(files, config.data, config.val_share)
    return Prepared(
        train=cut_faces(train_files, config.frames),
        val=cut_faces(val_files, config.frames),
        train_files=[str(p.relative_to(config.data)) for p, _ in train_files],
        val_files=[str(p.relative_to(config.data)) for p, _ in val_files],
        data_sha256=data_digest(files, config.data),
        learnt_from={"data": str(config.data)},
    )


def from_reviews(config: TrainConfig) -> Prepared:
    """The review store's faces, split by file (sha256): the reviews' own crops, so no
    frame sampling (`frames` does not apply)."""
    assert config.reviews is not None
    found = reviews.load(config.reviews, reviews.password(), config.reviews_owner)
    train_files, val_files = split_by(
        found.files, lambda f: f.key, lambda f: f.label, config.val_share
    )
    return Prepared(
        train=reviews.stacked(train_files),
        val=reviews.stacked(val_files),
        train_files=[f.key for f in train_files],
        val_files=[f.key for f in val_files],
        data_sha256=found.provenance["sha256"],
        learnt_from={"reviews": found.provenance},
    )


def run(config: TrainConfig, repo: Path) -> dict:
    seed_everything(config.seed)
    arch, cfg, weights, asset = starting_point(repo, config.member)
    model = arch.create_model()
    arch.load_weights(model, weights)
    wrapper = FacesToPFake(model, cfg)
    prepared = from_reviews(config) if config.reviews else from_folder(config)
    train, val = prepared.train, prepared.val
    before = figures(wrapper, *val, config.batch_size)
    train_before = figures(wrapper, *train, config.batch_size)["loss"]
    history = fine_tune(wrapper, train, val, config)
    after = figures(wrapper, *val, config.batch_size)
    # The new version is a candidate (model_repository/README.md): the serving version is
    # pinned before its folder exists, so neither Triton's default policy nor a repository
    # poll serves it; once written, it is named the candidate; `serve` promotes it.
    serving = pin_serving(repo, config.member)
    version = next_version(repo, config.member)
    folder = repo / "members" / config.member / str(version)
    report = {
        "member": config.member,
        "version": version,
        "fine_tuned_from": f"{weights.name} sha256:{assets.sha256_of(weights)}",
        "data_sha256": prepared.data_sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "serving_when_trained": serving,
        **prepared.learnt_from,
        "train_files": prepared.train_files,
        "val_files": prepared.val_files,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
        | {"reviews": config.reviews and hide_password(config.reviews)},
        "train_loss_before": train_before,
        "history": asdict(history),
        "val_before": before,
        "val_after": after,
    }
    provenance = Provenance(
        trained=True,
        weights_file=f"{config.member}/{version}/model.onnx",
        weights_sha256="",  # of the ONNX, set once written (record_version)
        weights_source=f"fine-tuned from {asset} ({weights.name}) by python -m export.train",
        weights_licence=weights_manifest()[asset].licence,
    )
    summary = {
        "fine_tuned_from": report["fine_tuned_from"],
        "data_sha256": report["data_sha256"],
        **prepared.learnt_from,
        "created": report["created"],
        "val_auc_before": before["auc"],
        "val_auc_after": after["auc"],
        "val_accuracy_before": before["accuracy"],
        "val_accuracy_after": after["accuracy"],
        "val_faces": after["faces"],
        "epochs": len(history.train_loss),
        "best_epoch": history.best_epoch,
    }
    metadata = {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)
        for k, v in {**provenance.parameters(), **summary}.items()
    }
    partial = folder / "model.onnx.part"  # Triton never sees half a file
    export_onnx(wrapper.eval(), partial, metadata)
    partial.replace(folder / "model.onnx")
    plot_losses(history, folder / "loss.png")
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    record_version(repo, config.member, version, summary, folder / "model.onnx")
    make_candidate(repo, config.member, version)  # loaded beside `serving`, not served
    log.info(
        "%s version %d: validation AUC %s -> %s, accuracy %.3f -> %.3f; report in %s",
        config.member, version, before["auc"], after["auc"], before["accuracy"],
        after["accuracy"], folder,
    )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m export.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a folder with real/ and fake/")
    reviews.add_arguments(
        parser,
        "the review store (sqlite:///.build/reviews/reviews.db, postgresql+psycopg://...; "
        "its password from GATEWAY_REVIEWS_DATABASE_PASSWORD)",
        source,
    )
    parser.add_argument("--member", default="meso4")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    for name in ("frames", "epochs", "patience", "batch_size", "seed"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(TrainConfig, name)
        )
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--val-share", type=float, default=TrainConfig.val_share)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    config = TrainConfig(
        member=args.member,
        data=args.data.resolve() if args.data else None,
        reviews=args.reviews,
        reviews_owner=args.reviews_owner,
        frames=args.frames,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        val_share=args.val_share,
        seed=args.seed,
    )
    run(config, args.repository)


if __name__ == "__main__":
    sys.exit(main())
