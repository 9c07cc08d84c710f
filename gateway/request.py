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


_BY_ID = frozenset({"GET"})


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


_CHAT = EndpointSpec("chat", stream="data", usage="tokens", cache_aware=True)
_COMPLETIONS = EndpointSpec(
    "text_completion", stream="data", usage="tokens", default_cap=16, cache_aware=True
)
_RESPONSES = EndpointSpec("chat", stream="named", usage="tokens", cap_param="max_output_tokens")
_MESSAGES = EndpointSpec("chat", stream="named", usage="tokens", dialect="anthropic")
_RERANK = EndpointSpec("rerank", runner="pooling")
_AUDIO = EndpointSpec("generate_content", body="form", stream="data", runner="any")


class Endpoint(enum.Enum):
    """The model-addressed endpoints the gateway relays to workers (value: the path; paths
    with `{id}` are matched by prefix), each with its row of the table (`spec`, a plain
    attribute: the hot path reads it per request)."""

    path: str
    spec: EndpointSpec

    def __new__(cls, path: str, spec: EndpointSpec) -> Endpoint:
        member = object.__new__(cls)
        member._value_ = member.path = path
        member.spec = spec
        return member

    CHAT = ("/v1/chat/completions", _CHAT)
    COMPLETIONS = ("/v1/completions", _COMPLETIONS)
    EMBEDDINGS = ("/v1/embeddings", EndpointSpec("embeddings", usage="prompt", runner="pooling"))
    RESPONSES = ("/v1/responses", _RESPONSES)
    RESPONSE = ("/v1/responses/{id}", EndpointSpec("chat", body="response_id", methods=_BY_ID))
    RESPONSE_CANCEL = ("/v1/responses/{id}/cancel", EndpointSpec("chat", body="response_id"))
    MESSAGES = ("/v1/messages", _MESSAGES)
    COUNT_TOKENS = (
        "/v1/messages/count_tokens",
        EndpointSpec("count_tokens", dialect="anthropic"),
    )
    RERANK = ("/v1/rerank", _RERANK)
    RERANK_BARE = ("/rerank", _RERANK)
    SCORE = ("/v1/score", EndpointSpec("score", runner="pooling"))
    POOLING = ("/pooling", EndpointSpec("pooling", runner="pooling"))
    CLASSIFY = ("/classify", EndpointSpec("classify", runner="pooling"))
    TOKENIZE = ("/tokenize", EndpointSpec("tokenize", runner="any"))
    DETOKENIZE = ("/detokenize", EndpointSpec("detokenize", runner="any"))
    TRANSCRIPTIONS = ("/v1/audio/transcriptions", _AUDIO)
    TRANSLATIONS = ("/v1/audio/translations", _AUDIO)

    @property
    def operation(self) -> str:
        """The OpenTelemetry GenAI operation name of a request to this endpoint."""
        return self.spec.operation

    @property
    def default_max_tokens(self) -> int | None:
        """Completion tokens the worker generates when the request sets no cap (None: the
        gateway's setting decides what to reserve)."""
        return self.spec.default_cap


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
