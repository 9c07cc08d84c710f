"""Every error the gateway returns is an OpenAI envelope with the right status (fake worker)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import FakeStack

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def post(stack: FakeStack, body: object, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(stack.gateway + path, json=body, timeout=10)


def envelope(response: httpx.Response) -> dict[str, object]:
    doc = response.json()
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = doc["error"]
    return error


def sdk(stack: FakeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway + "/v1", api_key="unused", max_retries=0)


def test_unknown_model_raises_not_found_with_code(strict: FakeStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(strict).chat.completions.create(model="no-such-model", messages=CHAT)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": CHAT}, "model", "missing_required_parameter"),
        ({"model": 7, "messages": CHAT}, "model", "invalid_type"),
        ({"model": "fake-a"}, "messages", "missing_required_parameter"),
        ({"model": "fake-a", "messages": []}, "messages", "invalid_value"),
        ({"model": "fake-a", "messages": ["hi"]}, "messages[0]", "invalid_type"),
        ({"model": "fake-a", "messages": CHAT, "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "fake-a", "messages": CHAT, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "fake-a", "messages": CHAT, "max_tokens": "9"}, "max_tokens", "invalid_type"),
        (
            {"model": "fake-a", "messages": CHAT, "stream_options": 1},
            "stream_options",
            "invalid_type",
        ),
    ],
)
def test_invalid_chat_body_is_400_naming_the_field(
    strict: FakeStack, body: dict[str, object], param: str, code: str
) -> None:
    response = post(strict, body)
    assert response.status_code == 400
    error = envelope(response)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert param in str(error["message"])


def test_completions_without_prompt_is_400(strict: FakeStack) -> None:
    response = post(strict, {"model": "fake-a"}, "/v1/completions")
    assert response.status_code == 400
    assert envelope(response)["param"] == "prompt"


@pytest.mark.parametrize("raw", [b"{bad", b"", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_body_that_is_not_a_json_object_is_400(strict: FakeStack, raw: bytes) -> None:
    response = httpx.post(strict.gateway + "/v1/chat/completions", content=raw)
    assert response.status_code == 400
    assert envelope(response)["code"] == "invalid_json"


def test_deeply_nested_json_is_400_not_500(strict: FakeStack) -> None:
    raw = b'{"model":"fake-a","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = httpx.post(strict.gateway + "/v1/chat/completions", content=raw)
    assert response.status_code == 400


def test_body_over_the_limit_is_413(strict: FakeStack) -> None:
    body = {"model": "fake-a", "messages": [{"role": "user", "content": "x" * 200_000}]}
    response = post(strict, body)
    assert response.status_code == 413
    assert envelope(response)["code"] == "request_too_large"


def test_unknown_route_and_wrong_method_use_the_envelope(strict: FakeStack) -> None:
    missing = httpx.get(strict.gateway + "/v1/nothing-here")
    assert missing.status_code == 404
    assert envelope(missing)["code"] == "unknown_url"
    wrong = httpx.get(strict.gateway + "/v1/chat/completions")
    assert wrong.status_code == 405
    assert envelope(wrong)["code"] == "method_not_allowed"


def test_worker_4xx_reaches_client_with_status_and_message(strict: FakeStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(strict).chat.completions.create(
            model="fake-a",
            messages=CHAT,
            extra_body={"fake": {"status": 400}},
        )
    assert "fake error 400" in caught.value.message
    response = post(strict, {"model": "fake-a", "messages": CHAT, "fake": {"status": 422}})
    assert response.status_code == 422
    assert envelope(response)["message"] == "fake error 422"


def test_worker_5xx_becomes_502_and_503_stays_503(strict: FakeStack) -> None:
    failed = post(strict, {"model": "fake-a", "messages": CHAT, "fake": {"status": 500}})
    assert failed.status_code == 502
    assert envelope(failed)["code"] == "upstream_error"
    busy = post(strict, {"model": "fake-a", "messages": CHAT, "fake": {"status": 503}})
    assert busy.status_code == 503
    assert envelope(busy)["code"] == "upstream_overloaded"


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_worker_is_502(strict: FakeStack, stream: bool) -> None:
    response = post(strict, {"model": "dead", "messages": CHAT, "stream": stream})
    assert response.status_code == 502
    assert envelope(response)["code"] == "upstream_unavailable"


@pytest.mark.parametrize("stream", [False, True])
def test_stall_before_first_byte_is_504(strict: FakeStack, stream: bool) -> None:
    body = {"model": "fake-a", "messages": CHAT, "stream": stream, "fake": {"stall_first": 8}}
    response = post(strict, body)
    assert response.status_code == 504
    assert envelope(response)["code"] == "upstream_timeout"


@pytest.mark.parametrize("stream", [False, True])
def test_worker_that_never_accepts_is_502_after_the_connect_timeout(
    strict: FakeStack, stream: bool
) -> None:
    response = post(strict, {"model": "blackhole", "messages": CHAT, "stream": stream})
    assert response.status_code == 502  # 0.5 s connect timeout, not the 1 s first-byte one
    assert envelope(response)["code"] == "upstream_unavailable"
