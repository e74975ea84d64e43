"""`make eval`: every clip of ../shared/media/videos through the running gateway.

Prints a per-clip table and the ROC AUC of the video scores against the
folder labels (real/ fake/). Nothing is tuned on these clips: it reports what
the models do. Then, from the same answers (each track's per-model scores),
every member alone and every vote rule (the weighted mean of the voting
members, of each specialist group, the maximum over groups) with and without
the short-track rule: ROC AUC, clips right at the threshold, and which
manipulation types (from the clip names) each catches. Last, the calibration's
figures (raw, served, calibrated out of sample) and a reliability diagram,
results/reliability.png. The raw answers and these figures go to results/eval.json.
"""

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
from sklearn.metrics import roc_auc_score

from gateway.clients.client import ClientError, GatewayClient
from gateway.server import Strategy, TrackScore, decisive_track, vote
from gateway.server.schemas import Verdict
from preprocess.tensors import is_fake

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT.parent / "shared" / "media" / "videos"
LABELS = {"real": 0, "fake": 1}
VERDICTS = get_args(Verdict)


# What a clip's name says it is (../shared/media/README: the clips' sources).
MANIPULATIONS = {
    "face2face": "Face2Face",
    "faceswap": "FaceSwap",
    "neuraltextures": "NeuralTextures",
    "deepfakes": "Deepfakes",
    "dfdc": "DFDC",
    "sadtalker": "SadTalker",
}


def manipulation(clip: str) -> str:
    name = clip.lower()
    return next((label for key, label in MANIPULATIONS.items() if key in name), "other")


def video_score(answer: dict, score_of: Callable[[dict], float], min_share: float) -> float | None:
    """The clip's score when each track scores `score_of(track)`: the gateway's own rule
    (aggregate.decisive_track) on the answer's tracks."""
    tracks = [TrackScore(i, t["frames"], {}, score_of(t)) for i, t in enumerate(answer["tracks"])]
    if not tracks:
        return None
    return decisive_track(tracks, len(answer["frames"]), min_share).score


def judged(answers: dict[str, dict], score_of: Callable[[dict], float], min_share: float) -> dict:
    """AUC, clips right at the default threshold (FAKE_AT) and fakes caught per manipulation,
    for one way of scoring."""
    rows = [
        (clip, LABELS[clip.split("/")[0]], video_score(a, score_of, min_share))
        for clip, a in answers.items()
    ]
    scored = [(y, s) for _, y, s in rows if s is not None]
    auc = roc_auc_score(*zip(*scored, strict=True)) if len({y for y, _ in scored}) == 2 else None
    caught: dict[str, list[int]] = {}
    for clip, y, s in rows:
        if y:
            tally = caught.setdefault(manipulation(clip), [0, 0])
            tally[0] += int(s is not None and is_fake(s))
            tally[1] += 1
    return {
        "auc": None if auc is None else float(auc),
        "correct": sum(int((s is not None and is_fake(s)) == bool(y)) for _, y, s in rows),
        "clips": len(rows),
        "caught": {k: f"{n}/{of}" for k, (n, of) in sorted(caught.items())},
        "scores": {clip: None if s is None else float(s) for clip, _, s in rows},
    }


def compare(answers: dict[str, dict], min_share: float) -> dict[str, dict]:
    """Every member alone, then each vote rule over the trained members."""
    models = next(iter(answers.values()))["models"]
    trained = [m["name"] for m in models if m["trained"]]
    groups = {m["name"]: m.get("group") or m["name"] for m in models}
    ways: dict[str, Callable[[dict], float]] = {m: (lambda t, m=m: t["models"][m]) for m in trained}
    for group in dict.fromkeys(groups[m] for m in trained):
        members = [m for m in trained if groups[m] == group]
        if len(members) > 1:
            ways[f"mean of {group}"] = lambda t, ms=members: vote(
                {m: t["models"][m] for m in ms}, dict.fromkeys(ms, 1.0)
            )
    ways["mean of all"] = lambda t: vote(
        {m: t["models"][m] for m in trained}, dict.fromkeys(trained, 1.0)
    )
    ways["max of groups"] = lambda t: vote(
        {m: t["models"][m] for m in trained}, dict.fromkeys(trained, 1.0), groups
    )
    return {name: judged(answers, way, min_share) for name, way in ways.items()}


def print_comparison(figures: dict[str, dict[str, dict]]) -> None:
    for rule, table in figures.items():
        print(f"\n{rule}")
        print(f"{'scoring':<24}{'AUC':>7}{'right':>8}  fakes caught by type")
        for name, f in table.items():
            auc = "-" if f["auc"] is None else f"{f['auc']:.3f}"
            caught = ", ".join(f"{k} {v}" for k, v in f["caught"].items())
            print(f"{name:<24}{auc:>7}{f['correct']:>5}/{f['clips']:<2}  {caught}")


def print_short_track_effect(strict: dict[str, dict], loose: dict[str, dict]) -> None:
    """Every clip whose score moves when short tracks may not decide alone."""
    print("\nshort-track rule, clips whose score moves (every track may decide -> not):")
    moved = False
    for way, table in strict.items():
        for clip, score in table["scores"].items():
            before = loose[way]["scores"][clip]
            if score is not None and before is not None and abs(score - before) > 1e-9:
                print(f"  {way:<22}{clip:<58}{before:.3f} -> {score:.3f}")
                moved = True
    if not moved:
        print("  none")


def reliability(answers: dict[str, dict], png: Path) -> dict:
    """The raw video scores, the served ones (calibrated by the gateway, in sample when the
    calibration was fit on these clips) and the raw ones calibrated out of sample (leave
    one source out, export/calibrate.py): their figures, and the reliability diagram."""
    from export import calibrate  # the fit and the figures `make calibrate` writes

    rows = [
        (clip, LABELS[clip.split("/")[0]], a.get("raw_score", a["score"]), a["score"])
        for clip, a in answers.items()
        if a["score"] is not None
    ]
    if len({y for _, y, _, _ in rows}) < 2:
        return {}
    y = np.array([r[1] for r in rows])
    groups = calibrate.source_groups([r[0] for r in rows])
    raw, served = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    series = {
        "raw": raw,
        "served by the gateway": served,
        "calibrated out of sample": calibrate.out_of_sample(raw, y, groups, "platt"),
    }
    calibrate.reliability_diagram(png, series, y)
    draws = calibrate.resamples(groups)
    figures = {
        name: {
            metric: [round(f(p, y), 4), calibrate.interval(f, p, y, draws)]
            for metric, f in calibrate.METRICS.items()
        }
        for name, p in series.items()
    }
    print(f"\nreliability diagram: {png}; {len(rows)} clips, {len(set(groups))} sources")
    for name, table in figures.items():
        shown = "  ".join(f"{m} {v:.3f} [{lo:.3f}, {hi:.3f}]" for m, (v, (lo, hi)) in table.items())
        print(f"{name:<26}{shown}")
    return figures


def clips(media: Path) -> list[tuple[str, Path]]:
    return [(label, p) for label in LABELS for p in sorted((media / label).glob("*.mp4"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.programs.evaluate")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--media", type=Path, default=MEDIA)
    parser.add_argument("--models", help="comma-separated models instead of the ensemble")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "eval.json")
    args = parser.parse_args(argv)
    client = GatewayClient(args.url)
    rows, answers = [], {}
    print(f"{'clip':<58}{'label':>6}{'score':>8}{'verdict':>11}{'faces':>7}{'s':>7}  why")
    for label, path in clips(args.media):
        start = time.perf_counter()
        try:
            answer = client.detect(path, models=args.models)
        except ClientError as exc:
            print(f"{path.name:<58}{label:>6}  error {exc}")
            continue
        seconds = time.perf_counter() - start
        faces = sum(len(f["faces"]) for f in answer["frames"])
        score = answer["score"]
        shown = "-" if score is None else f"{score:.3f}"
        print(
            f"{path.name[:57]:<58}{label:>6}{shown:>8}{answer['verdict']:>11}{faces:>7}"
            f"{seconds:>7.1f}  {' '.join(r['code'] for r in answer.get('reasons', []))}"
        )
        rows.append((LABELS[label], score, answer["verdict"], seconds))
        answers[f"{label}/{path.name}"] = answer
    scored = [(y, s) for y, s, _, _ in rows if s is not None]
    labels = {y for y, _ in scored}
    auc = roc_auc_score(*zip(*scored, strict=True)) if len(labels) == 2 else float("nan")
    # Accuracy over the clips judged fake or real; uncertain and no_face ones are counted apart.
    decided = [(y, v) for y, _, v, _ in rows if v in ("fake", "real")]
    correct = sum((v == "fake") == bool(y) for y, v in decided)
    counts = Counter(v for _, _, v, _ in rows)
    models = answers and next(iter(answers.values()))["models"]
    voting = ", ".join(m["name"] for m in models if m["voting"]) if models else "?"
    print(
        f"\n{len(rows)} clips, ROC AUC {auc:.3f}, accuracy at threshold "
        f"{correct}/{len(decided)} judged fake or real, voting: {voting}, median "
        f"{sorted(r[3] for r in rows)[len(rows) // 2]:.1f} s per clip"
    )
    print("verdicts: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS))
    figures = {}
    if answers and any(a["tracks"] for a in answers.values()):
        share = Strategy().min_track_share
        figures = {
            f"tracks under {share:.0%} of the frames cannot decide": compare(answers, share),
            "every track may decide": compare(answers, 0.0),
        }
        print_comparison(figures)
        print_short_track_effect(*figures.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    verdicts = {v: counts[v] for v in VERDICTS}
    calibration = reliability(answers, args.out.with_name("reliability.png"))
    args.out.write_text(
        json.dumps(
            {
                "auc": auc,
                "verdicts": verdicts,
                "answers": answers,
                "comparison": figures,
                "calibration": calibration,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
