"""`make calibrate` (python -m export.calibrate): the calibration of the ensemble's video
score, fit on labelled clips and written into model_repository/calibration.toml.

    make run PROFILE=lite                # in one terminal: the profile to calibrate
    make calibrate [DATA=folder]         # python -m export.calibrate --url ... --data ...

DATA is laid out as `make train` takes it (`real/`, `fake/`; default the shared clips).
Every clip goes through the running gateway (preprocess -> gateway -> Triton, the one
judging path) with the default models; its `raw_score` is the vote's video score. Then:

- the fit: Platt scaling, P(fake) = sigmoid(a logit(raw) + b), with Platt's smoothed
  targets and a > 0 (two parameters; `--method temperature`: one, b = 0). Isotonic
  regression is refused: it needs far more clips than a shared folder holds.
- the figures, out of sample: leave one source out (source_groups: clips of one source
  video or person are never on both sides), each clip calibrated by the fit on the other
  sources; log loss, Brier score, expected calibration error and accuracy at the
  threshold, raw and calibrated, each with a 95% bootstrap interval over the sources.
- the uncertain band (uncertain_band): the narrowest half-width around the threshold
  outside which the out-of-sample calibrated verdicts reach `--target` accuracy.

The profile's table (the gateway's GET /api/models says which profile it serves) is
written with its provenance (data, sha256, n, method, date) and the profile's vote configs
regenerated (export/profiles.py), so a restarted Triton serves it and the gateway reads it.
Per clip raw and out-of-sample scores, and a reliability diagram: results/calibration/.
"""

import argparse
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize

from export import reviews
from export.data import data_digest, labelled_files
from preprocess.calibration import Calibration, logit, vote_key
from preprocess.tensors import FAKE_AT

if TYPE_CHECKING:
    from gateway.clients.client import GatewayClient

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
CALIBRATION_FILE = "calibration.toml"
SOURCES_FILE = "sources.toml"  # optional, in DATA: [sources] "fake/x.mp4" = "person"
DEFAULT_DATA = ROOT.parent / "shared" / "media" / "videos"
ECE_BINS = 5  # equal-width bins: with 19 clips, ten bins would hold one or two each
BOOTSTRAP = 2000
LEVEL = 0.95
TARGET = 0.9  # accuracy outside the uncertain band
HEADER = """\
# The calibration of each profile's video score: P(fake) = sigmoid(a logit(raw) + b),
# written by `make calibrate` (export/calibrate.py); export copies each profile's table
# into <profile>/deepfake_vote/config.pbtxt (parameter `calibration`), where the gateway
# reads it. `vote` is the vote it was fit on: a different vote leaves it out.
# Figures: raw vs leave-one-source-out calibrated, 95% bootstrap intervals over sources.
# model_repository/README.md (Calibration) explains every field.
"""


@dataclass(frozen=True)
class Clip:
    name: str  # its path under DATA
    label: int  # 1 fake, 0 real
    raw: float  # the gateway's raw_score


# -- sources: which clips share a source video or person ------------------------------

FFPP_ID = re.compile(r"(?<!\d)\d{3}(?!\d)")


def source_keys(name: str) -> set[str]:
    """What a clip's name says of its sources. FaceForensics++ names carry the ids of the
    target and the source video (`Deepfakes_519_515`, `original_519`); a `_fake` suffix
    names the real clip it was made from (cvprw2019_demo_fake); every SadTalker clip (its
    examples: driven stills, and the HDTF clips it ships) is one source; else the name."""
    stem = Path(name).stem.lower()
    if stem.startswith("ffpp"):
        return {f"ffpp:{i}" for i in FFPP_ID.findall(stem)} or {stem}
    if "sadtalker" in stem:
        return {"sadtalker"}
    return {stem.removesuffix("_fake")}


def source_groups(names: Sequence[str], named: Mapping[str, str] | None = None) -> list[int]:
    """A group number per clip: clips sharing any source key (source_keys, or the source
    DATA/sources.toml names for it) are one group, transitively (union-find)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = [{f"named:{named[n]}"} if named and n in named else source_keys(n) for n in names]
    for clip_keys in keys:
        first, *rest = sorted(clip_keys)
        for key in rest:
            parent[root(key)] = root(first)
    roots = [root(min(k)) for k in keys]
    numbers = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return [numbers[r] for r in roots]


def read_sources(data: Path) -> dict[str, str]:
    path = data / SOURCES_FILE
    return dict(tomllib.loads(path.read_text()).get("sources", {})) if path.exists() else {}


def leave_one_source_out(groups: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices per source group: each group tested on a fit of the others."""
    groups_array = np.asarray(groups)
    return [
        (np.flatnonzero(groups_array != g), np.flatnonzero(groups_array == g))
        for g in dict.fromkeys(groups)
    ]


# -- the fit ------------------------------------------------------------------------


def fit(raw: np.ndarray, labels: np.ndarray, method: str = "platt") -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a logit(raw) + b) against Platt's smoothed
    targets ((n+ + 1)/(n+ + 2) for fakes, 1/(n- + 2) for reals: no clip is taken as
    certain, so a few clips cannot push the map to 0 or 1); a >= 0.001 (monotone)."""
    if method not in ("platt", "temperature"):
        raise SystemExit(f"method {method!r}: platt or temperature (isotonic needs far more data)")
    x = np.array([logit(r) for r in raw])
    fakes = int(labels.sum())
    reals = len(labels) - fakes
    target = np.where(labels == 1, (fakes + 1) / (fakes + 2), 1 / (reals + 2))

    def loss(params: np.ndarray) -> float:
        z = params[0] * x + (params[1] if method == "platt" else 0.0)
        # log(1 + e^z) - t z: the binary cross-entropy in z, stable for large |z|
        return float(np.mean(np.logaddexp(0.0, z) - target * z))

    start = np.array([1.0, 0.0] if method == "platt" else [1.0])
    bounds = [(1e-3, None)] + ([(None, None)] if method == "platt" else [])
    result = minimize(loss, start, method="L-BFGS-B", bounds=bounds)
    a = float(result.x[0])
    return a, float(result.x[1]) if method == "platt" else 0.0


def mapping(method: str, a: float, b: float) -> Callable[[np.ndarray], np.ndarray]:
    """The gateway's own map (preprocess.calibration.Calibration.apply), over an array."""
    calibration = Calibration(method, a, b, vote="", uncertain_band=0.0)
    return lambda raw: np.array([calibration.apply(r) for r in raw])


def out_of_sample(
    raw: np.ndarray, labels: np.ndarray, groups: Sequence[int], method: str
) -> np.ndarray:
    """Every clip calibrated by the fit on the other sources (leave one source out)."""
    calibrated = np.empty(len(raw))
    for train, test in leave_one_source_out(groups):
        calibrated[test] = mapping(method, *fit(raw[train], labels[train], method))(raw[test])
    return calibrated


# -- the figures --------------------------------------------------------------------


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of |mean P(fake) - share of fakes|, weighted by the bin's
    share of the clips."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(p[which == k].mean() - y[which == k].mean()) * np.mean(which == k)
            for k in range(bins)
            if np.any(which == k)
        )
    )


def accuracy(p: np.ndarray, y: np.ndarray, threshold: float = FAKE_AT) -> float:
    return float(np.mean((p >= threshold) == (y == 1)))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """The mean negative log-likelihood of the labels (scikit-learn's, without its checks:
    the bootstrap calls it thousands of times)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "log_loss": log_loss,
    "brier": brier,
    "ece": expected_calibration_error,
    "accuracy": accuracy,
}


def resamples(groups: Sequence[int], n: int = BOOTSTRAP, seed: int = 0) -> list[np.ndarray]:
    """Bootstrap samples of clip indices, drawn by source (a cluster bootstrap: the clips
    of one source are not independent), the same draws for every figure."""
    rng = np.random.default_rng(seed)
    members = {g: np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)}
    names = list(members)
    return [
        np.concatenate([members[names[i]] for i in rng.integers(0, len(names), len(names))])
        for _ in range(n)
    ]


def interval(
    metric: Callable[[np.ndarray, np.ndarray], float],
    p: np.ndarray,
    y: np.ndarray,
    draws: Sequence[np.ndarray],
    level: float = LEVEL,
) -> list[float]:
    """The percentile bootstrap interval of metric(p, y)."""
    values = [metric(p[d], y[d]) for d in draws]
    tail = (1 - level) / 2 * 100
    return [round(float(v), 4) for v in np.percentile(values, [tail, 100 - tail])]


def figures(
    raw: np.ndarray, calibrated: np.ndarray, y: np.ndarray, groups: Sequence[int], draws: int
) -> dict[str, dict[str, float | list[float]]]:
    samples = resamples(groups, draws)
    return {
        name: {
            "raw": round(metric(raw, y), 4),
            "raw_interval": interval(metric, raw, y, samples),
            "calibrated": round(metric(calibrated, y), 4),
            "calibrated_interval": interval(metric, calibrated, y, samples),
        }
        for name, metric in METRICS.items()
    }


def uncertain_band(
    p: np.ndarray, y: np.ndarray, threshold: float = FAKE_AT, target: float = TARGET
) -> float:
    """The narrowest half-width w such that the clips with |p - threshold| > w (outside the
    band [threshold - w, threshold + w]) are judged right at least `target` of the time;
    if none is, the widest (every clip inside). Rounded up to 4 decimals, so the clip that
    set it stays inside."""
    distance = np.abs(p - threshold)
    right = (p >= threshold) == (y == 1)
    for w in [0.0, *sorted(set(distance.tolist()))]:
        outside = distance > w
        if not outside.any() or right[outside].mean() >= target:
            return math.ceil(w * 1e4) / 1e4
    return math.ceil(float(distance.max()) * 1e4) / 1e4  # pragma: no cover — loop returns


# -- the clips' raw scores, through the running gateway --------------------------------


def raw_scores(client: "GatewayClient", data: Path) -> tuple[list[Clip], dict, list[str]]:
    """Each clip's raw video score from the gateway, its /api/models and /api (the profile,
    the vote, the frames), and the clips with no face (no score: left out)."""
    judged = []
    for path, label in labelled_files(data):
        answer = client.detect(path)
        raw = answer.get("raw_score", answer["score"])
        judged.append((str(path.relative_to(data)), label, raw, answer["models"]))
    return samples(client, judged)


def reviewed_scores(
    client: "GatewayClient", url: str, owner: str | None
) -> tuple[list[Clip], dict, list[str], dict[str, str]]:
    """The review store's labelled answers as clips (export/reviews.py): each review's raw
    score as its answer gave it, labelled as the reviewer said; and each review's file
    (sha256), its source: one file's reviews are one group."""
    found = reviews.scores(url, reviews.password(), owner)
    clips, facts, faceless = samples(
        client, [(r.review_id, r.label, r.raw, r.models) for r in found]
    )
    return clips, facts, faceless, {r.review_id: r.key for r in found}


def samples(
    client: "GatewayClient", judged: Sequence[tuple[str, int, float | None, list[dict]]]
) -> tuple[list[Clip], dict, list[str]]:
    """Clips of (name, label, raw score, the answer's models), refused unless one vote of
    one set of versions judged them all; with the profile, the vote and the frames."""
    clips, faceless, votes, versions = [], [], set(), set()
    models = client.models()
    service = client.http.get("/api").json()
    for name, label, raw, answered in judged:
        if raw is None:
            faceless.append(name)
            continue
        weights = {m["name"]: m["weight"] for m in answered}
        groups = {m["name"]: m.get("group") or m["name"] for m in answered}
        votes.add(vote_key(models["vote_rule"], weights, groups))
        versions.add(tuple((m["name"], m["version"]) for m in answered if m["voting"]))
        clips.append(Clip(name, label, float(raw)))
        print(f"{name:<64}{label:>3}{raw:>8.3f}", flush=True)
    if len(votes) != 1 or len(versions) != 1:
        raise SystemExit(f"the clips were judged by votes {votes}, versions {versions}: not one")
    facts = {
        "profile": models["profile"],
        "vote": votes.pop(),
        "versions": dict(versions.pop()),
        "frames": service["frames"],
    }
    return clips, facts, faceless


# -- what is written ----------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    method: str = "platt"
    threshold: float = FAKE_AT
    target: float = TARGET
    draws: int = BOOTSTRAP


def calibration_of(
    clips: Sequence[Clip],
    groups: Sequence[int],
    vote: str,
    versions: Mapping[str, str],
    settings: Settings,
    provenance: Mapping[str, str | int | float],
) -> tuple[Calibration, np.ndarray]:
    """The calibration fit on every clip, its out-of-sample figures and band; and each
    clip's out-of-sample calibrated score."""
    raw = np.array([c.raw for c in clips])
    y = np.array([c.label for c in clips])
    calibrated = out_of_sample(raw, y, groups, settings.method)
    a, b = fit(raw, y, settings.method)
    band = uncertain_band(calibrated, y, settings.threshold, settings.target)
    outside = np.abs(calibrated - settings.threshold) > band
    calibration = Calibration(
        method=settings.method,
        a=round(a, 6),
        b=round(b, 6),
        vote=vote,
        uncertain_band=band,
        versions=dict(versions),
        provenance={
            **provenance,
            "n": len(clips),
            "fake": int(y.sum()),
            "real": int(len(y) - y.sum()),
            "sources": len(set(groups)),
            "prior_fake": round(float(y.mean()), 4),
            "validation": "leave one source out (export/calibrate.py source_groups)",
            "bootstrap": f"{settings.draws} resamples of the sources, "
            f"{LEVEL:.0%} percentile intervals",
            "ece_bins": ECE_BINS,
            "threshold": settings.threshold,
            "uncertain_target": settings.target,
            "uncertain_rule": "the narrowest half-width outside which the out-of-sample "
            f"calibrated verdicts are right at least {settings.target:.0%} of the time",
            "outside_band": int(outside.sum()),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        figures=figures(raw, calibrated, y, groups, settings.draws),
    )
    return calibration, calibrated


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def toml_table(name: str, table: Mapping) -> list[str]:
    """One table (its values, then its sub-tables, dotted) as TOML lines, each table followed
    by a blank line; a table holding only tables is left implicit."""
    values = [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    lines = [f"[{name}]", *values, ""] if values else []
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += toml_table(f"{name}.{key}", sub)
    return lines


def write_calibration(repo: Path, profile: str, calibration: Calibration) -> Path:
    """The profile's table into calibration.toml (the others kept), then the profile's vote
    configs regenerated from it (export/profiles.py)."""
    from export import members, profiles  # the configs' writer: imports the exporters

    path = repo / CALIBRATION_FILE
    tables = tomllib.loads(path.read_text()) if path.exists() else {}
    tables[profile] = json.loads(calibration.to_json())
    body = [line for p in sorted(tables) for line in toml_table(p, tables[p])]
    path.write_text(HEADER + "\n" + "\n".join(body).rstrip("\n") + "\n")
    profiles.write_profile(repo, profile, members.discover(repo))
    return path


def reliability_diagram(path: Path, series: Mapping[str, np.ndarray], y: np.ndarray) -> None:
    """Each series' mean P(fake) against the share of fakes per equal-width bin (ECE_BINS),
    a dot's area its clips, and the diagonal a calibrated score lies on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated: on the diagonal")
    for name, p in series.items():
        which = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
        bins = [k for k in range(ECE_BINS) if np.any(which == k)]
        xs = [p[which == k].mean() for k in bins]
        ys = [y[which == k].mean() for k in bins]
        sizes = [40 * np.sum(which == k) for k in bins]
        ax.plot(xs, ys, "-", alpha=0.6)
        ax.scatter(xs, ys, s=sizes, alpha=0.6, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean P(fake) in the bin", ylabel="share of fakes")
    ax.set_title(f"reliability, {len(y)} clips ({ECE_BINS} bins): intervals are wide")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_figures(calibration: Calibration) -> None:
    print(f"\n{'figure':<10}{'raw':>8}{'95% interval':>18}{'calibrated':>12}{'95% interval':>18}")
    for name, f in calibration.figures.items():
        raw, cal = f["raw_interval"], f["calibrated_interval"]
        print(
            f"{name:<10}{f['raw']:>8.3f}{f'[{raw[0]:.3f}, {raw[1]:.3f}]':>18}"
            f"{f['calibrated']:>12.3f}{f'[{cal[0]:.3f}, {cal[1]:.3f}]':>18}"
        )
    print(
        f"{calibration.method}: a={calibration.a:.4f} b={calibration.b:.4f}; uncertain band "
        f"+-{calibration.uncertain_band:.4f}; {calibration.caveat}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.calibrate", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the running gateway")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real/ and fake/")
    reviews.add_arguments(
        parser,
        "fit on the review store's labelled answers instead of DATA (their raw scores as "
        "answered; the gateway at --url says the profile and vote)",
    )
    parser.add_argument("--method", choices=("platt", "temperature"), default="platt")
    parser.add_argument("--target", type=float, default=TARGET, help="accuracy outside the band")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="resamples")
    parser.add_argument("--repo", type=Path, default=REPOSITORY)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "calibration")
    args = parser.parse_args(argv)
    from gateway.clients.client import GatewayClient

    with GatewayClient(args.url) as client:
        if args.reviews:
            found = reviewed_scores(client, args.reviews, args.reviews_owner)
            clips, facts, faceless, files = found
        else:
            clips, facts, faceless = raw_scores(client, args.data)
    names = [c.name for c in clips]
    if args.reviews:
        groups = source_groups(names, files)
        learnt = {c.name: "fake" if c.label else "real" for c in clips}
        data = {"data": "reviews", "data_sha256": reviews.reviews_digest(learnt)}
    else:
        groups = source_groups(names, read_sources(args.data))
        data = {
            "data": os.path.relpath(args.data.resolve(), ROOT),
            "data_sha256": data_digest(labelled_files(args.data), args.data),
        }
    provenance = {
        **data,
        "frames": facts["frames"],
        "no_face": ", ".join(faceless),
        "method": args.method,
    }
    settings = Settings(args.method, FAKE_AT, args.target, args.bootstrap)
    calibration, calibrated = calibration_of(
        clips, groups, facts["vote"], facts["versions"], settings, provenance
    )
    profile = facts["profile"]
    written = write_calibration(args.repo, profile, calibration)
    print_figures(calibration)
    y = np.array([c.label for c in clips])
    raw = np.array([c.raw for c in clips])
    reliability_diagram(
        args.out / f"{profile}.png", {"raw": raw, "calibrated, out of sample": calibrated}, y
    )
    rows = [
        {"clip": c.name, "label": c.label, "source": g, "raw": c.raw, "calibrated": float(p)}
        for c, g, p in zip(clips, groups, calibrated, strict=True)
    ]
    (args.out / f"{profile}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{written} [{profile}] written; {args.out / profile}.png; restart Triton to serve it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
