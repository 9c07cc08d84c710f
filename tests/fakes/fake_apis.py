"""The fake vLLM server's answers on the paths beyond the completions, shaped as vLLM 0.32
writes them (vllm/entrypoints/openai/*/protocol.py and serving_*.py): embeddings, the Responses
API (with its in-memory store), the Anthropic Messages API, rerank/score/pooling/classify,
tokenize/detokenize, audio transcription/translation (multipart), LoRA loading and /v1/models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Answer = tuple[int, dict[str, Any]]


@dataclass
class ApiState:
    model: str
    prompt_tokens: int = 3
    adapters: list[str] = field(default_factory=list)  # LoRA adapters loaded
    lora_loads: int = 0
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)


def not_found(message: str) -> Answer:
    return 404, {"error": {"message": message, "type": "NotFoundError", "param": None, "code": 404}}


def usage(state: ApiState, completion: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"prompt_tokens": state.prompt_tokens}
    report["total_tokens"] = state.prompt_tokens + (completion or 0)
    report["completion_tokens"] = completion or 0
    return report


def answer(state: ApiState, path: str, body: dict[str, Any]) -> Answer | None:
    """The non-streamed answer of a JSON POST to `path` (None: not one of these paths)."""
    model = body.get("model", state.model)
    if path == "/v1/embeddings":
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs else 1
        data = [
            {"index": i, "object": "embedding", "embedding": [0.1, 0.2, 0.3]} for i in range(count)
        ]
        doc = {"id": "embd-fake", "object": "list", "created": 0, "model": model, "data": data}
        return 200, {**doc, "usage": usage(state)}
    if path == "/v1/responses":
        return _response(state, body, model)
    if path == "/v1/messages":
        return 200, _message(state, model, body.get("fake", {}).get("text", "hello"))
    if path == "/v1/messages/count_tokens":
        return 200, {"input_tokens": state.prompt_tokens}
    if path in {"/v1/rerank", "/rerank"}:
        results = [
            {"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
            for i, d in enumerate(body.get("documents", []))
        ]
        return 200, {
            "id": "rerank-fake",
            "model": model,
            "usage": {"total_tokens": state.prompt_tokens},
            "results": results,
        }
    if path == "/v1/score":
        data = [{"index": 0, "object": "score", "score": 0.5}]
        return 200, _listing(model, data, state)
    if path == "/pooling":
        return 200, _listing(model, [{"index": 0, "object": "pooling", "data": [0.1]}], state)
    if path == "/classify":
        data = [{"index": 0, "label": "LABEL_0", "probs": [0.9, 0.1], "num_classes": 2}]
        return 200, _listing(model, data, state)
    if path == "/tokenize":
        tokens = list(range(state.prompt_tokens))
        return 200, {"count": len(tokens), "max_model_len": 2048, "tokens": tokens}
    if path == "/detokenize":
        return 200, {"prompt": " ".join(str(t) for t in body.get("tokens", []))}
    if path == "/v1/load_lora_adapter":
        name = body.get("lora_name", "")
        if name in state.adapters:
            return 400, {
                "error": {"message": f"The lora adapter '{name}' has already been loaded."}
            }
        state.adapters.append(name)
        state.lora_loads += 1
        return 200, {}
    return None


def _listing(model: str, data: list[dict[str, Any]], state: ApiState) -> dict[str, Any]:
    doc = {"id": "fake", "object": "list", "created": 0, "model": model, "data": data}
    return {**doc, "usage": usage(state)}


def _response(state: ApiState, body: dict[str, Any], model: str) -> Answer:
    previous = body.get("previous_response_id")
    if previous is not None and previous not in state.responses:
        return not_found(f"Response with id '{previous}' not found.")
    doc = response_doc(state, model, body.get("fake", {}).get("text", "hello"), previous)
    if body.get("store", True):
        state.responses[doc["id"]] = doc
    return 200, doc


def response_doc(
    state: ApiState, model: str, text: str, previous: str | None, status: str = "completed"
) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    message = {
        "type": "message",
        "id": "msg_" + os.urandom(6).hex(),
        "role": "assistant",
        "status": "completed",
        "content": content,
    }
    return {
        "id": "resp_" + os.urandom(12).hex(),
        "object": "response",
        "created_at": 0,
        "model": model,
        "status": status,
        "output": [message] if status == "completed" else [],
        "previous_response_id": previous,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": state.prompt_tokens,
            "output_tokens": 1,
            "total_tokens": state.prompt_tokens + 1,
        },
    }


def by_id(state: ApiState, method: str, path: str) -> Answer | None:
    """GET /v1/responses/{id} and POST /v1/responses/{id}/cancel."""
    if not path.startswith("/v1/responses/"):
        return None
    rest = path[len("/v1/responses/") :].partition("?")[0]
    cancel = rest.endswith("/cancel")
    response_id = rest.removesuffix("/cancel")
    doc = state.responses.get(response_id)
    if doc is None:
        return not_found(f"Response with id '{response_id}' not found.")
    if cancel and method == "POST":
        doc = state.responses[response_id] = {**doc, "status": "cancelled"}
    return 200, doc


def models(state: ApiState) -> dict[str, Any]:
    base = {"id": state.model, "object": "model", "owned_by": "vllm", "parent": None}
    loras = [
        {"id": name, "object": "model", "owned_by": "vllm", "parent": state.model}
        for name in state.adapters
    ]
    return {"object": "list", "data": [base, *loras]}


def _message(state: ApiState, model: str, text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": state.prompt_tokens, "output_tokens": 1},
    }


def named_events(state: ApiState, path: str, body: dict[str, Any], count: int) -> Iterator[bytes]:
    """A stream of named events: the Responses API's, or Anthropic's. The first event is
    yielded first (the Responses store keeps it), the rest follow."""
    model = body.get("model", state.model)
    text = body.get("fake", {}).get("text", "t")
    if path == "/v1/responses":
        doc = response_doc(state, model, text, body.get("previous_response_id"), "in_progress")
        if body.get("store", True):
            state.responses[doc["id"]] = doc
        yield _event("response.created", {"type": "response.created", "response": doc})
        for index in range(count):
            delta = {"type": "response.output_text.delta", "delta": f"{text}{index} "}
            yield _event("response.output_text.delta", delta)
        done = {**doc, "status": "completed", "usage": {**doc["usage"], "output_tokens": count}}
        state.responses[doc["id"]] = done
        yield _event("response.completed", {"type": "response.completed", "response": done})
        return
    message = {**_message(state, model, ""), "content": [], "stop_reason": None}
    yield _event("message_start", {"type": "message_start", "message": message})
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield _event("content_block_start", block)
    for index in range(count):
        delta = {"type": "text_delta", "text": f"{text}{index} "}
        yield _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": count},
    }
    yield _event("message_delta", end)
    yield _event("message_stop", {"type": "message_stop"})


def _event(name: str, doc: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


def form_field(raw: bytes, name: str) -> str | None:
    """A text field of a multipart body (just enough for the fake)."""
    marker = f'name="{name}"\r\n\r\n'.encode()
    start = raw.find(marker)
    if start < 0:
        return None
    start += len(marker)
    return raw[start : raw.find(b"\r\n", start)].decode()


def parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if content_type.startswith("multipart/form-data"):
        stream = form_field(raw, "stream") == "true"
        gap = float(form_field(raw, "fake_gap") or 0)
        model = form_field(raw, "model")
        return {"multipart": True, "model": model, "stream": stream, "fake": {"gap": gap}}
    if not raw:
        return {}
    body: dict[str, Any] = json.loads(raw)
    return body
