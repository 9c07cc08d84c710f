"""The endpoint table's pure parts: paths by id, multipart fields, usage in every API's shape,
Anthropic's error envelope, the adapters a worker lists."""

from __future__ import annotations

import pytest

from gateway.api.multipart import boundary_of, form_fields, form_model, form_stream
from gateway.errors import InvalidRequest, ModelNotFound, ServerOverloaded, UpstreamTimeout
from gateway.record import Usage
from gateway.relay.usage import NamedUsageTap, usage_from
from gateway.request import Endpoint, response_path
from gateway.routing.health import loaded_adapters


def test_each_path_names_one_row() -> None:
    assert len({e.path for e in Endpoint}) == len(Endpoint)
    assert Endpoint("/v1/embeddings") is Endpoint.EMBEDDINGS  # type: ignore[call-arg]
    assert Endpoint.EMBEDDINGS.spec.runner == "pooling"


def test_response_paths_by_id() -> None:
    assert response_path("/v1/responses/resp_1") == (Endpoint.RESPONSE, "resp_1")
    assert response_path("/v1/responses/resp_1/cancel") == (Endpoint.RESPONSE_CANCEL, "resp_1")
    for bad in ("/v1/responses/", "/v1/responses/a/b", "/v1/responses/a%2F", "/v1/chat"):
        assert response_path(bad) is None


def _form(*parts: tuple[str, bytes]) -> bytes:
    body = b""
    for name, value in parts:
        body += f'--XyZ\r\nContent-Disposition: form-data; name="{name}"'.encode()
        if name == "file":
            body += b'; filename="a.wav"\r\nContent-Type: audio/wav'
        body += b"\r\n\r\n" + value + b"\r\n"
    return body + b"--XyZ--\r\n"


def test_form_fields_read_model_and_stream_and_skip_the_file() -> None:
    body = _form(
        ("file", b"--XyZ not a boundary\r\n" + bytes(300)), ("model", b"m"), ("stream", b"true")
    )
    fields = form_fields(body, boundary_of(b"multipart/form-data; boundary=XyZ"))
    assert fields == {"model": "m", "stream": "true"}
    assert form_model(fields) == "m"
    assert form_stream(fields) is True


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/json", b"{}"),
        (b"multipart/form-data", b"--XyZ\r\n"),
        (b"multipart/form-data; boundary=XyZ", b"no delimiter at all"),
        (b"multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: x"),
        (b"multipart/form-data; boundary=XyZ", b"--XyZ\r\nA: b\r\n\r\nnever closed"),
    ],
)
def test_broken_forms_are_invalid_requests(content_type: bytes, body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        form_fields(body, boundary_of(content_type))


def test_a_form_without_model_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        form_model({})


def test_usage_in_each_apis_shape() -> None:
    assert usage_from({"prompt_tokens": 5, "completion_tokens": 2}) == Usage(5, 2)
    assert usage_from({"prompt_tokens": 5, "total_tokens": 5}) == Usage(5, 0)  # embeddings
    assert usage_from({"input_tokens": 4, "output_tokens": 9}) == Usage(4, 9)
    assert usage_from({"total_tokens": 3}) is None


def test_named_stream_usage_from_responses_and_anthropic_events() -> None:
    responses = NamedUsageTap()
    done = (
        b"event: response.completed\n"
        b'data: {"response":{"usage":{"input_tokens":7,"output_tokens":3}}}\n\n'
    )
    assert responses.feed(done) == done  # relayed unchanged
    assert responses.usage == Usage(7, 3)
    anthropic = NamedUsageTap()
    anthropic.feed(
        b"event: message_start\n"
        b'data: {"message":{"usage":{"input_tokens":6,"output_tokens":1}}}\n\n'
    )
    anthropic.feed(b'event: message_delta\ndata: {"usage":{"output_tokens":12}}\n\n')
    assert anthropic.usage == Usage(6, 12)


def test_anthropic_envelope_and_statuses() -> None:
    status, body = ModelNotFound("m").answer("anthropic")
    assert status == 404
    assert body.startswith(b'{"type":"error","error":{"type":"not_found_error"')
    assert ServerOverloaded("full").answer("anthropic")[0] == 529
    event = UpstreamTimeout("slow").stream_event("anthropic", named=True)
    assert event.startswith(b'event: error\ndata: {"type":"error","error":{"type":"timeout_error"')
    assert UpstreamTimeout("slow").stream_event("openai", named=False).endswith(b"data: [DONE]\n\n")


def test_loaded_adapters_are_the_models_with_a_parent() -> None:
    listing = b'{"data":[{"id":"base","parent":null},{"id":"lora-a","parent":"base"}]}'
    assert loaded_adapters(listing) == frozenset({"lora-a"})
    assert loaded_adapters(b"not json") is None
