"""Command line: analyse a file through the gateway, or straight through Triton.

python -m gateway.programs.cli detect clip.mp4 [--url http://127.0.0.1:8080]
python -m gateway.programs.cli detect 'https://bucket.s3.amazonaws.com/clip.mp4?X-Amz-…'  (fetched
    by the gateway: nothing uploaded; several URLs: a job)
python -m gateway.programs.cli detect a.mp4 b.jpg FOLDER/ --out report  (job: report.csv, .json)
python -m gateway.programs.cli detect clip.mp4 --triton 127.0.0.1:8001
python -m gateway.programs.cli detect clip.mp4 --report clip-report.html  (or .pdf)
python -m gateway.programs.cli models [--url …]
"""

import argparse
import json
import sys
from pathlib import Path

import httpx

from gateway.clients.batch import run_batch
from gateway.clients.client import ClientError, DirectClient, GatewayClient, media_source
from preprocess.assets import AssetError


def credentials_lines(credentials: dict | None) -> list[str]:
    """The file's content credentials in a line, if it carries any."""
    if not credentials:
        return []
    signer = credentials["signer"] or "an unnamed signer"
    issuer = f" (issued by {credentials['issuer']})" if credentials["issuer"] else ""
    declares = ", declares AI generation" if credentials["ai_generated"] else ""
    failed = f": {', '.join(credentials['failures'])}" if credentials["failures"] else ""
    return [
        f"content credentials: {credentials['state']}{failed}, signed by {signer}{issuer}{declares}"
    ]


def summary(answer: dict) -> str:
    media = answer["media"]
    score = "n/a" if answer["score"] is None else f"{answer['score']:.3f}"
    lines = [
        f"{answer['filename']}: {answer['verdict'].upper()}  "
        f"P(fake) {score}  (threshold {answer['threshold']})",
        *(f"  why: {r['code']}: {r['message']}" for r in answer.get("reasons", [])),
        f"media: {media['kind']} {media['format']} {media['width']}x{media['height']}"
        + (f", {media['duration_s']:.1f} s @ {media['fps']:.2f} fps" if media["fps"] else ""),
        *credentials_lines(answer.get("content_credentials")),
        "",
        f"{'model':<20}{'score':>8}{'weight':>8}  trained",
    ]
    for m in answer["models"]:
        value = "-" if m["score"] is None else f"{m['score']:.3f}"
        flag = "yes" if m["trained"] else "NO (random weights, not voting)"
        lines.append(f"{m['name']:<20}{value:>8}{m['weight']:>8.2f}  {flag}")
        if m.get("trained_on"):
            lines.append(f"{'':<20}trained on {m['trained_on']}")
    for m in answer.get("skipped", []):
        lines.append(f"{m['name']:<20}{'-':>8}{'-':>8}  skipped: {m['reason']}")
    faces = sum(len(f["faces"]) for f in answer["frames"])
    lines += [
        "",
        f"faces: {faces} in {len(answer['frames'])} frames, {len(answer['tracks'])} track(s)",
    ]
    for t in answer["tracks"]:
        lines.append(
            f"  track {t['id']}: P(fake) {t['score']:.3f} over {len(t['frames'])} frames"
            + (" (decides)" if t.get("decisive") else "")
            + (" (short: cannot decide alone)" if t.get("short") else "")
        )
    explained = {(e["frame"], e["face"]) for e in answer.get("explanations", [])}
    if explained:
        frames = ", ".join(str(f) for f in sorted({f for f, _ in explained}))
        lines.append(f"explained: {len(explained)} decisive face(s), frames {frames}")
    timings = answer["timings_ms"]
    lines.append("time (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if v))
    lines += [f"note: {n}" for n in answer["notes"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.programs.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser("detect", help="analyse a video or image")
    detect.add_argument(
        "file",
        type=media_source,
        nargs="+",
        help="a file, or an https:// URL the gateway fetches (a presigned object-store URL); "
        "several, or a folder: a job (report)",
    )
    where = detect.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    where.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC, no gateway")
    detect.add_argument(
        "--models",
        help="comma-separated models instead of the voting ones; 'all': every model, also those "
        "that cannot vote",
    )
    detect.add_argument("--frames", type=int)
    detect.add_argument("--threshold", type=float)
    detect.add_argument("--json", action="store_true", help="print the raw JSON answer")
    detect.add_argument("--api-key", help="the gateway's API key, if it asks for one")
    detect.add_argument(
        "--out", type=Path, default=Path("detect-report"), help="job reports: OUT.csv, OUT.json"
    )
    detect.add_argument(
        "--explain", action="store_true", help="heatmaps of the decisive faces (in --json)"
    )
    detect.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the report: FILE.html, or FILE.pdf printed by Chromium (implies --explain)",
    )
    models = commands.add_parser("models", help="the models the service runs")
    models.add_argument("--url", default="http://127.0.0.1:8080")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "models":
            print(json.dumps(GatewayClient(args.url).models(), indent=2))
            return 0
        urls = [s for s in args.file if isinstance(s, str)]
        if args.triton and urls:
            print("error: URLs are fetched by the gateway: drop --triton", file=sys.stderr)
            return 2
        one = args.file[0]
        if not args.triton and (len(args.file) > 1 or (isinstance(one, Path) and one.is_dir())):
            options = {"models": args.models, "frames": args.frames, "threshold": args.threshold}
            return run_batch(args.url, args.file, args.out, api_key=args.api_key, **options)
        (source,) = args.file
        if isinstance(source, Path) and not source.is_file():
            print(f"error: no such file {source}", file=sys.stderr)
            return 2
        explain = args.explain or args.report is not None
        if isinstance(source, Path) and args.triton:
            client: DirectClient | GatewayClient = DirectClient(args.triton)
        else:
            client = GatewayClient(args.url)
        answer = client.detect(source, args.models, args.frames, args.threshold, explain)
        if args.report is not None:
            kind = "pdf" if args.report.suffix.lower() == ".pdf" else "html"
            args.report.write_bytes(client.report(answer, kind))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AssetError as exc:  # --triton: the face detector runs here
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:  # connection refused, DNS, timeouts
        print(f"error: cannot reach the service: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else summary(answer))
    if args.report is not None:
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
