"""The few text fields the gateway reads from a multipart/form-data body (audio uploads):
`model` and `stream`, found by scanning the bytes once; the file part is never copied, and the
body goes to the worker exactly as the client sent it."""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest, InvalidValue, MissingParameter

_BOUNDARY = re.compile(rb'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]{1,100})"', re.IGNORECASE)
_FIELDS = frozenset({b"model", b"stream"})
_MAX_FIELD = 4096  # a model name or a flag: anything longer is not what the gateway reads


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a multipart/form-data content type (InvalidRequest if it is not one)."""
    if content_type is None or not content_type.lower().startswith(b"multipart/form-data"):
        raise InvalidRequest(
            "This endpoint takes a multipart/form-data body (a file and its form fields)."
        )
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidRequest("The multipart/form-data content type has no boundary.")
    return match.group(1)


def form_fields(body: bytes, boundary: bytes) -> dict[str, str]:
    """The `model` and `stream` fields of the form (others, and every file, skipped)."""
    delimiter = b"--" + boundary
    fields: dict[str, str] = {}
    start = body.find(delimiter)
    if start < 0:
        raise InvalidRequest("The request body is not the multipart/form-data it declares.")
    while True:
        head_start = start + len(delimiter)
        if body.startswith(b"--", head_start):
            return fields  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end < 0:
            raise InvalidRequest("A part of the multipart/form-data body has no end of headers.")
        following = body.find(b"\r\n" + delimiter, head_end)
        if following < 0:
            raise InvalidRequest("The multipart/form-data body has no closing boundary.")
        name = _NAME.search(body, head_start, head_end)
        if name is not None and name.group(1) in _FIELDS:
            value = body[head_end + 4 : following]
            if len(value) > _MAX_FIELD:
                raise InvalidValue(f"Form field '{name.group(1).decode()}' is too long.")
            fields[name.group(1).decode()] = value.decode("utf-8", "replace")
        start = following + 2


def form_model(fields: dict[str, str]) -> str:
    model = fields.get("model", "").strip()
    if not model:
        raise MissingParameter("Missing required form field: 'model'.", param="model")
    return model


def form_stream(fields: dict[str, str]) -> bool:
    value = fields.get("stream", "false").strip().lower()
    if value not in {"true", "false", "1", "0"}:
        raise InvalidValue("Invalid 'stream': expected true or false.", param="stream")
    return value in {"true", "1"}
