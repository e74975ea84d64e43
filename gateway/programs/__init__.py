"""gateway/programs."""
