"""Priority classes and usage per key on a real vLLM CPU engine run with
`--scheduling-policy priority` (models.yaml `scheduling_policy: priority`, as `workers` launches
it) and `--max-num-seqs 1`, so requests queue inside vLLM:

- the gateway's `priority` is accepted, and an interactive key's request overtakes batch
  requests queued before it in the engine;
- GET /v1/usage reports exactly the tokens vLLM itself counted (vllm:prompt_tokens_total,
  vllm:generation_tokens_total), streamed or not.

One engine of its own (the first model of configs/models.yaml, a stand-in), started once for the
module: a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from gateway.config.keys import hash_key, new_key
from gateway.config.models import ModelsConfig, load_models_config
from tests.procs import ROOT, free_port, start_gateway
from tests.redis_dbs import RedisDBs
from workers.local import LocalWorkers

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    gateway: str
    engine: str
    model: str
    keys: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}

    def counter(self, name: str) -> float:
        text = httpx.get(self.engine + "/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} missing from the engine's /metrics"
        return float(found.group(1))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDBs) -> Iterator[Stack]:
    base = load_models_config(ROOT / "configs" / "models.yaml").models[0]
    model = base.model_copy(
        update={
            "scheduling_policy": "priority",
            "vllm_args": [*base.vllm_args, "--max-num-seqs", "1"],
        }
    )
    config = ModelsConfig(models=[model])
    ports = {w.name: free_port() for w in model.workers if w.launched}
    # a loaded two-core machine took over 10 minutes to start one engine
    engines_up = LocalWorkers(config, ports=ports, startup_timeout=1500)
    with engines_up as engines, redis_dbs.take() as redis_url:
        attached = engines.attached_config()
        tmp = tmp_path_factory.mktemp("priority-e2e")
        keys = {"ui": new_key(), "nightly": new_key(), "counted": new_key()}
        entries = [
            {"name": "ui", "sha256": hash_key(keys["ui"]), "priority": "interactive"},
            {"name": "nightly", "sha256": hash_key(keys["nightly"]), "priority": "batch"},
            {"name": "counted", "sha256": hash_key(keys["counted"]), "tokens_per_day": 10**6},
        ]
        (tmp / "keys.yaml").write_text(yaml.safe_dump({"keys": entries}))
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(tmp / "keys.yaml"),
            "GATEWAY_REDIS_URL": redis_url,
        }
        text = yaml.safe_dump(attached.model_dump(mode="json", exclude_none=True))
        proc, url = start_gateway(tmp, text, env)
        try:
            engine = engines.base_url(model.workers[0].name)
            yield Stack(url, engine, model.name, keys)
        finally:
            proc.stop()


def chat(model: str, text: str, max_tokens: int, **fields: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        **fields,
    }


async def test_priority_is_accepted_and_an_interactive_request_overtakes_queued_batch_ones(
    stack: Stack,
) -> None:
    """A long batch request runs (max-num-seqs 1), batch requests queue in vLLM behind it, then
    an interactive one arrives: vLLM starts it (its first token) before every batch request
    still waiting when it arrived."""
    url = stack.gateway + "/v1/chat/completions"
    first_token: dict[str, float] = {}
    running = asyncio.Event()

    async def post(client: httpx.AsyncClient, label: str, key: str, tokens: int) -> None:
        body = chat(stack.model, f"request {label}", tokens, stream=True)
        async with client.stream("POST", url, json=body, headers=stack.auth(key)) as response:
            assert response.status_code == 200  # vLLM took its `priority`
            async for line in response.aiter_lines():
                if line.startswith("data: {") and label not in first_token:
                    first_token[label] = time.monotonic()
                    if label == "running":
                        running.set()

    async with httpx.AsyncClient(timeout=900) as client:
        tasks = [asyncio.create_task(post(client, "running", "nightly", 400))]
        await running.wait()  # it holds the engine's one sequence
        for i in range(3):
            tasks.append(asyncio.create_task(post(client, f"batch-{i}", "nightly", 16)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        arrived = time.monotonic()
        tasks.append(asyncio.create_task(post(client, "interactive", "ui", 16)))
        await asyncio.gather(*tasks)

    waiting = [t for label, t in first_token.items() if label.startswith("batch") and t > arrived]
    assert len(waiting) >= 2, ("the batch requests did not queue in vLLM", first_token)
    assert first_token["interactive"] < min(waiting), first_token


async def test_usage_matches_vllms_own_token_counters(stack: Stack) -> None:
    prompt_before = stack.counter("vllm:prompt_tokens_total")
    generated_before = stack.counter("vllm:generation_tokens_total")
    url = stack.gateway + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(4):
            fields: dict[str, Any] = {"stream": True} if i % 2 else {}
            async with client.stream(
                "POST",
                url,
                json=chat(stack.model, f"Count to {i} please.", 12 + i, **fields),
                headers=stack.auth("counted"),
            ) as response:
                assert response.status_code == 200
                await response.aread()
        answer = await client.get(stack.gateway + "/v1/usage", headers=stack.auth("counted"))
    prompt = stack.counter("vllm:prompt_tokens_total") - prompt_before
    generated = stack.counter("vllm:generation_tokens_total") - generated_before
    usage = answer.json()
    for period in ("day", "month"):
        assert usage[period]["requests"] == 4
        assert usage[period]["prompt_tokens"] == prompt
        assert usage[period]["completion_tokens"] == generated
        assert usage[period]["models"][stack.model]["total_tokens"] == prompt + generated
    budget = usage["day"]["budget"]
    assert budget["charged_tokens"] == prompt + generated
    assert budget["remaining_tokens"] == 10**6 - prompt - generated
