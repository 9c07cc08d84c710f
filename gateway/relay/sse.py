"""SSE framing for the relay: forward whole events as they arrive, without re-encoding them.

vLLM ends every event with a blank line ("\\n\\n"). Bytes are forwarded up to the last complete
event, so a stream cut mid-event never leaves a half event in front of our error event. Each
event must begin with an SSE field (a `data:` one carrying JSON or `[DONE]`) and stay under a
size limit; anything else is the worker breaking the protocol, never relayed.
"""

from __future__ import annotations

from gateway.errors import UpstreamInvalid

_DONE = b"data: [DONE]\n\n"
_ERROR_PREFIX = b'data: {"error"'
# How an event may begin: vLLM's `data: {...}` / `data: [DONE]`, or another SSE field.
_EVENT_STARTS = (b"data: {", b"data: [", b"data:{", b"data:[", b"event:", b"id:", b"retry:", b":")


class SSEFramer:
    __slots__ = ("_max_event", "_tail", "done")

    def __init__(self, max_event: int = 1 << 20, *, ends_at_eof: bool = False) -> None:
        self._tail = b""
        self._max_event = max_event
        # Streams of named events (Responses, Anthropic) have no `[DONE]`: the worker ending
        # the body cleanly ends them (a cut shows as a broken chunked body instead).
        self.done = ends_at_eof

    def feed(self, chunk: bytes) -> bytes:
        """Return the complete events that `chunk` finishes (maybe b""), keep the rest.
        Raises UpstreamInvalid on bytes that are not SSE events or on an oversized event."""
        if self._tail:
            chunk = self._tail + chunk
        end = chunk.rfind(b"\n\n")
        if end < 0:
            self._tail = chunk
            if len(chunk) > self._max_event:
                raise _too_large(self._max_event)
            return b""
        end += 2
        if end == len(chunk):
            self._tail = b""
        else:
            self._tail, chunk = chunk[end:], chunk[:end]
        _check_events(chunk, self._max_event)
        if chunk.endswith(_DONE):
            self.done = True
        return chunk


def _check_events(events: bytes, max_event: int) -> None:
    start, size = 0, len(events)
    while start < size:
        if not events.startswith(_EVENT_STARTS, start):
            raise UpstreamInvalid("the worker's stream is not SSE events", violation="not_sse")
        end = events.index(b"\n\n", start) + 2
        if end - start > max_event:
            raise _too_large(max_event)
        start = end


def _too_large(limit: int) -> UpstreamInvalid:
    return UpstreamInvalid(
        f"the worker sent a stream event larger than {limit} bytes", violation="event_too_large"
    )


def leading_error(events: bytes) -> bytes | None:
    """The JSON of an error event when it is the first event of a stream, else None."""
    if not events.startswith(_ERROR_PREFIX):
        return None
    return events[len(b"data: ") : events.index(b"\n\n")]
