"""Process logging: one JSON object per line, formatted and written by a background thread (on
the event loop a log call only enqueues), and the per-request access line.

The gateway logs no keys, prompts or completions, only their metadata: the access line carries
the key's *name*, the model, the worker, the status, token counts and timings.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

from gateway.record import RequestRecord

ACCESS_LOGGER = "gateway.access"
AccessSink = Callable[[dict[str, Any]], None]


class Timestamps:
    """ISO 8601 UTC times with milliseconds; the part to the second is formatted once per second
    (`time.strftime` was about 3 µs of every access line)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = (-1, "")  # (second, its text), replaced whole: safe across threads

    def __call__(self, created: float) -> str:
        second = int(created)
        last_second, text = self._last
        if second != last_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._last = (second, text)
        return f"{text}.{int(created * 1000) % 1000:03d}Z"


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._timestamp = Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
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


class LogWriter:
    """The thread that formats and writes every line: log records, and access lines handed
    over as plain dicts (about 1 µs on the loop, against ~16 µs through `logging`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._formatter = JSONFormatter()
        self._timestamp = Timestamps()
        self.queue: queue.SimpleQueue[logging.LogRecord | dict[str, Any] | None] = (
            queue.SimpleQueue()
        )
        self.lost = 0  # lines the stream refused (closed, broken pipe)
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def access(self, fields: dict[str, Any]) -> None:
        fields["ts"] = time.time()
        self.queue.put(fields)

    def _run(self) -> None:
        # Wait for one line, then take whatever else is queued: under load one wake-up and one
        # write serve many lines.
        while True:
            items = [self.queue.get()]
            while len(items) < 512:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(item) for item in items if item is not None]
            if lines:
                self._write("\n".join(lines) + "\n")
            if None in items:
                return

    def _write(self, text: str) -> None:
        # This thread must outlive a bad line or a closed stream: if it ended, the queue
        # would grow by a line per request with no one to drain it.
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self.lost += text.count("\n")

    def _format(self, item: logging.LogRecord | dict[str, Any]) -> str:
        try:
            return self._render(item)
        except Exception as exc:  # noqa: BLE001 (a library's bad log call must not end the writer)
            return orjson.dumps({"level": "error", "message": f"unloggable line: {exc!r}"}).decode()

    def _render(self, item: logging.LogRecord | dict[str, Any]) -> str:
        if isinstance(item, dict):
            line = {"ts": self._timestamp(item.pop("ts")), "level": "info", "logger": ACCESS_LOGGER}
            line.update(item)
            return orjson.dumps(line).decode()
        return self._formatter.format(item)

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.queue.put(None)
        self._thread.join(5)


class _RecordQueue(logging.handlers.QueueHandler):
    """QueueHandler without its prepare(): that renders the message and drops `args` at once,
    on the event loop; the writer thread formats instead."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure_logging(level: str) -> LogWriter:
    """JSON lines on stderr, written off the event loop. Stop the returned writer at exit to
    flush what is queued; its `access` is the cheap sink for access lines."""
    writer = LogWriter(sys.stderr)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_RecordQueue(writer.queue))
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO: noise on the hot path, and URLs are the worker's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return writer


def logging_access(fields: dict[str, Any]) -> None:
    """The access sink when no LogWriter was set up (an app built in a test): plain logging."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.isEnabledFor(logging.INFO):
        logger.info("access", extra={"fields": fields})


def access_fields(record: RequestRecord) -> dict[str, Any]:
    """The access line of a finished request: metadata only, never content or a key."""
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "method": record.method,
        "endpoint": record.endpoint,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "key": record.key,  # the key's name from the keys file, never the key
        "model": record.model,
    }
    if record.error_code is not None:
        fields["error"] = record.error_code
    if record.relayed:
        timing = record.timing
        fields["worker"] = record.worker
        fields["queue_ms"] = round(timing.queued * 1000, 3)
        if timing.first_event is not None:
            fields["ttft_ms"] = round((timing.first_event - timing.started) * 1000, 3)
        if record.usage is not None:
            fields["prompt_tokens"] = record.usage.prompt
            fields["completion_tokens"] = record.usage.completion
    return fields
