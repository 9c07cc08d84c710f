"""The log writer thread: every line written once, in order, as JSON, including those queued
just before it stops."""

from __future__ import annotations

import io
import json
import logging
import time

from gateway.observe.logs import ACCESS_LOGGER, LogWriter, Timestamps


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


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_the_writer_outlives_a_broken_stream_and_a_bad_log_call() -> None:
    writer = LogWriter(Broken())
    writer.access({"request_id": "1"})
    time.sleep(0.1)  # its write fails first, in a batch of its own
    bad = logging.LogRecord("x", logging.INFO, "", 0, "%d", ("not a number",), None)
    writer.queue.put(bad)
    writer.access({"request_id": "2"})
    writer.stop()
    assert writer.lost == 3  # the lines after the failed write were still taken and tried


def test_timestamps_are_utc_to_the_millisecond_across_seconds() -> None:
    stamp = Timestamps()
    base = 1_764_633_599.0  # 2025-12-01T23:59:59Z
    assert stamp(base + 0.0004) == "2025-12-01T23:59:59.000Z"
    assert stamp(base + 0.9996) == "2025-12-01T23:59:59.999Z"
    assert stamp(base + 1.25) == "2025-12-02T00:00:00.250Z"  # the next second (and day)
    assert stamp(base + 0.5) == "2025-12-01T23:59:59.500Z"  # an earlier one again
