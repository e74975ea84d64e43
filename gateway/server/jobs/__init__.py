"""Batch and asynchronous jobs: POST /api/jobs, a huey queue, workers, webhooks."""
