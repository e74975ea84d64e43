"""`python -m gateway.programs.cli detect A B C` or `detect FOLDER`: many files as jobs, a progress
bar, then a CSV and a JSON report (file, sha256, verdict, score, per-model scores, faces,
error). The exit status is 1 when any file failed."""

import csv
import hashlib
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from tqdm import tqdm

from gateway.clients.client import TIMEOUT, raise_for_error

POLL_S = 0.5


def collect(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the folders named (hidden ones skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder {path}")
    return files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class JobsClient:
    """The /api/jobs routes over HTTP."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=TIMEOUT, headers=headers)

    def submit(self, files: list[Path], **options: object) -> dict:
        params = {k: v for k, v in options.items() if v is not None}
        with ExitStack() as stack:  # httpx streams each open file: none is read into memory
            parts = [("file", (p.name, stack.enter_context(p.open("rb")))) for p in files]
            response = self.http.post("/api/jobs", files=parts, params=params)
        raise_for_error(response)
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/api/jobs/{job_id}")
        raise_for_error(response)
        return response.json()

    def close(self) -> None:
        self.http.close()


def run_batch(
    url: str,
    paths: list[Path],
    out: Path,
    *,
    models: str | None = None,
    frames: int | None = None,
    threshold: float | None = None,
    api_key: str | None = None,
    job_files: int = 50,
) -> int:
    files = collect(paths)
    if not files:
        print("error: no files to analyse", file=sys.stderr)
        return 2
    client = JobsClient(url, api_key)
    options = {"models": models, "frames": frames, "threshold": threshold}
    try:
        # The gateway caps a job's files (GATEWAY_JOBS_MAX_FILES): a long list is several jobs.
        batches = [files[i : i + job_files] for i in range(0, len(files), job_files)]
        jobs = [(batch, client.submit(batch, **options)["id"]) for batch in batches]
        finished = wait_all(client, [job_id for _, job_id in jobs], len(files))
    finally:
        client.close()
    rows = [
        row(path, item)
        for (batch, job_id) in jobs
        for path, item in zip(batch, finished[job_id]["items"], strict=True)
    ]
    write_reports(rows, out)
    failed = [r for r in rows if r["error"]]
    print(
        f"{len(rows) - len(failed)} analysed, {len(failed)} failed; "
        f"reports: {out.with_suffix('.csv')} {out.with_suffix('.json')}"
    )
    return 1 if failed else 0


def wait_all(client: JobsClient, job_ids: list[str], total: int) -> dict[str, dict]:
    finished: dict[str, dict] = {}
    with tqdm(total=total, unit="file", desc="analysing") as bar:
        while len(finished) < len(job_ids):
            done = 0
            for job_id in job_ids:
                job = finished.get(job_id) or client.job(job_id)
                if job["finished"] is not None:
                    finished[job_id] = job
                done += job["progress"]["finished"]
            bar.update(done - bar.n)
            if len(finished) < len(job_ids):
                time.sleep(POLL_S)
    return finished


def row(path: Path, item: dict) -> dict:
    result, error = item.get("result"), item.get("error")
    if error is None and item["status"] != "done":
        error = {"code": item["status"], "message": f"the item was {item['status']}"}
    return {
        "file": str(path),
        "sha256": sha256(path),
        "verdict": result["verdict"] if result else None,
        "score": result["score"] if result else None,
        "models": {m["name"]: m["score"] for m in result["models"]} if result else {},
        "faces": sum(len(f["faces"]) for f in result["frames"]) if result else None,
        "error": f"{error['code']}: {error['message']}" if error else None,
    }


def write_reports(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    names = sorted({name for r in rows for name in r["models"]})
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "sha256", "verdict", "score", *names, "faces", "error"])
        for r in rows:
            scores = [r["models"].get(name) for name in names]
            writer.writerow(
                [r["file"], r["sha256"], r["verdict"], r["score"], *scores, r["faces"], r["error"]]
            )
