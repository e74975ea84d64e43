"""python -m gateway: serve the gateway with uvicorn, configured by GATEWAY_* variables."""

import logging

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # the gateway logs each request itself, with its request id
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
