"""Every path of the endpoint table through two gateway replicas (real sockets, shared Redis)
to fake vLLM workers: routed by `model` to a worker whose runner serves it, limited, counted
in metrics and the access line; stored responses stay with their worker; LoRA adapters go to
a worker holding them, or are loaded on one first."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.endpoint_stack import Stack, endpoint_stack

CHAT = [{"role": "user", "content": "hi"}]
AUDIO_FILE = ("a.wav", b"RIFF" + bytes(2000), "audio/wav")

# path -> (model, JSON body beyond `model`)
JSON_PATHS: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("chat", {"messages": CHAT}),
    "/v1/completions": ("chat", {"prompt": "hi"}),
    "/v1/embeddings": ("embed", {"input": ["a", "b"]}),
    "/v1/responses": ("chat", {"input": "hi"}),
    "/v1/messages": ("chat", {"messages": CHAT, "max_tokens": 5}),
    "/v1/messages/count_tokens": ("chat", {"messages": CHAT}),
    "/v1/rerank": ("embed", {"query": "q", "documents": ["a", "b"]}),
    "/rerank": ("embed", {"query": "q", "documents": ["a"]}),
    "/v1/score": ("embed", {"text_1": "a", "text_2": "b"}),
    "/pooling": ("embed", {"input": "a"}),
    "/classify": ("embed", {"input": "a"}),
    "/tokenize": ("chat", {"prompt": "hi"}),
    "/detokenize": ("embed", {"tokens": [1, 2]}),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, module_redis_url: str) -> Iterator[Stack]:
    with endpoint_stack(tmp_path_factory.mktemp("endpoints"), module_redis_url) as started:
        yield started


def _access(log: Path) -> list[dict[str, Any]]:
    time.sleep(0.3)  # the access log is written by a background thread
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [line for line in lines if line.get("logger") == "gateway.access"]


@pytest.mark.parametrize("path", list(JSON_PATHS))
def test_each_json_path_reaches_a_worker_of_its_model_with_the_body_untouched(
    stack: Stack, path: str
) -> None:
    model, extra = JSON_PATHS[path]
    body = {"model": model, **extra, "vllm_only_field": {"kept": [1, 2]}}
    answer = httpx.post(stack.url + path, json=body, headers=stack.auth())
    assert answer.status_code == 200, answer.text
    workers = ["e0"] if model == "embed" else ["c0", "c1"]
    seen = [stack.stats(w) for w in workers]
    last = [s for s in seen if s["last_path"] == path]
    assert last, f"no worker of {model} saw {path}"
    assert any(s["last_body"] == body for s in last)  # unknown fields pass through


def test_audio_uploads_are_routed_by_the_form_model_and_relayed_as_sent(stack: Stack) -> None:
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        answer = httpx.post(
            stack.url + path,
            data={"model": "chat", "language": "en"},
            files={"file": AUDIO_FILE},
            headers=stack.auth(),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"text": "fake transcription"}
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.keys["open"], max_retries=0)
    text = client.audio.transcriptions.create(model="chat", file=AUDIO_FILE)
    assert text.text == "fake transcription"


def test_a_path_the_models_runner_does_not_serve_is_a_400_naming_it(stack: Stack) -> None:
    embed_on_chat = httpx.post(
        stack.url + "/v1/embeddings", json={"model": "chat", "input": "x"}, headers=stack.auth()
    )
    assert embed_on_chat.status_code == 400
    assert embed_on_chat.json()["error"]["code"] == "unsupported_endpoint"
    chat_on_embed = httpx.post(
        stack.url + "/v1/messages",
        json={"model": "embed", "messages": CHAT, "max_tokens": 3},
        headers=stack.auth(),
    )
    assert chat_on_embed.status_code == 400
    assert chat_on_embed.json()["error"]["type"] == "invalid_request_error"  # Anthropic's


def test_embeddings_count_prompt_tokens_against_tpm(stack: Stack) -> None:
    stack.control("e0", prompt_tokens=60)
    try:
        statuses = []
        for _ in range(3):
            answer = httpx.post(
                stack.url + "/v1/embeddings",
                json={"model": "embed", "input": "x"},
                headers=stack.auth("embed-tpm"),
            )
            statuses.append(answer.status_code)
        assert statuses == [200, 200, 429]  # 60 + 60 used of 100: the third must wait
        error = answer.json()["error"]
        assert error["param"] == "tokens"
        assert answer.headers["x-ratelimit-limit-tokens"] == "100"
    finally:
        stack.control("e0", prompt_tokens=3)


def test_tokenize_has_rpm_but_no_token_limit(stack: Stack) -> None:
    statuses = [
        httpx.post(
            stack.url + "/tokenize",
            json={"model": "chat", "prompt": "a long prompt " * 50},  # > the key's 1 tpm
            headers=stack.auth("rpm-2"),
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


STREAMS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "chat", "messages": CHAT},
    "/v1/responses": {"model": "chat", "input": "hi"},
    "/v1/messages": {"model": "chat", "messages": CHAT, "max_tokens": 9},
}


async def _hold_stream(url: str, path: str, body: dict[str, Any], auth: dict[str, str]) -> str:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url + path, json=body, headers=auth) as answer,
    ):
        assert answer.status_code == 200
        return "".join([chunk async for chunk in answer.aiter_text()])


@pytest.mark.parametrize("path", [*STREAMS, "/v1/audio/transcriptions"])
async def test_a_stream_of_each_kind_holds_its_keys_concurrency_slot(
    stack: Stack, path: str
) -> None:
    auth = stack.auth("solo")
    if path in STREAMS:
        body = {**STREAMS[path], "stream": True, "fake": {"chunks": 3, "gap": 0.3}}
        holder = asyncio.create_task(_hold_stream(stack.url, path, body, auth))
    else:
        holder = asyncio.create_task(_hold_audio(stack.url, auth))
    await asyncio.sleep(0.4)
    async with httpx.AsyncClient() as client:
        refused = await client.post(
            stack.gateways[1] + "/tokenize", json={"model": "chat", "prompt": "x"}, headers=auth
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["param"] == "concurrency"
        text = await holder
        again = await client.post(
            stack.url + "/tokenize", json={"model": "chat", "prompt": "x"}, headers=auth
        )
    assert again.status_code == 200
    if path == "/v1/responses":
        assert text.startswith("event: response.created\n")
        assert "event: response.completed\n" in text
    elif path == "/v1/messages":
        assert text.startswith("event: message_start\n")
        assert text.rstrip().endswith('data: {"type":"message_stop"}')
    else:
        assert text.endswith("data: [DONE]\n\n")


async def _hold_audio(url: str, auth: dict[str, str]) -> str:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "POST",
            url + "/v1/audio/transcriptions",
            data={"model": "chat", "stream": "true", "fake_gap": "0.3"},
            files={"file": AUDIO_FILE},
            headers=auth,
        ) as answer,
    ):
        assert answer.status_code == 200
        return "".join([chunk async for chunk in answer.aiter_text()])


def test_metrics_and_access_lines_are_labelled_by_endpoint(stack: Stack) -> None:
    httpx.post(
        stack.url + "/v1/embeddings", json={"model": "embed", "input": "x"}, headers=stack.auth()
    )
    httpx.post(
        stack.url + "/v1/messages",
        json={"model": "chat", "messages": CHAT, "max_tokens": 4},
        headers=stack.auth(),
    )
    metrics = httpx.get(stack.url + "/metrics").text
    for model, path in (("embed", "/v1/embeddings"), ("chat", "/v1/messages")):
        assert f'gateway_requests_total{{endpoint="{path}",model="{model}",status="200"}}' in (
            metrics
        )
    lines = _access(stack.logs[0])
    embeds = [line for line in lines if line["endpoint"] == "/v1/embeddings"]
    messages = [line for line in lines if line["endpoint"] == "/v1/messages"]
    assert embeds[-1]["model"] == "embed"
    assert embeds[-1]["worker"] == "e0"
    assert embeds[-1]["prompt_tokens"] == 3
    assert embeds[-1]["completion_tokens"] == 0
    assert messages[-1]["prompt_tokens"] == 3
    assert messages[-1]["completion_tokens"] == 1


# --- the Responses API's stored responses ------------------------------------------------------


def test_a_stored_response_is_reached_from_either_replica(stack: Stack) -> None:
    one, two = (
        openai.OpenAI(base_url=url + "/v1", api_key=stack.keys["open"], max_retries=0)
        for url in stack.gateways
    )
    for _ in range(4):  # the two chat workers take turns: each holds some of these
        made = one.responses.create(model="chat", input="hi")
        assert two.responses.retrieve(made.id).id == made.id
        follow = two.responses.create(model="chat", input="more", previous_response_id=made.id)
        assert follow.previous_response_id == made.id
        assert one.responses.retrieve(follow.id).id == follow.id
    queried = httpx.get(
        stack.gateways[1] + f"/v1/responses/{made.id}?include[]=x", headers=stack.auth()
    )
    assert queried.json()["id"] == made.id
    streamed = one.responses.create(model="chat", input="hi", stream=True)
    created = next(event for event in streamed if event.type == "response.created")
    cancelled = httpx.post(
        stack.gateways[1] + f"/v1/responses/{created.response.id}/cancel", headers=stack.auth()
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


def test_an_unknown_response_id_is_a_404_from_the_gateway(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.keys["open"], max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve("resp_never_made")
    assert caught.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="chat", input="x", previous_response_id="resp_nope")


def test_a_response_whose_worker_is_down_is_a_502_not_another_workers_answer(
    stack: Stack,
) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.keys["open"], max_retries=0)
    made = client.responses.create(model="chat", input="hi")
    holder = next(w for w in ("c0", "c1") if stack.stats(w)["last_path"] == "/v1/responses")
    stack.control(holder, health=503)
    try:
        _wait_until(lambda: holder not in _ready_workers(stack, "chat"))  # probes see it down
        with pytest.raises(openai.APIStatusError) as caught:
            client.responses.retrieve(made.id)
        assert caught.value.status_code == 502
        assert caught.value.code == "response_worker_unavailable"
    finally:
        stack.control(holder, health=200)
        _wait_until(lambda: holder in _ready_workers(stack, "chat"))


def _ready_workers(stack: Stack, model: str) -> list[str]:
    workers: list[str] = httpx.get(stack.url + "/ready").json()["models"][model]
    return workers


def _wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


# --- LoRA adapters -----------------------------------------------------------------------------


def test_adapters_are_listed_as_models_with_their_parent(stack: Stack) -> None:
    listed = httpx.get(stack.url + "/v1/models", headers=stack.auth()).json()["data"]
    parents = {m["id"]: m.get("parent") for m in listed}
    assert parents["chat-lora"] == "chat"
    assert parents["fixed-lora"] == "fixed"
    assert parents["chat"] is None
    only = httpx.get(stack.url + "/v1/models", headers=stack.auth("lora-only")).json()["data"]
    assert [m["id"] for m in only] == ["chat-lora"]


async def test_an_adapter_is_loaded_once_on_one_worker_then_served_there(stack: Stack) -> None:
    body = {"model": "chat-lora-2", "messages": CHAT}
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(
                client.post(url + "/v1/chat/completions", json=body, headers=stack.auth())
                for url in [stack.url] * 6
            )
        )
    assert [a.status_code for a in answers] == [200] * 6
    loads = {w: stack.stats(w)["lora_loads"] for w in ("c0", "c1")}
    assert sum(loads.values()) == 1  # one load for six concurrent requests
    holder = next(w for w, n in loads.items() if n)
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(4):
            url = stack.gateways[1] + "/v1/chat/completions"
            assert (await client.post(url, json=body, headers=stack.auth())).is_success
            assert stack.stats(holder)["last_body"]["model"] == "chat-lora-2"
    assert sum(stack.stats(w)["lora_loads"] for w in ("c0", "c1")) == 1  # learned by probes


def test_an_adapter_not_loaded_and_not_loadable_is_a_503(stack: Stack) -> None:
    body = {"model": "fixed-lora", "messages": CHAT}
    url = stack.url + "/v1/chat/completions"
    assert httpx.post(url, json=body, headers=stack.auth()).is_success
    stack.control("f0", adapters=[])
    try:
        time.sleep(0.6)
        answer = httpx.post(stack.url + "/v1/chat/completions", json=body, headers=stack.auth())
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "adapter_not_loaded"
    finally:
        stack.control("f0", adapters=["fixed-lora"])


def test_a_keys_allowlist_covers_adapter_names(stack: Stack) -> None:
    auth = stack.auth("lora-only")
    lora = {"model": "chat-lora", "messages": CHAT}
    assert httpx.post(stack.url + "/v1/chat/completions", json=lora, headers=auth).is_success
    base = httpx.post(
        stack.url + "/v1/chat/completions", json={**lora, "model": "chat"}, headers=auth
    )
    assert base.status_code == 404
