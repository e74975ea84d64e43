"""`python -m gateway` (gateway/__main__.py): uvicorn, configured by GATEWAY_* variables.

Logs are JSON lines on stderr (one object per event: time, level, logger,
message and the event's fields, such as request_id), uvicorn's own included.

Without API keys every caller is one tenant (it lists, reads and cancels every
job): the gateway then listens on a loopback address only, unless
GATEWAY_ALLOW_OPEN=true says that something in front of it decides who calls.
"""

import ipaddress
import json
import logging
import socket
import sys
import time

import uvicorn

from gateway.server.app import create_app
from gateway.server.settings import Settings

# The attributes every LogRecord has; anything else was passed in `extra=` and is a field.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
log = logging.getLogger("gateway")


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


def is_loopback(host: str) -> bool:
    """Every address `host` names is a loopback one; "", 0.0.0.0 and :: (all interfaces),
    another address or a name that does not resolve are not."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def open_refusal(settings: Settings) -> str | None:
    """Why the gateway must not start open (no API keys, reachable from other machines, not
    allowed explicitly), or None."""
    if settings.api_keys or settings.allow_open or is_loopback(settings.host):
        return None
    return (
        f"refusing to start: no GATEWAY_API_KEYS and GATEWAY_HOST={settings.host!r} is not a "
        "loopback address, so anyone who reaches the port would be one tenant with every "
        "other caller: list and read every job's files and results, cancel them, fill the "
        "job caps. Set GATEWAY_API_KEYS, or listen on 127.0.0.1, or set "
        "GATEWAY_ALLOW_OPEN=true if something in front of the gateway decides who may call."
    )


def check_access(settings: Settings) -> None:
    """Stop (exit 2, the reason logged) where open_refusal says so; say when the API is open."""
    if reason := open_refusal(settings):
        log.critical(reason)
        raise SystemExit(2)
    if settings.api_keys:
        return
    where = "on loopback only" if is_loopback(settings.host) else "GATEWAY_ALLOW_OPEN=true"
    log.warning(
        "the API is open (%s): no API keys, every caller is one tenant and sees every job",
        where,
        extra={"host": settings.host},
    )


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    check_access(settings)
    uvicorn.run(create_app(settings), **settings.uvicorn_options())
