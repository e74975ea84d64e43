"""The golden record: what the service answers for every shared clip and image.

A refactor or a speed change must not move these answers: `tests/test_golden.py` checks
them within `TOLERANCE`. An intended change re-records them in the same commit, with the
reason in its message:

    .venv/bin/python -m tests.golden        # starts a lite Triton + gateway, writes RECORD

The record holds the lite profile (the two MesoNets, the members that vote while
Xception and B7 have random weights), `FRAMES` frames per clip, SCRFD.
"""

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.clients.client import GatewayClient
from tests.stack import ASSETS, MEDIA, local_triton, measured_gateway

RECORD = Path(__file__).with_name("golden") / "lite.json"
FRAMES = 16
# Scores may move by float noise (batch composition in Triton, thread counts), nothing more.
TOLERANCE = 0.005
PROFILE = "lite"


def golden_media() -> list[Path]:
    """Every shared clip and every real/fake photo, in a fixed order."""
    videos = sorted((MEDIA / "videos").glob("*/*.mp4"))
    images = sorted((MEDIA / "images").glob("[rf]*/*.jpg"))
    return videos + images


def key(path: Path) -> str:
    return str(path.relative_to(MEDIA))


def summarise(answer: dict) -> dict:
    """The parts of an answer that the models and the pipeline decide."""
    return {
        "verdict": answer["verdict"],
        "reasons": [r["code"] for r in answer["reasons"]],
        "score": answer["score"],
        "raw_score": answer["raw_score"],
        "models": {m["name"]: m["score"] for m in answer["models"]},
        "tracks": [
            {"score": t["score"], "models": t["models"], "frames": len(t["frames"])}
            for t in answer["tracks"]
        ],
        "faces_per_frame": [len(f["faces"]) for f in answer["frames"]],
        # none of the shared files carries any (null): a reader that saw some would move it
        "content_credentials": answer.get("content_credentials"),
    }


def answers(url: str) -> Iterator[tuple[str, dict]]:
    with GatewayClient(url) as client:
        for path in golden_media():
            yield key(path), summarise(client.detect(path, frames=FRAMES))


def differences(expected: dict, got: dict, where: str = "") -> list[str]:
    """Where `got` differs from `expected`: numbers beyond TOLERANCE, anything else at all."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if expected.keys() != got.keys():
            return [f"{where}: keys {sorted(expected)} != {sorted(got)}"]
        return [d for k in expected for d in differences(expected[k], got[k], f"{where}.{k}")]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{where}: {len(expected)} items != {len(got)}"]
        pairs = enumerate(zip(expected, got, strict=True))
        return [d for n, (e, g) in pairs for d in differences(e, g, f"{where}[{n}]")]
    if isinstance(expected, float) and isinstance(got, float):
        return [] if abs(expected - got) <= TOLERANCE else [f"{where}: {expected:.4f} != {got:.4f}"]
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__)
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args(argv)
    # The face detectors come from ../shared/assets, as under `make test`.
    os.environ.setdefault("DEEPFAKE_ASSETS", str(ASSETS))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        triton = stack.enter_context(local_triton(PROFILE, tmp))
        record = dict(
            answers(stack.enter_context(measured_gateway(triton.settings.grpc_url, tmp)).url)
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(record)} answers to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
