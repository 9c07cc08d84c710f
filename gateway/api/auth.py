"""API key -> Principal. Only the OpenAI routes authenticate: /health, /ready and /metrics are
the exact set of open paths, and unknown paths answer 404 either way."""

from __future__ import annotations

from gateway.config.keys import KeyStore, Principal
from gateway.errors import InvalidAPIKey

# Auth switched off (GATEWAY_AUTH_ENABLED=false): one caller, no limits.
ANONYMOUS = Principal(name="anonymous", models=None, rpm=None, tpm=None, max_concurrent=None)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                return None
            return token.strip().decode("latin-1")
    return None


def api_key_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Anthropic's way of sending the key: `x-api-key: KEY`."""
    for name, value in headers:
        if name == b"x-api-key" and value.strip():
            return value.strip().decode("latin-1")
    return None


def authenticate(
    headers: list[tuple[bytes, bytes]], store: KeyStore | None, *, x_api_key: bool = False
) -> Principal:
    """The caller's Principal; InvalidAPIKey when the key is missing or unknown. `x_api_key`:
    the key may come in `x-api-key` too (the Anthropic API's paths)."""
    if store is None:
        return ANONYMOUS
    token = bearer_token(headers)
    if token is None and x_api_key:
        token = api_key_header(headers)
    if token is None:
        how = "'x-api-key: YOUR_KEY' or " if x_api_key else ""
        raise InvalidAPIKey(
            f"You didn't provide an API key. Send it as {how}'Authorization: Bearer YOUR_KEY'."
        )
    principal = store.lookup(token)
    if principal is None:
        raise InvalidAPIKey("Incorrect API key provided.")
    return principal
