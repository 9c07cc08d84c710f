"""Parse and check an OpenAI request body, modelling only the fields the gateway needs.

Everything else stays in the body bytes, which are forwarded to vLLM untouched (no re-encoding).
"""

from __future__ import annotations

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
    if endpoint is Endpoint.CHAT:
        _check_messages(doc)
    else:
        _check_prompt(doc)
    stream = _optional_bool(doc, "stream")
    include_usage = _include_usage(doc)
    max_tokens = _optional_positive_int(doc, "max_tokens")
    max_tokens = _optional_positive_int(doc, "max_completion_tokens") or max_tokens
    n = _optional_positive_int(doc, "n") or 1
    return RequestView(
        endpoint=endpoint,
        model=model,
        stream=stream,
        body=body,
        doc=doc,
        max_tokens=max_tokens,
        n=n,
        include_usage=include_usage,
    )
