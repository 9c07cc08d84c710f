"""SSE framing for the relay: forward whole events as they arrive, without re-encoding them.

vLLM ends every event with a blank line ("\\n\\n"). Bytes are forwarded up to the last complete
event, so a stream cut mid-event never leaves a half event in front of our error event.
"""

from __future__ import annotations

_DONE = b"data: [DONE]\n\n"
_ERROR_PREFIX = b'data: {"error"'


class SSEFramer:
    __slots__ = ("_tail", "done")

    def __init__(self) -> None:
        self._tail = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return the complete events that `chunk` finishes (maybe b""), keep the rest."""
        if self._tail:
            chunk = self._tail + chunk
        end = chunk.rfind(b"\n\n")
        if end < 0:
            self._tail = chunk
            return b""
        end += 2
        if end == len(chunk):
            self._tail = b""
        else:
            self._tail, chunk = chunk[end:], chunk[:end]
        if chunk.endswith(_DONE):
            self.done = True
        return chunk


def leading_error(events: bytes) -> bytes | None:
    """The JSON of an error event when it is the first event of a stream, else None."""
    if not events.startswith(_ERROR_PREFIX):
        return None
    return events[len(b"data: ") : events.index(b"\n\n")]
