"""The gateway's receiving end (issue 25): one writer of streamed events, one upload
receiver for one file or many, one admission style."""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.server import ndjson
from gateway.server.admission import Admission, Bound, Holding, LiveSessions, UploadSlots
from gateway.server.errors import CATALOGUE, ApiError
from gateway.server.jobs.spool import JobFolder, discard, job_form
from gateway.server.live.readers import StreamReaders
from gateway.server.uploads import (
    FORM_OVERHEAD,
    Form,
    Pace,
    Spool,
    TempFiles,
    Upload,
    receive_files,
)
from tests.conftest import inprocess_gateway
from tests.stack import OBAMA


def test_job_events_are_the_one_writers_lines_and_server_sent_events(tmp_path: Path) -> None:
    """GET /api/jobs/{id}/events frames its events with gateway/server/ndjson.py: NDJSON
    lines, or the same JSON as server-sent events for a client that accepts them."""
    with inprocess_gateway(tmp_path) as gateway:
        client = gateway.client
        job = client.post("/api/jobs", files={"file": (OBAMA.name, OBAMA.read_bytes())}).json()
        deadline = time.monotonic() + 60
        while client.get(f"/api/jobs/{job['id']}").json()["finished"] is None:
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.1)
        events = job["links"]["events"]
        lines = client.get(events).content
        framed = client.get(events, headers={"Accept": "text/event-stream"})
    (end,) = [json.loads(line) for line in lines.splitlines()]
    assert end["event"] == "end" and end["job"]["status"] == "done"
    assert lines == ndjson.line(end)
    assert framed.headers["content-type"].startswith("text/event-stream")
    assert (
        framed.content
        == ndjson.sse(end)
        == b"event: end\ndata: %s\n\n" % ndjson.compact(end).encode()
    )


# --- one receiver: /api/detect's one file, a job's many ------------------------------------

BOUNDARY = "receiver-test"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
PACE = Pace(timeout_s=10)


def body(*files: tuple[str, bytes], end: bool = True) -> bytes:
    """A multipart form of these (field, content) files, each named after its field."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{field}.bin"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for field, data in files
    ]
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def receive(data: bytes, form: Form, spool: Spool, declared: int | None = None) -> list[Upload]:
    length = None if declared is None else str(declared)
    return asyncio.run(receive_files(chunks_of(data), CONTENT_TYPE, length, form, spool, PACE))


def refusal(data: bytes, form: Form, spool: Spool, declared: int | None = None) -> str:
    with pytest.raises(ApiError) as refused:
        receive(data, form, spool, declared)
    assert refused.value.status == CATALOGUE[refused.value.code].status
    return refused.value.code


def test_detects_form_is_the_one_file_case(tmp_path: Path) -> None:
    """/api/detect's form: its first file kept (hashed as written), the rest of the body not
    read; over the cap a 413 file_too_large, declared or received; no file a 422; a refused
    upload leaves nothing in the temporary folder."""
    form, spool = Form(file_bytes=100), TempFiles(tmp_path)
    (upload,) = receive(body(("other", b"x"), ("file", b"a" * 100), ("file", b"b")), form, spool)
    assert (upload.filename, upload.size) == ("file.bin", 100)
    assert upload.sha256 == hashlib.sha256(b"a" * 100).hexdigest()
    assert upload.path.read_bytes() == b"a" * 100 and upload.path.parent == tmp_path
    upload.path.unlink()
    assert refusal(body(("file", b"a" * 101)), form, spool) == "file_too_large"
    assert refusal(body(("file", b"a")), form, spool, declared=100 + FORM_OVERHEAD + 1) == (
        "file_too_large"
    )
    assert refusal(body(("other", b"a")), form, spool) == "missing_file"
    assert refusal(body(("file", b"a" * 50), end=False)[:-10], form, spool) in (
        "missing_file",
        "malformed_upload",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_jobs_form_is_many_files_under_its_caps(tmp_path: Path) -> None:
    """A job's form: every file, numbered in the job's folder; a file over /api/detect's cap
    is its 413 file_too_large, a file too many or the whole over the job's MB its 413
    job_too_large (declared or received); any refusal removes the folder."""
    folder = tmp_path / "job"
    form, spool = job_form(file_bytes=100, files=3, total_bytes=250), JobFolder(folder)
    files = receive(body(("file", b"a"), ("files", b"b" * 100), ("video", b"c")), form, spool)
    assert [(f.path.name, f.size) for f in files] == [
        ("0.upload", 1),
        ("1.upload", 100),
        ("2.upload", 1),
    ]
    assert [f.path.read_bytes() for f in files] == [b"a", b"b" * 100, b"c"]
    discard(folder)
    four = body(*[("file", b"x")] * 4)
    for data, declared, code in [
        (body(("file", b"a" * 101)), None, "file_too_large"),
        (four, None, "job_too_large"),
        (body(*[("file", b"a" * 90)] * 3), None, "job_too_large"),
        (body(("file", b"a")), 250 + 3 * FORM_OVERHEAD + 1, "job_too_large"),
        (body(("other", b"a")), None, "missing_file"),
    ]:
        assert refusal(data, form, spool, declared) == code
        assert not folder.exists()


def test_a_job_body_ending_inside_a_file_leaves_no_part_of_it(tmp_path: Path) -> None:
    """Two complete files and a third cut off by the end of the body: the third is neither
    answered nor left in the folder (it was left open there, unrecorded)."""
    folder = tmp_path / "job"
    data = body(("file", b"a"), ("file", b"b"), ("file", b"c" * 50), end=False)[:-20]
    files = receive(data, job_form(100, 3, 300), JobFolder(folder))
    assert [f.path.name for f in files] == ["0.upload", "1.upload"]
    assert sorted(p.name for p in folder.iterdir()) == ["0.upload", "1.upload"]


@pytest.mark.parametrize(
    ("bound", "code", "status", "retry"),
    [
        (Admission(1, 0, 0.05), "too_many_requests", 429, "2"),
        (UploadSlots(1), "too_many_uploads", 429, "2"),
        (LiveSessions(5, 1), "too_many_sessions", 429, "5"),
        (StreamReaders(1, 3.2), "stream_busy", 503, "4"),
    ],
)
def test_every_bound_is_taken_and_given_back_one_way(
    bound: Bound, code: str, status: int, retry: str
) -> None:
    """One admission style: each bound's place is taken, refused with its own status and
    Retry-After when full, and given back once however many of its holders give it."""

    async def scenario() -> None:
        held = Holding()
        place = await held.take(bound, "client")
        with pytest.raises(ApiError) as refused:
            await bound.take("client")
        assert (refused.value.code, refused.value.status) == (code, status)
        assert refused.value.headers == {"Retry-After": retry}
        place.give()  # the stream's end, then the dependency's teardown: one leave
        held.give_back()
        async with bound.held("client"):
            with pytest.raises(ApiError):
                await bound.take("client")
        (await bound.take("client")).give()

    asyncio.run(scenario())
