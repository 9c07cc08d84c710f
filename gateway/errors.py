"""The one error tree: every error the gateway returns, with its HTTP status and OpenAI envelope.

The openai SDK picks its exception class from the HTTP status, so the status is the contract;
`type` and `code` are stable strings clients may branch on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    log_level: int = logging.ERROR
    # True when another worker may be tried (nothing reached the worker, or it refused up front).
    retryable: bool = False
    # Set on the worker's failures: counts against its health, labels gateway_upstream_errors.
    worker_fault: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def sse_event(self) -> bytes:
        """The error as one SSE event followed by the stream terminator."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"

    # --- other envelopes: Anthropic's (/v1/messages), the Responses API's stream ------------

    def answer(self, dialect: Dialect = "openai") -> tuple[int, bytes]:
        """The status and body of this error as a whole answer in `dialect`'s envelope."""
        if dialect == "openai":
            return self.status, self.body()
        status, kind = anthropic_status(self.status)
        doc = {"type": "error", "error": {"type": kind, "message": self.message}}
        return status, orjson.dumps(doc)

    def stream_event(self, dialect: Dialect = "openai", *, named: bool = False) -> bytes:
        """The error as a stream's last event: OpenAI's `data:` + [DONE], the Responses API's
        `event: error`, or Anthropic's `event: error`."""
        if not named:
            return self.sse_event()
        if dialect == "anthropic":
            return b"event: error\ndata: " + self.answer("anthropic")[1] + b"\n\n"
        doc = {"type": "error", "code": self.code, "message": self.message, "param": self.param}
        return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"

    def to_response(
        self, extra_headers: Mapping[str, str] | None = None, dialect: Dialect = "openai"
    ) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        status, body = self.answer(dialect)
        return Response(body, status, headers, media_type="application/json")


Dialect = Literal["openai", "anthropic"]

# Anthropic's error types by status (docs.anthropic.com "Errors"); 529 is its "overloaded".
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_status(status: int) -> tuple[int, str]:
    """Our status -> Anthropic's status and error type (503: its 529 overloaded_error)."""
    if status == 503:
        status = 529
    kind = _ANTHROPIC_TYPES.get(status)
    if kind is None:
        kind = "invalid_request_error" if status < 500 else "api_error"
    return status, kind


# --- the client's fault (4xx) -------------------------------------------------------------------


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    log_level = logging.INFO


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class MissingParameter(InvalidRequest):
    code = "missing_required_parameter"


class InvalidType(InvalidRequest):
    code = "invalid_type"


class InvalidValue(InvalidRequest):
    code = "invalid_value"


class InvalidAPIKey(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    log_level = logging.INFO


class RateLimited(GatewayError):
    """A key is over one of its limits; `Retry-After` says when the request could pass."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    log_level = logging.INFO


class InsufficientQuota(RateLimited):
    """A key's token budget for the day or month is spent (OpenAI's code for it)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    log_level = logging.INFO

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class UnsupportedEndpoint(InvalidRequest):
    """The model's workers do not run what the path needs (e.g. embeddings of a chat model)."""

    code = "unsupported_endpoint"


class ResponseNotFound(GatewayError):
    """No stored response with that id is known to the gateway (never made, or expired)."""

    status = 404
    type = "invalid_request_error"
    code = "response_not_found"
    log_level = logging.INFO


class AdapterNotLoaded(GatewayError):
    """No worker of the base model has the LoRA adapter, and loading it at run time is off."""

    status = 503
    code = "adapter_not_loaded"
    log_level = logging.WARNING


class UnknownRoute(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"
    log_level = logging.INFO


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    log_level = logging.INFO


class RequestTimeout(GatewayError):
    """The client did not send its request's head or body in time (slow or silent clients)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    log_level = logging.INFO


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_too_large"
    log_level = logging.INFO


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    log_level = logging.INFO


# --- the worker's fault, seen by the gateway (5xx) ----------------------------------------------


class UpstreamUnavailable(GatewayError):
    """The worker could not be reached, or closed the connection without a byte of answer (a
    server going down): nothing came back, so another worker may be tried."""

    status = 502
    code = "upstream_unavailable"
    log_level = logging.WARNING
    worker_fault = "unreachable"
    retryable = True


class ResponseWorkerGone(GatewayError):
    """The worker holding a stored response is gone or down: no other worker has it."""

    status = 502
    code = "response_worker_unavailable"
    log_level = logging.WARNING


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    log_level = logging.WARNING
    worker_fault = "timeout"


class UpstreamFailed(GatewayError):
    """The worker answered with a server error, broke the protocol, or cut the stream."""

    status = 502
    code = "upstream_error"
    log_level = logging.WARNING
    worker_fault = "failed"


class UpstreamInvalid(UpstreamFailed):
    """The worker broke the protocol: a 200 whose body is not a JSON object, stream bytes that
    are not SSE events, or an answer or event over the size limit. `violation` says which."""

    def __init__(self, message: str, *, violation: str) -> None:
        super().__init__(message)
        self.violation = violation


# The kinds of UpstreamInvalid.violation (gateway_upstream_invalid_total's `kind`).
PROTOCOL_VIOLATIONS = ("not_json", "not_sse", "too_large", "event_too_large")


class UpstreamOverloaded(GatewayError):
    """The worker itself answered 503 (its queue is full): safe to try another worker."""

    status = 503
    code = "upstream_overloaded"
    log_level = logging.WARNING
    worker_fault = "overloaded"
    retryable = True


class UpstreamRejected(GatewayError):
    """The worker refused the request (4xx): its status and message reach the client as they are."""

    type = "invalid_request_error"
    code = None
    log_level = logging.INFO

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status


class ServerOverloaded(GatewayError):
    """Every worker of the model is saturated and the admission queue is full, or the request
    waited in it too long. Said by the gateway itself: it never counts against a worker."""

    status = 503
    code = "server_overloaded"
    log_level = logging.INFO


class NoHealthyBackend(GatewayError):
    """No worker of the model takes traffic: all are down or ejected."""

    status = 503
    code = "no_healthy_backend"
    log_level = logging.WARNING


class ShuttingDown(GatewayError):
    """The gateway is draining for shutdown and this request ran past the drain's deadline."""

    status = 503
    code = "server_shutting_down"
    log_level = logging.INFO


class LimiterUnavailable(GatewayError):
    """Redis is unreachable and the gateway is configured to fail closed."""

    status = 503
    code = "rate_limiter_unavailable"
    log_level = logging.WARNING


class InternalError(GatewayError):
    """A bug in the gateway. The message never carries details of the request."""


# Every `worker_fault` above: the kinds of gateway_upstream_errors_total.
WORKER_FAULTS = tuple(
    cls.worker_fault
    for cls in (UpstreamUnavailable, UpstreamTimeout, UpstreamOverloaded, UpstreamFailed)
    if cls.worker_fault is not None
)


def upstream_error_from_body(status: int, body: bytes) -> GatewayError:
    """Map a worker's error answer (vLLM's envelope, or anything else) onto our tree."""
    message, param = _upstream_message(body)
    if status == 503:
        return UpstreamOverloaded(f"worker overloaded: {message}")
    if status >= 500:
        return UpstreamFailed(f"worker error {status}: {message}")
    return UpstreamRejected(status, message, param=param)


def _upstream_message(body: bytes) -> tuple[str, str | None]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "(empty body)", None)
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        return (str(error.get("message", "")), param if isinstance(param, str) else None)
    if isinstance(error, str):
        return (error, None)
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return (str(detail if detail is not None else doc)[:500], None)
