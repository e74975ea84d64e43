"""gateway/server/verdict."""
