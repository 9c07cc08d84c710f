"""Send a workload through a gateway: every conversation at once, each turn after the previous
one's answer (which joins the history), at most `concurrency` requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.prefix_workloads import Conversation
from bench.real_engines import stream_chat


@dataclass(frozen=True)
class Request:
    """What each request of a run asks for, besides its messages."""

    model: str
    max_tokens: int
    session: bool  # send the conversation's x-session-id


@dataclass(frozen=True)
class Sample:
    conversation: int
    turn: int
    ok: bool
    latency: float
    ttft: float | None
    prompt_tokens: int
    error: str | None = None


@dataclass
class Traffic:
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"wall": self.wall, "samples": [asdict(s) for s in self.samples]}


def body(request: Request, messages: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "model": request.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": request.max_tokens,
        "ignore_eos": True,  # every answer the same length, whatever the random weights say
        "temperature": 0,  # the same replies (so the same histories) for every policy
        "messages": messages,
    }


async def conversation(
    client: httpx.AsyncClient,
    url: str,
    request: Request,
    index: int,
    conv: Conversation,
    gate: asyncio.Semaphore,
    traffic: Traffic,
) -> None:
    messages = [{"role": "system", "content": conv.system}] if conv.system else []
    headers = {"x-session-id": conv.session} if request.session else None
    for turn, text in enumerate(conv.user_turns):
        messages.append({"role": "user", "content": text})
        async with gate:
            result = await stream_chat(client, url, body(request, messages), headers)
        usage = result.usage or {}
        traffic.samples.append(
            Sample(
                conversation=index,
                turn=turn,
                ok=result.ok,
                latency=result.latency,
                ttft=result.ttft,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                error=result.error,
            )
        )
        messages.append({"role": "assistant", "content": result.text})


async def drive(
    url: str, request: Request, conversations: list[Conversation], concurrency: int
) -> Traffic:
    traffic = Traffic()
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                conversation(client, url, request, index, conv, gate, traffic)
                for index, conv in enumerate(conversations)
            )
        )
        traffic.wall = time.perf_counter() - started
    return traffic
