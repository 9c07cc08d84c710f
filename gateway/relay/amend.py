"""The few amendments the gateway makes to a client's body before relaying it, spliced in
without re-encoding what the client sent: ask vLLM for a stream's usage chunk (the token
counters need it), tag the request for the workers' KV-cache events (precise mode), and set
vLLM's `priority` for models whose workers schedule by it.
"""

from __future__ import annotations

import orjson

from gateway.request import RequestView

_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def _spliced(body: bytes, member: bytes) -> bytes:
    """`member` (`"name":value,`) inserted as the object's first member. The object has
    `model`, so a member always follows."""
    start = body.index(b"{") + 1
    return body[:start] + member + body[start:]


def body_asking_usage(view: RequestView) -> bytes:
    """The body, amended to ask vLLM for the final usage chunk of a stream."""
    if not view.stream or view.include_usage:
        return view.body
    if "stream_options" not in view.doc:
        # Not there at all: splice it in after the opening brace (the object has `model`, so
        # a member follows), leaving every byte the client sent as it was.
        return _spliced(view.body, _ASK_USAGE)
    options = view.doc["stream_options"] or {}  # null: as if absent
    return orjson.dumps({**view.doc, "stream_options": {**options, "include_usage": True}})


def body_tagged(body: bytes, view: RequestView, tag: str) -> bytes:
    """The body with vLLM's `session_id` set to `tag`, unless the client set its own (then the
    request is tagged with the client's, which vLLM puts on the events the same way)."""
    if "session_id" in view.doc:
        return body
    return _spliced(body, b'"session_id":' + orjson.dumps(tag) + b",")


def body_prioritized(body: bytes, view: RequestView, priority: int) -> bytes:
    """The body with vLLM's `priority` set (lower is scheduled earlier). A client's own value
    stands only if it is no higher a priority than `priority` (it may lower, never raise)."""
    if "priority" not in view.doc:
        return _spliced(body, b'"priority":' + str(priority).encode() + b",")
    own = view.doc["priority"]
    if isinstance(own, int) and not isinstance(own, bool) and own >= priority:
        return body
    return orjson.dumps({**orjson.loads(body), "priority": priority})
