"""API keys: 401 without a valid key, 404 for a model the key may not use, reload on change."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.config.keys import hash_key, new_key
from tests.procs import start_fake, start_gateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass
class AuthStack:
    gateway: str
    fake: str
    keys_file: Path
    full: str  # may use every model, no limits
    narrow: str  # may use fake-a only, tpm-limited


def keys_yaml(entries: list[tuple[str, str, str]]) -> str:
    return "keys:\n" + "".join(
        f"  - {{name: {n}, sha256: {hash_key(k)}{extra}}}\n" for n, k, extra in entries
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    tmp = tmp_path_factory.mktemp("auth")
    fake, fake_url = start_fake(tmp, "fake-a")
    try:
        yield from _auth_stack(tmp, fake_url)
    finally:
        fake.stop()


def _auth_stack(tmp: Path, fake_url: str) -> Iterator[AuthStack]:
    full, narrow = new_key(), new_key()
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(
        keys_yaml([("full", full, ""), ("narrow", narrow, ", models: [fake-a], tpm: 100000")])
    )
    models = (
        f"models:\n  - {{name: fake-a, model: f, workers: [{{name: a0, url: '{fake_url}'}}]}}\n"
        f"  - {{name: fake-b, model: f, workers: [{{name: b0, url: '{fake_url}'}}]}}\n"
    )
    gateway, url = start_gateway(
        tmp,
        models,
        {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(keys_file),
            "GATEWAY_KEYS_RELOAD_INTERVAL": "0.2",
        },
    )
    try:
        yield AuthStack(url, fake_url, keys_file, full, narrow)
    finally:
        gateway.stop()


def sdk(stack: AuthStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway + "/v1", api_key=key, max_retries=0)


def test_valid_key_is_served(stack: AuthStack) -> None:
    reply = sdk(stack, stack.full).chat.completions.create(model="fake-b", messages=CHAT)
    assert reply.choices[0].message.content == "hello"


@pytest.mark.parametrize("header", [None, "Bearer sk-gw-wrong", "Basic abc", "Bearer", "bearer  x"])
def test_missing_or_unknown_key_is_401(stack: AuthStack, header: str | None) -> None:
    headers = {"authorization": header} if header is not None else {}
    response = httpx.post(
        stack.gateway + "/v1/chat/completions",
        headers=headers,
        json={"model": "fake-a", "messages": CHAT},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "sk-gw-wrong" not in response.text


def test_sdk_raises_authentication_error(stack: AuthStack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(stack, "sk-gw-not-a-key").chat.completions.create(model="fake-a", messages=CHAT)
    assert caught.value.code == "invalid_api_key"


def test_model_the_key_may_not_use_is_not_found(stack: AuthStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(stack, stack.narrow).chat.completions.create(model="fake-b", messages=CHAT)
    assert caught.value.code == "model_not_found"


def test_models_list_shows_only_what_the_key_may_use(stack: AuthStack) -> None:
    assert [m.id for m in sdk(stack, stack.narrow).models.list()] == ["fake-a"]
    assert sorted(m.id for m in sdk(stack, stack.full).models.list()) == ["fake-a", "fake-b"]
    assert httpx.get(stack.gateway + "/v1/models").status_code == 401


def test_operations_endpoints_need_no_key(stack: AuthStack) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(stack.gateway + path).status_code == 200


def test_a_key_added_to_the_file_works_without_restart(stack: AuthStack) -> None:
    added = new_key()
    text = stack.keys_file.read_text() + f"  - {{name: added, sha256: {hash_key(added)}}}\n"
    stack.keys_file.write_text(text)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = httpx.post(
            stack.gateway + "/v1/chat/completions",
            headers={"authorization": f"Bearer {added}"},
            json={"model": "fake-a", "messages": CHAT},
        )
        if response.status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the new key was never accepted")


def test_stream_usage_asked_by_the_gateway_is_stripped(stack: AuthStack) -> None:
    body = {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"chunks": 3}}
    headers = {"authorization": f"Bearer {stack.narrow}"}
    raw = httpx.post(stack.gateway + "/v1/chat/completions", json=body, headers=headers).content
    stats = httpx.get(stack.fake + "/fake/stats").json()
    assert stats["last_body"]["stream_options"] == {"include_usage": True}  # asked for accounting
    events = [e for e in raw.split(b"\n\n") if e]
    assert b'"usage"' not in raw  # ... but the client did not ask, so it never sees it
    assert len(events) == 4
    assert events[-1] == b"data: [DONE]"


def test_stream_usage_asked_by_the_client_is_kept(stack: AuthStack) -> None:
    body = {
        "model": "fake-a",
        "messages": CHAT,
        "stream": True,
        "fake": {"chunks": 3},
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {stack.narrow}"}
    raw = httpx.post(stack.gateway + "/v1/chat/completions", json=body, headers=headers).content
    events = [e for e in raw.split(b"\n\n") if e]
    usage = orjson.loads(events[-2][6:])
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 6


def test_keys_never_reach_the_gateway_log(
    stack: AuthStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("auth*/gateway-*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        assert stack.full not in text
        assert stack.narrow not in text
