"""python -m gateway: serve the gateway with uvicorn, configured by GATEWAY_* variables.

Logs are JSON lines on stderr (one object per event: time, level, logger,
message and the event's fields, such as request_id), uvicorn's own included.
"""

import json
import logging
import sys
import time

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings

# The attributes every LogRecord has; anything else was passed in `extra=` and is a field.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per record: machine-readable, one line even with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event |= {k: v for k, v in vars(record).items() if k not in STANDARD_ATTRIBUTES}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), **settings.uvicorn_options())


if __name__ == "__main__":
    main()
