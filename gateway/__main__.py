"""`python -m gateway`: parse the command line, build Settings, serve with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.models_config import ConfigError
from gateway.settings import Settings


def parse_args(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="OpenAI-compatible gateway in front of vLLM workers. Every option can also "
        "be set as a GATEWAY_* environment variable (e.g. GATEWAY_PORT); options win.",
    )
    parser.add_argument("--config", help="models file (default configs/models.yaml)")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--log-level", help="debug, info, warning or error (default info)")
    args = parser.parse_args(argv)
    return {key: value for key, value in vars(args).items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # httpx logs every request URL at INFO: noise on the hot path, and URLs are the worker's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the gateway never logs request content; access logs come later
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
