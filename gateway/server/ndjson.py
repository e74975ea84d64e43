"""The one NDJSON writer: each event one compact JSON line (POST /api/detect/stream,
POST /api/live); a WebSocket message is the same JSON, without the newline."""

import json


def compact(event: dict) -> str:
    """The event as JSON without spaces: what every streamed answer sends."""
    return json.dumps(event, separators=(",", ":"))


def line(event: dict) -> bytes:
    """One NDJSON line: the compact JSON and a newline."""
    return (compact(event) + "\n").encode()
