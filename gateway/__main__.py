"""`python -m gateway`: parse the command line, build Settings, serve with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gateway.app import create_app
from gateway.config.errors import ConfigError
from gateway.config.keys import key_entry_yaml, new_key
from gateway.config.settings import Settings
from gateway.observe.logs import LogWriter, configure_logging
from gateway.observe.metrics import multiprocess_metrics_dir
from gateway.server.run import serve


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
    parser.add_argument("--processes", type=int, help="gateway processes sharing the port")
    args = parser.parse_args(argv)
    return {key: value for key, value in vars(args).items() if value is not None}


def keys_command(argv: list[str]) -> int:
    """`python -m gateway keys new --name N [...]`: print a fresh key once, and its entry."""
    parser = argparse.ArgumentParser(prog="python -m gateway keys")
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="make a key; paste the printed entry into the keys file")
    new.add_argument("--name", required=True, help="the key's name (logs, metrics, errors)")
    new.add_argument("--models", help="comma-separated models it may use (default: all)")
    new.add_argument("--rpm", type=int, help="requests per minute")
    new.add_argument("--tpm", type=int, help="prompt + completion tokens per minute")
    new.add_argument("--max-concurrent", type=int, help="requests in flight at once")
    new.add_argument(
        "--priority", help="interactive, standard (default) or batch, or a number (lower first)"
    )
    new.add_argument("--tokens-per-day", type=int, help="token budget per UTC day")
    new.add_argument("--tokens-per-month", type=int, help="token budget per UTC calendar month")
    args = parser.parse_args(argv)
    key = new_key()
    models = args.models.split(",") if args.models else None
    entry = key_entry_yaml(
        args.name,
        key,
        models=models,
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrent=args.max_concurrent,
        priority=args.priority,
        tokens_per_day=args.tokens_per_day,
        tokens_per_month=args.tokens_per_month,
    )
    print(f"API key (shown once, store it now): {key}\n")
    print("Add this entry under `keys:` in the keys file (GATEWAY_KEYS_FILE):")
    print(entry, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_command(argv[1:])
    overrides = parse_args(argv)
    settings = Settings(**overrides)
    writer = configure_logging(settings.log_level)
    try:
        return _serve(settings, overrides, writer)
    finally:
        writer.stop()  # flush what is queued


def _serve(settings: Settings, overrides: dict[str, Any], writer: LogWriter) -> int:
    try:
        # Also checks the models file before any process starts.
        app = create_app(settings, access=writer.access)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "access_log": False,  # the gateway writes its own, without request content
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's own lines go through our JSON logging too
    }
    drain = settings.drain_timeout
    if settings.processes == 1:
        serve(app, options, processes=1, drain_seconds=drain)
        return 0
    if settings.redis_url is None:
        logging.getLogger("gateway").warning(
            "%d processes without GATEWAY_REDIS_URL: each enforces the per-key limits on its "
            "own, so together they admit up to %d times a key's limits",
            settings.processes,
            settings.processes,
        )
    # Several processes share the port. Each builds its app from the environment, so the
    # command line's settings travel there; metrics are summed across them by prometheus_client.
    for key, value in overrides.items():
        os.environ[f"GATEWAY_{key.upper()}"] = str(value)
    with multiprocess_metrics_dir():
        factory = "gateway.app:create_app_from_env"
        serve(factory, options, processes=settings.processes, drain_seconds=drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
