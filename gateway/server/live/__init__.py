"""gateway/server/live."""
