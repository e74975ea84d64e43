"""gateway/server/analysis."""
