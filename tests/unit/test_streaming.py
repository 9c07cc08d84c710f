"""SSE framing: whole events only, whatever the TCP chunking, and [DONE] detection."""

from __future__ import annotations

from gateway.relay.sse import SSEFramer, leading_error

EVENTS = [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]


def test_events_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = b"".join(EVENTS)
    for size in (1, 2, 3, 7, 16, len(stream)):
        framer = SSEFramer()
        out = [framer.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
        assert b"".join(out) == stream
        assert all(piece.endswith(b"\n\n") for piece in out if piece)
        assert framer.done


def test_a_cut_mid_event_holds_the_partial_event_back() -> None:
    framer = SSEFramer()
    assert framer.feed(EVENTS[0] + b'data: {"b"') == EVENTS[0]
    assert not framer.done


def test_done_is_only_seen_at_the_end_of_the_stream() -> None:
    framer = SSEFramer()
    framer.feed(b'data: {"text":"data: [DONE]"}\n\n')
    assert not framer.done


def test_leading_error_event_is_found_only_first() -> None:
    error = b'data: {"error":{"code":500}}\n\n'
    assert leading_error(error + EVENTS[2]) == b'{"error":{"code":500}}'
    assert leading_error(EVENTS[0] + error) is None
