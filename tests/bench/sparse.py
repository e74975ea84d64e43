"""python -m tests.bench.sparse: face detection on every n-th sampled frame, measured
against detection on every frame, over every shared clip (issue 18).

One lite Triton; the gateway's own Analyzer in this process, run once per schedule on each
clip with the service's defaults (32 frames). Per clip: the faces that every-frame detection
finds and the sparse run also has (IoU >= 0.5 in the same frame), the verdicts, the scores,
and this process's CPU seconds (decode, detection, crops; Triton is another process).
CPU time, not wall time, because the machine is shared. Writes results/sparse_detection.json.
"""

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.server.analysis.analysis import Analyzer
from gateway.server.options import options_for
from gateway.server.settings import Settings
from preprocess.sparse import SparseConfig
from preprocess.tracks import box_iou

ROOT = Path(__file__).resolve().parents[2]
MEDIA = ROOT.parent / "shared" / "media"
OUT = ROOT / "results" / "sparse_detection.json"


def kept_faces(full: dict, sparse: dict, min_iou: float = 0.5) -> tuple[int, int]:
    """(faces of `full`, of those a face of `sparse` covers in the same frame)."""
    total = kept = 0
    for a, b in zip(full["frames"], sparse["frames"], strict=True):
        total += len(a["faces"])
        if a["faces"] and b["faces"]:
            iou = box_iou([f["box"] for f in a["faces"]], [f["box"] for f in b["faces"]])
            kept += int((iou.max(axis=1) >= min_iou).sum())
    return total, kept


async def measure(url: str, schedules: list[int], frames: int, min_iou: float) -> dict:
    settings = Settings(triton_url=url, workers=2)
    clips = sorted((MEDIA / "videos").glob("*/*.mp4"))
    with ThreadPoolExecutor(settings.workers + 1) as executor:
        analyzer = Analyzer.from_settings(settings, executor)
        options = options_for(settings, frames=frames)
        await analyzer.analyze(clips[0], options)  # warm: sessions, channel
        per_clip = {}
        for clip in clips:
            runs = {}
            for every in schedules:
                analyzer.sparse = SparseConfig(every=every, min_iou=min_iou)
                cpu = time.process_time()
                answer = (await analyzer.analyze(clip, options)).model_dump()
                runs[every] = (answer, time.process_time() - cpu)
            full, full_cpu = runs[1]
            row = {"verdict_1": full["verdict"], "score_1": full["score"], "cpu_s_1": full_cpu}
            for every in schedules[1:]:
                answer, cpu = runs[every]
                total, kept = kept_faces(full, answer)
                row |= {
                    f"faces_kept_{every}": kept / total if total else 1.0,
                    f"verdict_{every}": answer["verdict"],
                    f"score_{every}": answer["score"],
                    f"cpu_s_{every}": cpu,
                }
            per_clip[f"{clip.parent.name}/{clip.name}"] = row
        await analyzer.server.close()
    summary = {}
    for every in schedules[1:]:
        rows = per_clip.values()
        diffs = [
            abs(r[f"score_{every}"] - r["score_1"])
            for r in rows
            if r["score_1"] is not None and r[f"score_{every}"] is not None
        ]
        summary[str(every)] = {
            "min_faces_kept": min(r[f"faces_kept_{every}"] for r in rows),
            "same_verdicts": sum(r[f"verdict_{every}"] == r["verdict_1"] for r in rows),
            "clips": len(per_clip),
            "max_score_diff": max(diffs, default=0.0),
            "cpu_s": sum(r[f"cpu_s_{every}"] for r in rows),
            "cpu_s_every_frame": sum(r["cpu_s_1"] for r in rows),
        }
    return {"frames": frames, "min_iou": min_iou, "summary": summary, "clips": per_clip}


def main(argv: list[str] | None = None) -> int:
    from tests.stack import local_triton

    parser = argparse.ArgumentParser(prog="python -m tests.bench.sparse", description=__doc__)
    parser.add_argument("--every", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--min-iou", type=float, default=SparseConfig().min_iou)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("DEEPFAKE_ASSETS", str(ROOT.parent / "shared" / "assets"))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        triton = stack.enter_context(local_triton("lite", tmp))
        result = asyncio.run(
            measure(triton.settings.grpc_url, [1, *args.every], args.frames, args.min_iou)
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
