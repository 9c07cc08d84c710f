"""Process logging set-up. The gateway logs no keys, prompts or completions, only their metadata."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # httpx logs every request URL at INFO: noise on the hot path, and URLs are the worker's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
