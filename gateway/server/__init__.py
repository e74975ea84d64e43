"""gateway/server."""
