"""Tracing: one span per request with the OpenTelemetry GenAI attributes, a child of the
client's traceparent, whose own traceparent reaches the worker. The gateway runs in this
process (uvicorn on a real socket) so the SDK's in-memory exporter can collect its spans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from gateway.config.models import parse_models_config
from gateway.config.settings import Settings
from gateway.observe.tracing import Tracing
from tests.procs import free_port, one_worker_models, start_fake

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[str, str, InMemorySpanExporter]]:
    fake, fake_url = start_fake(tmp_path, "fake-a")
    exporter = InMemorySpanExporter()
    port = free_port()
    settings = Settings(auth_enabled=False, health_interval=0, port=port)
    config = parse_models_config(one_worker_models(fake_url))
    app = create_app(settings, config, Tracing(SimpleSpanProcessor(exporter)))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}", fake_url, exporter
    finally:
        server.should_exit = True
        await serving
        fake.stop()


async def test_each_request_is_one_genai_span_and_its_traceparent_reaches_the_worker(
    traced: tuple[str, str, InMemorySpanExporter],
) -> None:
    url, fake_url, exporter = traced
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(
        model="fake-a",
        messages=CHAT,
        max_tokens=7,
        temperature=0.5,
    )
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "chat fake-a"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "vllm"
    assert attributes["gen_ai.request.model"] == "fake-a"
    assert attributes["gen_ai.request.max_tokens"] == 7
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == 3
    assert attributes["gen_ai.usage.output_tokens"] == 1
    assert attributes["http.response.status_code"] == 200
    assert attributes["gateway.worker"] == "w0"
    async with httpx.AsyncClient() as http:
        stats = (await http.get(fake_url + "/fake/stats")).json()
    seen = stats["last_headers"]["traceparent"]
    assert seen.split("-")[1] == f"{span.context.trace_id:032x}"
    assert seen.split("-")[2] == f"{span.context.span_id:016x}"


async def test_span_continues_the_clients_trace_and_counts_streamed_usage(
    traced: tuple[str, str, InMemorySpanExporter],
) -> None:
    url, _, exporter = traced
    client = openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key="x",
        max_retries=0,
        default_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
    )
    stream = await client.completions.create(model="fake-a", prompt="hi", stream=True)
    async for _ in stream:
        pass
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "text_completion fake-a"
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_PARENT
    assert attributes["gen_ai.usage.output_tokens"] == 3  # from the usage chunk vLLM was asked for
    ttft = attributes["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttft, float)
    assert ttft > 0


async def test_refused_requests_are_spans_with_their_error(
    traced: tuple[str, str, InMemorySpanExporter],
) -> None:
    url, _, exporter = traced
    async with httpx.AsyncClient() as client:
        body = {"model": "nope", "messages": CHAT}
        assert (await client.post(url + "/v1/chat/completions", json=body)).status_code == 404
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "model_not_found"
    assert attributes["http.response.status_code"] == 404


async def test_the_other_endpoints_are_spans_named_by_their_operation(
    traced: tuple[str, str, InMemorySpanExporter],
) -> None:
    url, fake_url, exporter = traced
    async with httpx.AsyncClient() as client:
        body = {"model": "fake-a", "messages": CHAT, "max_tokens": 9, "stream": True}
        assert (await client.post(url + "/v1/messages", json=body)).status_code == 200
        tokenize = {"model": "fake-a", "prompt": "hi"}
        assert (await client.post(url + "/tokenize", json=tokenize)).status_code == 200
        stats = (await client.get(fake_url + "/fake/stats")).json()
    messages, tokenized = exporter.get_finished_spans()
    assert messages.name == "chat fake-a"
    attributes = dict(messages.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 3  # from Anthropic's message_start
    assert attributes["gen_ai.usage.output_tokens"] == 3  # and its message_delta
    assert attributes["gen_ai.request.max_tokens"] == 9
    assert tokenized.name == "tokenize fake-a"
    assert (
        stats["last_headers"]["traceparent"].split("-")[1] == f"{tokenized.context.trace_id:032x}"
    )
