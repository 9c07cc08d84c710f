"""Tokens a request reserves against its key's tokens-per-minute limit before it is relayed;
vLLM's `usage` reconciles the reservation when the answer ends (Limiter.settle)."""

from __future__ import annotations

from gateway.request import RequestView


def reserve_tokens(view: RequestView, default_completion: int) -> int:
    """Prompt estimate (4 bytes of body per token, an over-estimate for JSON) plus the
    completion's cap: max_tokens, else the endpoint's default (vLLM's 16 for completions),
    else `default_completion`."""
    cap = view.max_tokens or view.endpoint.default_max_tokens or default_completion
    return len(view.body) // 4 + 1 + view.n * cap
