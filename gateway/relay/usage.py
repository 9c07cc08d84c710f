"""What vLLM reports a request used (for the limits and the token counters).

Streams ask vLLM for its final usage chunk (relay/amend.py); the chunk is dropped again when the
client did not ask for it.
"""

from __future__ import annotations

import orjson

from gateway.errors import UpstreamInvalid
from gateway.record import Usage

_USAGE = b'"usage"'  # a key: inside generated text its quotes would be escaped
# vLLM writes `"usage":null` on every chunk once usage is asked; only an object is the report.
_USAGE_OBJECT = (b'"usage":{', b'"usage": {')


def usage_from(report: object) -> Usage | None:
    """OpenAI's `prompt_tokens`/`completion_tokens`, or the Responses and Anthropic APIs'
    `input_tokens`/`output_tokens`; an embeddings report has the prompt only."""
    if not isinstance(report, dict):
        return None
    prompt = report.get("prompt_tokens")
    completion = report.get("completion_tokens")
    if prompt is None:
        prompt, completion = report.get("input_tokens"), report.get("output_tokens")
    if completion is None and isinstance(prompt, int):
        completion = 0
    if isinstance(prompt, int) and isinstance(completion, int) and min(prompt, completion) >= 0:
        return Usage(prompt, completion)
    return None


def usage_of_answer(body: bytes) -> Usage | None:
    """The usage of a non-streamed answer, which must be a JSON object (UpstreamInvalid)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamInvalid("the worker's answer is not a JSON object", violation="not_json")
    return usage_from(doc.get("usage"))


class UsageTap:
    """Watches a stream's events for vLLM's usage chunk; drops it if the client did not ask."""

    __slots__ = ("_strip", "usage")

    def __init__(self, strip: bool) -> None:
        self._strip = strip
        self.usage: Usage | None = None

    def feed(self, events: bytes) -> bytes:
        if _USAGE_OBJECT[0] not in events and _USAGE_OBJECT[1] not in events:
            return events
        kept = []
        for event in events.split(b"\n\n")[:-1]:
            if _USAGE in event and self._is_usage_chunk(event) and self._strip:
                continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _is_usage_chunk(self, event: bytes) -> bool:
        """vLLM's final usage chunk: `choices` empty, `usage` set. Records it."""
        try:
            doc = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict) or doc.get("choices") != [] or doc.get("usage") is None:
            return False
        self.usage = usage_from(doc["usage"])
        return True


class NamedUsageTap:
    """Usage in streams of named events, relayed unchanged: the Responses API reports it on
    `response.completed` (under `response`), Anthropic's on `message_start` (under `message`,
    the input) and `message_delta` (the output so far)."""

    __slots__ = ("_completion", "_prompt")

    def __init__(self) -> None:
        self._prompt: int | None = None
        self._completion = 0

    @property
    def usage(self) -> Usage | None:
        return Usage(self._prompt, self._completion) if self._prompt is not None else None

    def feed(self, events: bytes) -> bytes:
        if _USAGE not in events:
            return events
        for event in events.split(b"\n\n"):
            if _USAGE in event:
                self._read(event)
        return events

    def _read(self, event: bytes) -> None:
        start = event.find(b"data:")
        if start < 0:
            return
        try:
            doc = orjson.loads(event[start + 5 :])
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        for holder in (doc, doc.get("response"), doc.get("message")):
            if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
                self._take(holder["usage"])

    def _take(self, report: dict[str, object]) -> None:
        prompt = report.get("input_tokens", report.get("prompt_tokens"))
        completion = report.get("output_tokens", report.get("completion_tokens"))
        if isinstance(prompt, int) and prompt >= 0:
            self._prompt = max(prompt, self._prompt or 0)
        if isinstance(completion, int) and completion >= 0:
            self._completion = max(completion, self._completion)
            if self._prompt is None:
                self._prompt = 0
