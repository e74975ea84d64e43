"""`make compare` (python -m export.compare): a member's candidate version measured against
the version serving, before anyone promotes it.

    python -m export.compare --member meso4 [--reviews DATABASE_URL] [--data DIR]
        [--frames 4] [--bootstrap 1000] [--triton-url http://127.0.0.1:8000]

Both versions' ONNX graphs (members/<m>/<n>/model.onnx) score the same faces:
- the held-out reviews: the review store's files the candidate did not train on (its
  report.json's `train_files`; learnt from reviews, that is the split's validation files);
- the shared clips (DATA, default ../shared/media/videos; real/ and fake/), the largest face
  of FRAMES sampled frames per clip, cut by the pipeline as the gateway cuts them.

Figures per set, for each version and for the difference (candidate - serving): AUC, log
loss and expected calibration error on the faces, each with a 95% percentile bootstrap
interval whose draws are by file (by source for the shared clips: export/calibrate.py's
groups, metrics and bootstrap), the same draws for both versions; and the answers that would
flip: the files whose verdict (the mean of their faces' P(fake) against the gateway's
threshold) differs between the versions. They are written to
members/<m>/<n>/comparison.json and into the version's recorded provenance (the configs'
`version_<n>`), which `GET /api/models` shows; --triton-url reloads the member so it does.

A candidate with a lower AUC or a higher log loss on the shared clips than the serving
version is `worse_than_serving`: said in red here, and the command exits with status 3.
"""

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from export import calibrate, versions
from export.data import labelled_files
from preprocess.tensors import FAKE_AT

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
WORSE = 3  # the exit status of a candidate worse than the serving version
log = logging.getLogger("export.compare")


@dataclass(frozen=True)
class Scored:
    """One set's faces scored by both versions: per face, its file's index."""

    names: list[str]  # per file
    labels: np.ndarray  # per file, 0 real 1 fake
    file_of: np.ndarray  # per face
    serving: np.ndarray  # per face P(fake)
    candidate: np.ndarray


def auc(p: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
    "log_loss": calibrate.log_loss,
    "ece": calibrate.expected_calibration_error,
}
HIGHER_IS_BETTER = {"auc"}


def interval(values: Sequence[float]) -> list[float] | None:
    """The percentile interval of the draws where the metric is defined (an AUC needs both
    classes in the draw)."""
    kept = [v for v in values if not np.isnan(v)]
    if not kept:
        return None
    tail = (1 - calibrate.LEVEL) / 2 * 100
    return [round(float(v), 4) for v in np.percentile(kept, [tail, 100 - tail])]


def rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 4)


def figures(scored: Scored, groups: Sequence[int], draws: int, seed: int = 0) -> dict:
    """Each metric for both versions and their difference, with paired cluster-bootstrap
    intervals (`groups`: per file, the cluster its faces are drawn with)."""
    y = scored.labels[scored.file_of].astype(float)
    face_groups = [groups[f] for f in scored.file_of]
    samples = calibrate.resamples(face_groups, draws, seed)
    result = {}
    for name, metric in METRICS.items():
        per = {
            side: [metric(p[d], y[d]) for d in samples]
            for side, p in (("serving", scored.serving), ("candidate", scored.candidate))
        }
        serving, candidate = metric(scored.serving, y), metric(scored.candidate, y)
        result[name] = {
            "serving": rounded(serving),
            "serving_interval": interval(per["serving"]),
            "candidate": rounded(candidate),
            "candidate_interval": interval(per["candidate"]),
            "difference": rounded(candidate - serving),
            "difference_interval": interval(
                [c - s for c, s in zip(per["candidate"], per["serving"], strict=True)]
            ),
        }
    return result


def flips(scored: Scored, threshold: float = FAKE_AT) -> list[dict]:
    """The files whose verdict would change: each file's score is the mean of its faces'
    P(fake), cut at the gateway's threshold."""
    changed = []
    for index, name in enumerate(scored.names):
        mine = scored.file_of == index
        before, after = float(scored.serving[mine].mean()), float(scored.candidate[mine].mean())
        if (before >= threshold) != (after >= threshold):
            changed.append(
                {
                    "file": name,
                    "label": "fake" if scored.labels[index] else "real",
                    "serving": round(before, 4),
                    "candidate": round(after, 4),
                    "to": "fake" if after >= threshold else "real",
                }
            )
    return changed


def worse_on(shared: dict) -> list[str]:
    """The metrics on which the candidate is worse than the serving version (point values)."""
    worse = []
    for name in ("auc", "log_loss"):
        difference = shared[name]["difference"]
        if difference is None:
            continue
        if difference < 0 if name in HIGHER_IS_BETTER else difference > 0:
            worse.append(name)
    return worse


def summary(scored: Scored, groups: Sequence[int], draws: int) -> dict:
    return {
        "files": len(scored.names),
        "faces": len(scored.file_of),
        "figures": figures(scored, groups, draws),
        "flips": flips(scored),
    }


# -- scoring --------------------------------------------------------------------------


def scorer(repo: Path, member: str, version: int) -> Callable[[np.ndarray], np.ndarray]:
    """The version's graph on ONNX Runtime: uint8 faces in, P(fake) per face out."""
    import onnxruntime as ort

    path = repo / "members" / member / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def score(faces: np.ndarray) -> np.ndarray:
        out = [session.run(None, {name: faces[i : i + 16]})[0] for i in range(0, len(faces), 16)]
        return np.concatenate(out).reshape(-1).astype(float)

    return score


def scored(
    names: list[str],
    labels: list[int],
    faces: list[np.ndarray],
    versions_scores: tuple[Callable, Callable],
) -> Scored:
    kept = [i for i, f in enumerate(faces) if len(f)]  # a clip without a face: no figure
    stacked = np.concatenate([faces[i] for i in kept])
    return Scored(
        names=[names[i] for i in kept],
        labels=np.array([labels[i] for i in kept]),
        file_of=np.concatenate([np.full(len(faces[i]), n) for n, i in enumerate(kept)]),
        serving=versions_scores[0](stacked),
        candidate=versions_scores[1](stacked),
    )


def held_out_reviews(url: str, report: dict, both: tuple[Callable, Callable]) -> Scored | None:
    from export import reviews

    found = reviews.load(url, reviews.password())
    trained_on = set(report.get("train_files", []))
    files = [f for f in found.files if f.key not in trained_on]
    if not files:
        return None
    return scored([f.key for f in files], [f.label for f in files], [f.faces for f in files], both)


def shared_clips(data: Path, frames: int, both: tuple[Callable, Callable]) -> Scored:
    from export.train import faces_per_file

    files = labelled_files(data)
    faces = faces_per_file(files, frames)
    names = [str(p.relative_to(data)) for p, _ in files]
    return scored(names, [label for _, label in files], faces, both)


def compare(
    repo: Path,
    member: str,
    data: Path,
    reviews_url: str | None = None,
    frames: int = 4,
    draws: int = calibrate.BOOTSTRAP // 2,
) -> dict:
    serving = versions.serving(repo, member)
    candidate = versions.candidate(repo, member)
    if candidate is None:
        raise SystemExit(
            f"{member}: no candidate beside {serving}, serving "
            "(make train, or python -m export.versions candidate)"
        )
    report_path = repo / "members" / member / str(candidate) / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    both = (scorer(repo, member, serving), scorer(repo, member, candidate))
    clips = shared_clips(data, frames, both)
    shared = summary(clips, calibrate.source_groups([Path(n).name for n in clips.names]), draws)
    reviewed = held_out_reviews(reviews_url, report, both) if reviews_url else None
    worse = worse_on(shared["figures"])
    comparison = {
        "serving": serving,
        "candidate": candidate,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "threshold": FAKE_AT,
        "bootstrap": draws,
        "shared_clips": {"data": str(data), "frames": frames, **shared},
        "held_out_reviews": summary(reviewed, list(range(len(reviewed.names))), draws)
        if reviewed
        else None,
        "worse_than_serving": bool(worse),
        "worse_on": worse,
    }
    (repo / "members" / member / str(candidate) / "comparison.json").write_text(
        json.dumps(comparison, indent=1)
    )
    versions.update_version(repo, member, candidate, {"comparison": comparison})
    return comparison


def printed(comparison: dict, colour: bool) -> str:
    lines = [f"candidate {comparison['candidate']} against serving {comparison['serving']}"]
    for title in ("shared_clips", "held_out_reviews"):
        part = comparison[title]
        if part is None:
            lines.append(f"{title}: none")
            continue
        lines.append(f"{title}: {part['files']} files, {part['faces']} faces")
        for name, f in part["figures"].items():
            lines.append(
                f"  {name:9} serving {f['serving']} {f['serving_interval']}  candidate "
                f"{f['candidate']} {f['candidate_interval']}  difference {f['difference']} "
                f"{f['difference_interval']}"
            )
        for flip in part["flips"]:
            lines.append(
                f"  flips to {flip['to']}: {flip['file']} ({flip['label']}) "
                f"{flip['serving']} -> {flip['candidate']}"
            )
    if comparison["worse_than_serving"]:
        warning = f"WORSE THAN SERVING on the shared clips: {', '.join(comparison['worse_on'])}"
        lines.append(f"\033[1;31m{warning}\033[0m" if colour else warning)
    else:
        lines.append("not worse than serving on the shared clips")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--member", default="meso4")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--data", type=Path, default=calibrate.DEFAULT_DATA)
    parser.add_argument("--reviews", metavar="DATABASE_URL", help="the review store")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=calibrate.BOOTSTRAP // 2)
    parser.add_argument("--triton-url", help="reload the member on this Triton (HTTP)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    comparison = compare(
        args.repository, args.member, args.data, args.reviews, args.frames, args.bootstrap
    )
    print(printed(comparison, sys.stdout.isatty()))
    if args.triton_url:
        versions.reload(args.triton_url, args.repository, args.member)
    return WORSE if comparison["worse_than_serving"] else 0


if __name__ == "__main__":
    sys.exit(main())
