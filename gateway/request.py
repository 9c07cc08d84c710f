"""What a request is to the gateway: the endpoint table, and the parsed view of a request body.

A leaf module: the API layer fills a RequestView, the limits, relay and observers read it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Endpoint(enum.Enum):
    """The model-addressed endpoints the gateway relays to workers (value: the path)."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"

    @property
    def path(self) -> str:
        return self.value

    @property
    def operation(self) -> str:
        """The OpenTelemetry GenAI operation name of a request to this endpoint."""
        return _OPERATIONS[self]

    @property
    def default_max_tokens(self) -> int | None:
        """Completion tokens the worker generates when the request sets no cap (None: the
        gateway's setting decides what to reserve)."""
        return 16 if self is Endpoint.COMPLETIONS else None  # vLLM's default for completions


_OPERATIONS = {Endpoint.CHAT: "chat", Endpoint.COMPLETIONS: "text_completion"}

# Operations paths: open without a key, counted in metrics but not written to the access log.
OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
MODELS_PATH = "/v1/models"
# Every path the gateway answers: metrics label requests by it, anything else is "other".
KNOWN_PATHS = frozenset({*(e.path for e in Endpoint), MODELS_PATH, *OPS_PATHS})


@dataclass(frozen=True, slots=True)
class RequestView:
    """The few fields of a request body the gateway reads; the body itself goes on untouched."""

    endpoint: Endpoint
    model: str
    stream: bool
    body: bytes
    doc: dict[str, Any]  # the parsed body, kept for the rare request the gateway must amend
    max_tokens: int | None  # max_completion_tokens wins over max_tokens, as in vLLM
    n: int
    include_usage: bool  # the client asked for the usage chunk of a stream
