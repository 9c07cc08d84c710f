"""Process logging: one JSON object per line, written by a background thread (a log call on the
event loop only puts the record on a queue), and the per-request access line.

The gateway logs no keys, prompts or completions, only their metadata: the access line carries
the key's *name*, the model, the worker, the status, token counts and timings.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "gateway.access"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """JSON lines on stderr, written off the event loop. Stop the returned listener at exit
    to flush what is queued."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JSONFormatter())
    listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_RecordQueue(records))
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO: noise on the hot path, and URLs are the worker's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    listener.start()
    return listener


class _RecordQueue(logging.handlers.QueueHandler):
    """QueueHandler without its prepare(): that renders the message and drops `args` at once,
    on the event loop; the writer thread formats instead."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def access_line(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """One request's access line (level INFO on the `gateway.access` logger)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("access", extra={"fields": fields})
