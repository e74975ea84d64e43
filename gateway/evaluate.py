"""`make eval`: every clip of ../shared/media/videos through the running gateway.

Prints a per-clip table and the ROC AUC of the video scores against the
folder labels (real/ fake/). Nothing is tuned on these clips: it reports what
the models do. The raw answers go to results/eval.json.
"""

import argparse
import json
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from gateway.client import ClientError, GatewayClient

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media" / "videos"
LABELS = {"real": 0, "fake": 1}


def clips(media: Path) -> list[tuple[str, Path]]:
    return [(label, p) for label in LABELS for p in sorted((media / label).glob("*.mp4"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.evaluate")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--media", type=Path, default=MEDIA)
    parser.add_argument("--models", help="comma-separated models instead of the ensemble")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "eval.json")
    args = parser.parse_args(argv)
    client = GatewayClient(args.url)
    rows, answers = [], {}
    print(f"{'clip':<58}{'label':>6}{'score':>8}{'verdict':>9}{'faces':>7}{'s':>7}")
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
            f"{path.name[:57]:<58}{label:>6}{shown:>8}{answer['verdict']:>9}{faces:>7}"
            f"{seconds:>7.1f}"
        )
        rows.append((LABELS[label], score, answer["verdict"], seconds))
        answers[f"{label}/{path.name}"] = answer
    scored = [(y, s) for y, s, _, _ in rows if s is not None]
    labels = {y for y, _ in scored}
    auc = roc_auc_score(*zip(*scored, strict=True)) if len(labels) == 2 else float("nan")
    correct = sum((v == "fake") == bool(y) for y, _, v, _ in rows if v != "no_face")
    models = answers and next(iter(answers.values()))["models"]
    voting = ", ".join(m["name"] for m in models if m["voting"]) if models else "?"
    print(
        f"\n{len(rows)} clips, ROC AUC {auc:.3f}, accuracy at threshold "
        f"{correct}/{len(scored)}, voting: {voting}, median "
        f"{sorted(r[3] for r in rows)[len(rows) // 2]:.1f} s per clip"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"auc": auc, "answers": answers}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
