"""Token accounting for tokens-per-minute limits: what to reserve, and what vLLM reports used.

Only requests from keys with a `tpm` limit pay for any of this; for the others the body and
the stream pass through untouched.
"""

from __future__ import annotations

import orjson

from gateway.validation import Endpoint, RequestView

_USAGE = b'"usage"'  # a key: inside generated text its quotes would be escaped


def reserve_tokens(view: RequestView, default_chat_completion: int) -> int:
    """Prompt estimate (4 bytes of body per token, an over-estimate for JSON) plus the
    completion's cap: max_tokens, else vLLM's default of 16 for completions, else a cap."""
    default = 16 if view.endpoint is Endpoint.COMPLETIONS else default_chat_completion
    return len(view.body) // 4 + 1 + view.n * (view.max_tokens or default)


def body_asking_usage(view: RequestView) -> bytes:
    """The body, amended to ask vLLM for the final usage chunk of a stream."""
    if not view.stream or view.include_usage:
        return view.body
    options = view.doc.get("stream_options") or {}
    return orjson.dumps({**view.doc, "stream_options": {**options, "include_usage": True}})


def total_tokens(usage: object) -> int | None:
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int) and total >= 0:
            return total
    return None


def usage_of_response(body: bytes) -> int | None:
    """total_tokens of a non-streamed answer."""
    if _USAGE not in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return total_tokens(doc.get("usage")) if isinstance(doc, dict) else None


class UsageTap:
    """Watches a stream's events for vLLM's usage chunk; drops it if the client did not ask."""

    __slots__ = ("_strip", "used")

    def __init__(self, strip: bool) -> None:
        self._strip = strip
        self.used: int | None = None

    def feed(self, events: bytes) -> bytes:
        if _USAGE not in events:
            return events
        kept = []
        for event in events.split(b"\n\n")[:-1]:
            if _USAGE in event and self._is_usage_chunk(event) and self._strip:
                continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _is_usage_chunk(self, event: bytes) -> bool:
        """vLLM's final usage chunk: `choices` empty, `usage` set. Records its total."""
        try:
            doc = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict) or doc.get("choices") != [] or doc.get("usage") is None:
            return False
        self.used = total_tokens(doc["usage"])
        return True
