"""Bad input on every path of the endpoint table gets a 4xx in the path's envelope (OpenAI's,
or Anthropic's on /v1/messages*), never a 500 and never a hang (real sockets, fake workers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.endpoint_stack import Stack, endpoint_stack

CHAT = [{"role": "user", "content": "hi"}]
ANTHROPIC = {"/v1/messages", "/v1/messages/count_tokens"}
MAX_BODY = 100_000

# path -> (a valid body, the runner-mismatched model or None, one bad body of its own)
PATHS: dict[str, tuple[dict[str, Any], str | None, dict[str, Any]]] = {
    "/v1/embeddings": ({"model": "embed", "input": "a"}, "chat", {"input": 5}),
    "/v1/responses": ({"model": "chat", "input": "a"}, "embed", {"input": 5}),
    "/v1/messages": (
        {"model": "chat", "messages": CHAT, "max_tokens": 4},
        "embed",
        {"messages": CHAT},  # no max_tokens
    ),
    "/v1/messages/count_tokens": ({"model": "chat", "messages": CHAT}, "embed", {"messages": []}),
    "/v1/rerank": ({"model": "embed", "query": "q", "documents": ["a"]}, "chat", {"query": "q"}),
    "/rerank": ({"model": "embed", "query": "q", "documents": ["a"]}, "chat", {"documents": 1}),
    "/v1/score": ({"model": "embed", "text_1": "a", "text_2": "b"}, "chat", {"text_1": "a"}),
    "/pooling": ({"model": "embed", "input": "a"}, "chat", {}),
    "/classify": ({"model": "embed", "input": "a"}, "chat", {"input": []}),
    "/tokenize": ({"model": "chat", "prompt": "a"}, None, {"prompt": 7}),
    "/detokenize": ({"model": "chat", "tokens": [1]}, None, {"tokens": ["a"]}),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, module_redis_url: str) -> Iterator[Stack]:
    env = {"GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)}
    with endpoint_stack(tmp_path_factory.mktemp("errors"), module_redis_url, env) as started:
        yield started


def _assert_envelope(path: str, answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, (path, answer.text)
    doc: dict[str, Any] = answer.json()
    if path in ANTHROPIC:
        assert doc["type"] == "error"
        assert set(doc["error"]) == {"type", "message"}
        assert doc["error"]["message"]
    else:
        assert set(doc["error"]) == {"message", "type", "param", "code"}
    return doc


def _bad_bodies(path: str) -> list[tuple[bytes | dict[str, Any], int]]:
    valid, wrong_runner, own = PATHS[path]
    model = valid["model"]
    cases: list[tuple[bytes | dict[str, Any], int]] = [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        ({k: v for k, v in valid.items() if k != "model"}, 400),
        ({**valid, "model": 12}, 400),
        ({**valid, "model": ""}, 400),
        ({**valid, "model": "no-such-model"}, 404),
        ({"model": model, **own}, 400),
        ({**valid, "pad": "x" * MAX_BODY}, 413),
    ]
    if wrong_runner is not None:
        cases.append(({**valid, "model": wrong_runner}, 400))
    return cases


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_input_on_each_json_path_is_a_4xx_in_its_envelope(stack: Stack, path: str) -> None:
    with httpx.Client(base_url=stack.url, headers=stack.auth(), timeout=5) as client:
        first = client.post(path, json=PATHS[path][0])
        assert first.status_code == 200, first.text
        for body, status in _bad_bodies(path):
            if isinstance(body, bytes):
                answer = client.post(path, content=body)
            else:
                answer = client.post(path, json=body)
            _assert_envelope(path, answer, status)
        _assert_envelope(path, client.get(path), 405)
        _assert_envelope(path, httpx.post(stack.url + path, json=PATHS[path][0]), 401)


def test_anthropic_statuses_and_types_for_the_gateways_own_errors(stack: Stack) -> None:
    path = "/v1/messages"
    valid = PATHS[path][0]
    cases = [
        ({}, valid, 401, "authentication_error"),
        ({"x-api-key": "sk-wrong"}, valid, 401, "authentication_error"),
        ({"x-api-key": stack.keys["open"]}, {**valid, "model": "nope"}, 404, "not_found_error"),
        ({"x-api-key": stack.keys["open"]}, {**valid, "max_tokens": "9"}, 400, None),
        ({"x-api-key": stack.keys["messages-tpm"]}, {**valid, "max_tokens": 999}, 429, None),
    ]
    for headers, body, status, kind in cases:
        doc = _assert_envelope(
            path, httpx.post(stack.url + path, json=body, headers=headers), status
        )
        expected = kind or {400: "invalid_request_error", 429: "rate_limit_error"}[status]
        assert doc["error"]["type"] == expected


def test_a_workers_refusal_on_messages_keeps_its_status_in_anthropics_envelope(
    stack: Stack,
) -> None:
    body = {**PATHS["/v1/messages"][0], "fake": {"status": 400}}
    answer = httpx.post(stack.url + "/v1/messages", json=body, headers=stack.auth())
    doc = _assert_envelope("/v1/messages", answer, 400)
    assert doc["error"]["message"] == "fake error 400"


AUDIO = "/v1/audio/transcriptions"


def test_bad_audio_uploads_are_4xx(stack: Stack) -> None:
    audio = ("a.wav", b"RIFF" + bytes(100), "audio/wav")
    with httpx.Client(base_url=stack.url, headers=stack.auth(), timeout=5) as client:
        cases = [
            (client.post(AUDIO, json={"model": "chat"}), 400),  # not a form
            (client.post(AUDIO, files={"file": audio}), 400),  # no model
            (client.post(AUDIO, data={"model": "nope"}, files={"file": audio}), 404),
            (
                client.post(
                    AUDIO, data={"model": "chat", "stream": "maybe"}, files={"file": audio}
                ),
                400,
            ),
            (
                client.post(
                    AUDIO,
                    data={"model": "chat"},
                    files={"file": ("big.wav", bytes(MAX_BODY + 1), "audio/wav")},
                ),
                413,
            ),
            (
                client.post(
                    AUDIO,
                    content=b"--xyz\r\nbroken",
                    headers={"content-type": "multipart/form-data; boundary=xyz"},
                ),
                400,
            ),
        ]
        for answer, status in cases:
            _assert_envelope(AUDIO, answer, status)


def test_requests_about_unknown_stored_responses_are_404s(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, headers=stack.auth(), timeout=5) as client:
        _assert_envelope("/v1/responses/x", client.get("/v1/responses/resp_unknown"), 404)
        _assert_envelope("/v1/responses/x", client.post("/v1/responses/resp_unknown/cancel"), 404)
        _assert_envelope("/v1/responses/x", client.delete("/v1/responses/resp_unknown"), 405)
        _assert_envelope("/v1/responses/x", client.get("/v1/responses/resp_unknown/cancel"), 405)
        body = {"model": "chat", "input": "x", "previous_response_id": 5}
        _assert_envelope("/v1/responses", client.post("/v1/responses", json=body), 400)


def test_a_stream_cut_mid_way_ends_with_the_apis_own_error_event(stack: Stack) -> None:
    cases = {
        "/v1/messages": (PATHS["/v1/messages"][0], b'event: error\ndata: {"type":"error",'),
        "/v1/responses": (PATHS["/v1/responses"][0], b'event: error\ndata: {"type":"error",'),
    }
    for path, (body, ending) in cases.items():
        scripted = {**body, "stream": True, "fake": {"chunks": 3, "cut_after": 2}}
        with httpx.stream("POST", stack.url + path, json=scripted, headers=stack.auth()) as answer:
            assert answer.status_code == 200
            raw = b"".join(answer.iter_bytes())
        last = raw.rstrip(b"\n").split(b"\n\n")[-1]
        assert last.startswith(ending), raw
        if path == "/v1/messages":
            assert b'"type":"api_error"' in last
