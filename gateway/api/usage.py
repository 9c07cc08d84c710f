"""Priority classes and usage per key, on the API side: a request's effective priority (the
key's class, maybe lowered by the client), the settle that counts its usage, and
GET /v1/usage, a key's own usage this day and month (budget included).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from gateway.api.auth import authenticate
from gateway.api.deps import State
from gateway.config.keys import Principal, parse_priority
from gateway.errors import InvalidRequest
from gateway.limits.buckets import Counters
from gateway.limits.budget import reset_text
from gateway.limits.limiter import Limiter, Reservation
from gateway.record import RequestRecord
from gateway.request import RequestView

PRIORITY_HEADER = b"x-priority"


def effective_priority(
    principal: Principal, headers: list[tuple[bytes, bytes]], view: RequestView
) -> int:
    """The key's class, lowered (never raised) by an `x-priority` header (a class name or
    number) or by the body's own vLLM `priority`."""
    priority = principal.priority
    for name, value in headers:
        if name == PRIORITY_HEADER:
            try:
                asked = parse_priority(value.decode("latin-1"))
            except ValueError as exc:
                raise InvalidRequest(
                    f"Invalid 'x-priority' header: {exc}.", param="x-priority"
                ) from None
            priority = max(priority, asked)
            break
    own = view.doc.get("priority")
    if isinstance(own, int) and not isinstance(own, bool) and own > priority:
        priority = own
    return priority


async def settle(limiter: Limiter, reservation: Reservation, record: RequestRecord) -> None:
    usage = record.usage
    await limiter.settle(
        reservation,
        record.tokens_used(),
        record.model if record.relayed else None,
        usage.prompt if usage is not None else 0,
        usage.completion if usage is not None else 0,
    )


def _period(counters: Counters, label: str, resets: float, budget: int | None) -> dict[str, Any]:
    models: dict[str, dict[str, int]] = {}
    for field, value in counters.items():
        model, bar, what = field.rpartition("|")
        if bar:
            entry = models.setdefault(
                model, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            entry["requests" if what == "requests" else f"{what}_tokens"] = value
    for entry in models.values():
        entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
    prompt = sum(entry["prompt_tokens"] for entry in models.values())
    completion = sum(entry["completion_tokens"] for entry in models.values())
    doc: dict[str, Any] = {
        "period": label,
        "resets_at": reset_text(resets),
        "requests": sum(entry["requests"] for entry in models.values()),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "models": models,
        "budget": None,
    }
    if budget is not None:
        charged = counters.get("budget", 0)  # used, plus what requests in flight reserved
        doc["budget"] = {
            "tokens": budget,
            "charged_tokens": charged,
            "remaining_tokens": max(0, budget - charged),
        }
    return doc


async def usage_route(request: Request, state: State) -> Response:
    """GET /v1/usage: the calling key's usage this UTC day and month, with its budgets."""
    if state.keys is None:
        raise InvalidRequest("Usage is counted per API key; this gateway runs without keys.")
    principal = authenticate(request.scope["headers"], state.keys)
    when, day, month = await state.limiter.usage(principal)
    body = {
        "object": "usage",
        "key": principal.name,
        "priority": principal.priority,
        "day": _period(
            day,
            f"{when.day[:4]}-{when.day[4:6]}-{when.day[6:]}",
            when.day_reset,
            principal.tokens_per_day,
        ),
        "month": _period(
            month,
            f"{when.month[:4]}-{when.month[4:]}",
            when.month_reset,
            principal.tokens_per_month,
        ),
    }
    return Response(orjson.dumps(body), media_type="application/json")
