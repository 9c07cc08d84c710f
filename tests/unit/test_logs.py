"""The log writer thread: every line written once, in order, as JSON, including those queued
just before it stops."""

from __future__ import annotations

import io
import json
import logging

from gateway.logs import ACCESS_LOGGER, LogWriter


def test_every_queued_line_is_written_once_in_order_as_json() -> None:
    out = io.StringIO()
    writer = LogWriter(out)
    for index in range(2000):
        writer.access({"request_id": str(index), "status": 200})
    record = logging.LogRecord(
        "gateway.health", logging.WARNING, "", 0, "worker %s up", ("w0",), None
    )
    writer.queue.put(record)
    writer.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines[:-1]] == [str(i) for i in range(2000)]
    assert {line["logger"] for line in lines[:-1]} == {ACCESS_LOGGER}
    assert lines[0]["ts"].endswith("Z")
    assert lines[-1] == {
        "ts": lines[-1]["ts"],
        "level": "warning",
        "logger": "gateway.health",
        "message": "worker w0 up",
    }
