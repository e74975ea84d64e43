"""The one writer of streamed events: each event one compact JSON line (POST
/api/detect/stream, POST /api/live, GET /api/jobs/{id}/events); a WebSocket message is the
same JSON without the newline, a server-sent event the same JSON framed for EventSource."""

import json


def compact(event: dict) -> str:
    """The event as JSON without spaces: what every streamed answer sends."""
    return json.dumps(event, separators=(",", ":"))


def line(event: dict) -> bytes:
    """One NDJSON line: the compact JSON and a newline."""
    return (compact(event) + "\n").encode()


def sse(event: dict) -> bytes:
    """One server-sent event: named by the event's "event", its data the compact JSON."""
    return f"event: {event['event']}\ndata: {compact(event)}\n\n".encode()
