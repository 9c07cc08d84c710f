"""Worker answers map onto the error tree by status, never by message text."""

from __future__ import annotations

import orjson

from gateway.errors import (
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRejected,
    upstream_error_from_body,
)


def test_vllm_4xx_keeps_status_message_and_param() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "too long",
                "type": "BadRequestError",
                "param": "input_tokens",
                "code": 400,
            }
        }
    )
    error = upstream_error_from_body(400, body)
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.message, error.param) == (400, "too long", "input_tokens")


def test_non_envelope_bodies_still_give_a_message() -> None:
    assert upstream_error_from_body(401, b'{"error":"Unauthorized"}').message == "Unauthorized"
    assert upstream_error_from_body(404, b'{"detail":"Not Found"}').message == "Not Found"
    assert upstream_error_from_body(418, b"teapot").message == "teapot"


def test_worker_503_is_retryable_overload_and_500_is_a_failure() -> None:
    assert isinstance(upstream_error_from_body(503, b"{}"), UpstreamOverloaded)
    assert upstream_error_from_body(503, b"{}").retryable
    failed = upstream_error_from_body(500, b"{}")
    assert isinstance(failed, UpstreamFailed)
    assert failed.status == 502


def test_envelope_has_exactly_the_openai_fields() -> None:
    doc = orjson.loads(UpstreamFailed("x").body())
    assert doc == {
        "error": {"message": "x", "type": "server_error", "param": None, "code": "upstream_error"}
    }
