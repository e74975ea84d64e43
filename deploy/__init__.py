"""Kubernetes manifests, container images and their offline validation (deploy/README.md)."""
