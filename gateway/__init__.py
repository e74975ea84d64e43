"""The deepfake-detection gateway: server/ (what `python -m gateway` runs), programs/ (the
other commands) and clients/ (Python clients of the service)."""

import importlib.metadata

# The one version: pyproject.toml's, as installed (`make setup`: pip install --no-deps .).
VERSION = importlib.metadata.version("deepfake-detect")
