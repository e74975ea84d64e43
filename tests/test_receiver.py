"""The gateway's receiving end (issue 25): one writer of streamed events, one upload
receiver for one file or many, one admission style."""

import json
import time
from pathlib import Path

from gateway.server import ndjson
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
