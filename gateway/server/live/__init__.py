"""Live analysis: the WebSocket protocol and the session (routers/live.py serves it)."""
