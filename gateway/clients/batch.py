"""`python -m gateway.programs.cli detect A B C` or `detect FOLDER`: many files (or media URLs,
which the gateway fetches itself) as jobs, a progress bar, then a CSV and a JSON report (file,
sha256, verdict, its reason codes, score, per-model scores, faces, error). The exit status is 1
when any file failed, whatever the verdicts."""

import csv
import hashlib
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from tqdm import tqdm

from gateway.clients.client import TIMEOUT, Source, raise_for_error, source_name

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
    """The /api/jobs routes over HTTP (through `http` where given: the tests' TestClient)."""

    def __init__(
        self, url: str, api_key: str | None = None, http: httpx.Client | None = None
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=TIMEOUT, headers=headers)

    def submit(self, files: list[Path], **options: object) -> dict:
        params = {k: v for k, v in options.items() if v is not None}
        with ExitStack() as stack:  # httpx streams each open file: none is read into memory
            parts = [("file", (p.name, stack.enter_context(p.open("rb")))) for p in files]
            response = self.http.post("/api/jobs", files=parts, params=params)
        raise_for_error(response)
        return response.json()

    def submit_urls(self, urls: list[str], **options: object) -> dict:
        """A job of media URLs: the gateway fetches each (nothing is uploaded)."""
        params = {k: v for k, v in options.items() if v is not None}
        response = self.http.post("/api/jobs", json={"urls": urls}, params=params)
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
    sources: list[Source],
    out: Path,
    *,
    models: str | None = None,
    frames: int | None = None,
    threshold: float | None = None,
    api_key: str | None = None,
    job_files: int = 50,
) -> int:
    files = collect([s for s in sources if isinstance(s, Path)])
    urls = [s for s in sources if isinstance(s, str)]
    if not files and not urls:
        print("error: no files to analyse", file=sys.stderr)
        return 2
    client = JobsClient(url, api_key)
    options = {"models": models, "frames": frames, "threshold": threshold}
    try:
        # The gateway caps a job's files (GATEWAY_JOBS_MAX_FILES): a long list is several jobs.
        batches: list[list[Source]] = [
            files[i : i + job_files] for i in range(0, len(files), job_files)
        ]
        batches += [urls[i : i + job_files] for i in range(0, len(urls), job_files)]
        jobs = [(batch, submit(client, batch, options)["id"]) for batch in batches]
        finished = wait_all(client, [job_id for _, job_id in jobs], len(files) + len(urls))
    finally:
        client.close()
    rows = [
        row(source, item)
        for (batch, job_id) in jobs
        for source, item in zip(batch, finished[job_id]["items"], strict=True)
    ]
    write_reports(rows, out)
    failed = [r for r in rows if r["error"]]
    print(
        f"{len(rows) - len(failed)} analysed, {len(failed)} failed; "
        f"reports: {out.with_suffix('.csv')} {out.with_suffix('.json')}"
    )
    return 1 if failed else 0


def submit(client: JobsClient, batch: list[Source], options: dict[str, object]) -> dict:
    """One job: a batch of files uploaded, or of URLs the gateway fetches."""
    urls = [s for s in batch if isinstance(s, str)]
    if urls:
        return client.submit_urls(urls, **options)
    return client.submit([s for s in batch if isinstance(s, Path)], **options)


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


def row(source: Source, item: dict) -> dict:
    """A report's row: a file's own sha256, a URL's as the gateway received it."""
    result, error = item.get("result"), item.get("error")
    if error is None and item["status"] != "done":
        error = {"code": item["status"], "message": f"the item was {item['status']}"}
    return {
        "file": source_name(source),
        "sha256": sha256(source) if isinstance(source, Path) else item.get("sha256"),
        "verdict": result["verdict"] if result else None,
        "reasons": [r["code"] for r in result.get("reasons", [])] if result else [],
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
        writer.writerow(["file", "sha256", "verdict", "reasons", "score", *names, "faces", "error"])
        for r in rows:
            scores = [r["models"].get(name) for name in names]
            facts = [r["file"], r["sha256"], r["verdict"], " ".join(r["reasons"]), r["score"]]
            writer.writerow([*facts, *scores, r["faces"], r["error"]])
