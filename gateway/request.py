"""What a request is to the gateway: the endpoint table, and the parsed view of a request body.

A leaf module: the API layer fills a RequestView, the limits, relay and observers read it.
Each model-addressed path vLLM serves has one row (EndpointSpec) saying how its `model` is
found, whether and how it streams, how its usage is counted and which runner serves it; the
one pipeline in gateway/api/relayed.py reads the row, never the path.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Literal

# Where `model` is read: a JSON body, a multipart form (audio), or the gateway's record of
# which worker holds a stored response (GET /v1/responses/{id}, .../cancel).
BodyKind = Literal["json", "form", "response_id"]
# How the answer streams when asked to: OpenAI's `data:` events ending with `data: [DONE]`, or
# named `event:` lines (Responses, Anthropic) ending when the worker ends the body.
StreamKind = Literal["none", "data", "named"]
# What counts against tokens-per-minute: prompt and completion from the answer's `usage`,
# the prompt only (embeddings), or nothing (no token limit applies; rpm and concurrency do).
UsageKind = Literal["tokens", "prompt", "none"]
# What the model's workers must run (configs/models.yaml `runner`); "any": both serve it.
Runner = Literal["generate", "pooling", "any"]
# Whose envelope the gateway's own errors on the path use.
Dialect = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    operation: str  # the OpenTelemetry GenAI operation name
    body: BodyKind = "json"
    stream: StreamKind = "none"
    usage: UsageKind = "none"
    runner: Runner = "generate"
    dialect: Dialect = "openai"
    methods: frozenset[str] = frozenset({"POST"})
    # The body member capping the answer's tokens, and vLLM's default when it is absent
    # (None: the gateway's setting decides what to reserve).
    cap_param: str = "max_tokens"
    default_cap: int | None = None
    cache_aware: bool = False  # prompt-prefix routing and KV-event tagging apply


class Endpoint(enum.Enum):
    """The model-addressed endpoints the gateway relays to workers (value: the path; paths
    with `{id}` are matched by prefix)."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"
    RESPONSES = "/v1/responses"
    RESPONSE = "/v1/responses/{id}"
    RESPONSE_CANCEL = "/v1/responses/{id}/cancel"
    MESSAGES = "/v1/messages"
    COUNT_TOKENS = "/v1/messages/count_tokens"
    RERANK = "/v1/rerank"
    RERANK_BARE = "/rerank"
    SCORE = "/v1/score"
    POOLING = "/pooling"
    CLASSIFY = "/classify"
    TOKENIZE = "/tokenize"
    DETOKENIZE = "/detokenize"
    TRANSCRIPTIONS = "/v1/audio/transcriptions"
    TRANSLATIONS = "/v1/audio/translations"

    @property
    def path(self) -> str:
        return self.value

    @property
    def spec(self) -> EndpointSpec:
        return SPECS[self]

    @property
    def operation(self) -> str:
        """The OpenTelemetry GenAI operation name of a request to this endpoint."""
        return SPECS[self].operation

    @property
    def default_max_tokens(self) -> int | None:
        """Completion tokens the worker generates when the request sets no cap (None: the
        gateway's setting decides what to reserve)."""
        return SPECS[self].default_cap


_CHAT = EndpointSpec("chat", stream="data", usage="tokens", cache_aware=True)
_RERANK = EndpointSpec("rerank", runner="pooling")
_AUDIO = EndpointSpec("generate_content", body="form", stream="data", runner="any")
_BY_ID = frozenset({"GET"})

SPECS: dict[Endpoint, EndpointSpec] = {
    Endpoint.CHAT: _CHAT,
    Endpoint.COMPLETIONS: EndpointSpec(
        "text_completion", stream="data", usage="tokens", default_cap=16, cache_aware=True
    ),
    Endpoint.EMBEDDINGS: EndpointSpec("embeddings", usage="prompt", runner="pooling"),
    Endpoint.RESPONSES: EndpointSpec(
        "chat", stream="named", usage="tokens", cap_param="max_output_tokens"
    ),
    Endpoint.RESPONSE: EndpointSpec("chat", body="response_id", methods=_BY_ID),
    Endpoint.RESPONSE_CANCEL: EndpointSpec("chat", body="response_id"),
    Endpoint.MESSAGES: EndpointSpec("chat", stream="named", usage="tokens", dialect="anthropic"),
    Endpoint.COUNT_TOKENS: EndpointSpec("count_tokens", dialect="anthropic"),
    Endpoint.RERANK: _RERANK,
    Endpoint.RERANK_BARE: _RERANK,
    Endpoint.SCORE: EndpointSpec("score", runner="pooling"),
    Endpoint.POOLING: EndpointSpec("pooling", runner="pooling"),
    Endpoint.CLASSIFY: EndpointSpec("classify", runner="pooling"),
    Endpoint.TOKENIZE: EndpointSpec("tokenize", runner="any"),
    Endpoint.DETOKENIZE: EndpointSpec("detokenize", runner="any"),
    Endpoint.TRANSCRIPTIONS: _AUDIO,
    Endpoint.TRANSLATIONS: _AUDIO,
}

RESPONSES_PREFIX = "/v1/responses/"

# Operations paths: open without a key, counted in metrics but not written to the access log.
OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
MODELS_PATH = "/v1/models"
# Every path the gateway answers: metrics label requests by it, anything else is "other".
KNOWN_PATHS = frozenset({*(e.path for e in Endpoint), MODELS_PATH, *OPS_PATHS})


def response_path(path: str) -> tuple[Endpoint, str] | None:
    """/v1/responses/{id}[/cancel] -> the endpoint and the id; None for any other path."""
    if not path.startswith(RESPONSES_PREFIX):
        return None
    rest = path[len(RESPONSES_PREFIX) :]
    endpoint = Endpoint.RESPONSE
    if rest.endswith("/cancel"):
        rest, endpoint = rest[: -len("/cancel")], Endpoint.RESPONSE_CANCEL
    if not _RESPONSE_ID.fullmatch(rest):
        return None
    return endpoint, rest


_RESPONSE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


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
    # A stored response the request is about: `previous_response_id`, or the path's id.
    response_id: str | None = None
