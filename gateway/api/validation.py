"""Parse and check an OpenAI request body, modelling only the fields the gateway needs.

Everything else stays in the body bytes, which are forwarded to vLLM untouched (no re-encoding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import InvalidJSON, InvalidType, InvalidValue, MissingParameter
from gateway.request import Endpoint, RequestView

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _wrong_type(param: str, expected: str, value: object) -> InvalidType:
    return InvalidType(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
    )


def _optional_bool(doc: dict[str, Any], param: str) -> bool:
    value = doc.get(param)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _wrong_type(param, "a boolean", value)
    return value


def _optional_positive_int(doc: dict[str, Any], param: str) -> int | None:
    value = doc.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "an integer", value)
    if value < 1:
        raise InvalidValue(
            f"Invalid value for '{param}': expected an integer of at least 1, got {value}.",
            param=param,
        )
    return value


def _include_usage(doc: dict[str, Any]) -> bool:
    options = doc.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise _wrong_type("stream_options.include_usage", "a boolean", include)
    return include is True


def _check_messages(doc: dict[str, Any]) -> None:
    if "messages" not in doc:
        raise MissingParameter("Missing required parameter: 'messages'.", param="messages")
    messages = doc["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise InvalidValue(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _wrong_type(f"messages[{index}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            param = f"messages[{index}].role"
            if role is None:
                raise MissingParameter(f"Missing required parameter: '{param}'.", param=param)
            raise _wrong_type(param, "a string", role)


def _check_prompt(doc: dict[str, Any]) -> None:
    if "prompt" not in doc:
        if "prompt_embeds" in doc:  # vLLM extension: embeddings instead of text
            return
        raise MissingParameter("Missing required parameter: 'prompt'.", param="prompt")
    prompt = doc["prompt"]
    if not isinstance(prompt, str | list):
        raise _wrong_type("prompt", "a string or an array", prompt)


def _required(doc: dict[str, Any], param: str, types: type | tuple[type, ...], what: str) -> None:
    if param not in doc:
        raise MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    if not isinstance(doc[param], types) or isinstance(doc[param], bool):
        raise _wrong_type(param, what, doc[param])


def _optional(doc: dict[str, Any], param: str, types: type | tuple[type, ...], what: str) -> None:
    value = doc.get(param)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise _wrong_type(param, what, value)


def _check_input(doc: dict[str, Any]) -> None:
    """Embeddings, pooling, classify: `input` as a string, strings or token arrays. (vLLM's
    chat-style `messages` form is accepted in its place.)"""
    if "messages" in doc and "input" not in doc:
        return
    _required(doc, "input", (str, list), "a string or an array")
    if isinstance(doc["input"], list) and not doc["input"]:
        raise InvalidValue("Invalid 'input': empty array.", param="input")


def _check_responses(doc: dict[str, Any]) -> None:
    _optional(doc, "input", (str, list), "a string or an array")
    _optional(doc, "previous_response_id", str, "a string")


def _check_anthropic(doc: dict[str, Any]) -> None:
    _check_messages(doc)
    _required(doc, "max_tokens", int, "an integer")


def _check_count_tokens(doc: dict[str, Any]) -> None:
    _check_messages(doc)


def _check_rerank(doc: dict[str, Any]) -> None:
    _required(doc, "query", (str, dict), "a string")
    _required(doc, "documents", list, "an array")


def _check_score(doc: dict[str, Any]) -> None:
    for pair in (("text_1", "text_2"), ("queries", "documents"), ("data_1", "data_2")):
        if pair[0] in doc or pair[1] in doc:
            _required(doc, pair[0], (str, list, dict), "a string or an array")
            _required(doc, pair[1], (str, list, dict), "a string or an array")
            return
    raise MissingParameter("Missing required parameter: 'text_1' and 'text_2'.", param="text_1")


def _check_tokenize(doc: dict[str, Any]) -> None:
    if "messages" in doc:
        _check_messages(doc)
    else:
        _required(doc, "prompt", str, "a string")


def _check_detokenize(doc: dict[str, Any]) -> None:
    _required(doc, "tokens", list, "an array")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in doc["tokens"]):
        raise InvalidType("Invalid 'tokens': expected an array of integers.", param="tokens")


def _nothing(doc: dict[str, Any]) -> None:
    return None


# What the gateway checks of each JSON body beyond `model`: only what it reads or what would
# otherwise reach a worker as a confusing error. Everything else is vLLM's to judge.
_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    Endpoint.CHAT.path: _check_messages,
    Endpoint.COMPLETIONS.path: _check_prompt,
    Endpoint.EMBEDDINGS.path: _check_input,
    Endpoint.RESPONSES.path: _check_responses,
    Endpoint.MESSAGES.path: _check_anthropic,
    Endpoint.COUNT_TOKENS.path: _check_count_tokens,
    Endpoint.RERANK.path: _check_rerank,
    Endpoint.RERANK_BARE.path: _check_rerank,
    Endpoint.SCORE.path: _check_score,
    Endpoint.POOLING.path: _check_input,
    Endpoint.CLASSIFY.path: _check_input,
    Endpoint.TOKENIZE.path: _check_tokenize,
    Endpoint.DETOKENIZE.path: _check_detokenize,
}


def _model(doc: dict[str, Any]) -> str:
    if "model" not in doc:
        raise MissingParameter("you must provide a model parameter", param="model")
    model = doc["model"]
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if not model:
        raise InvalidValue("Invalid 'model': must not be empty.", param="model")
    return model


def parse_request(endpoint: Endpoint, body: bytes) -> RequestView:
    """Validate `body` for `endpoint`; raise an InvalidRequest subclass naming the bad field."""
    if not body.strip():
        raise InvalidJSON("The request body is empty: expected a JSON object.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(doc, dict):
        raise InvalidJSON(f"The request body must be a JSON object, not {_type_name(doc)}.")
    model = _model(doc)
    _CHECKS.get(endpoint.path, _nothing)(doc)
    spec = endpoint.spec
    stream = _optional_bool(doc, "stream") if spec.stream != "none" else False
    include_usage = _include_usage(doc) if spec.stream == "data" else False
    max_tokens = _optional_positive_int(doc, spec.cap_param)
    max_tokens = _optional_positive_int(doc, "max_completion_tokens") or max_tokens
    n = _optional_positive_int(doc, "n") or 1
    previous = None
    if endpoint is Endpoint.RESPONSES:
        previous = doc.get("previous_response_id") or None
    return RequestView(
        endpoint=endpoint,
        model=model,
        stream=stream,
        body=body,
        doc=doc,
        max_tokens=max_tokens,
        n=n,
        include_usage=include_usage,
        response_id=previous,
    )
