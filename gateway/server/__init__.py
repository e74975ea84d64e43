"""The service: everything `python -m gateway` runs, and nothing else. Rooms, top to bottom
(pyproject.toml [tool.importlinter]): app, routers, deps, live | jobs | report, analysis,
verdict, then the parts every room uses (settings, errors, schemas, metrics, tracing...)."""
