"""The programs besides the server, each `python -m gateway.programs.X`: cli, worker, local
(`make run`), evaluate (`make eval`), settings_doc (`make settings-doc`)."""
