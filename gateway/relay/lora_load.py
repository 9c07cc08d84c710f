"""Loading a LoRA adapter on a worker at run time (vLLM's POST /v1/load_lora_adapter, which
needs VLLM_ALLOW_RUNTIME_LORA_UPDATING on the worker): once per worker and adapter, however
many requests ask for it at the same time; they all wait for the one load."""

from __future__ import annotations

import asyncio
import logging

import orjson

from gateway.errors import GatewayError, UpstreamFailed
from gateway.relay.upstream import Upstream, UpstreamRequest
from gateway.routing.registry import Worker

log = logging.getLogger("gateway.relay")

_ALREADY = b"already been loaded"  # vLLM's 400 when another replica loaded it first


class AdapterLoader:
    def __init__(self, upstream: Upstream, timeout: float) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}

    def loading(self, workers: tuple[Worker, ...], name: str) -> Worker | None:
        """The worker among `workers` on which adapter `name` is being loaded now, if any: the
        requests that ask for it meanwhile wait for that load rather than start another."""
        return next((w for w in workers if (w.url, name) in self._loads), None)

    async def ensure(self, worker: Worker, name: str, path: str, request_id: str) -> None:
        """Return once `worker` has adapter `name` loaded (GatewayError: it could not be)."""
        if worker.adapters is not None and name in worker.adapters:
            return
        key = (worker.url, name)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load(worker, name, path, request_id))
            self._loads[key] = task
            task.add_done_callback(lambda _: self._loads.pop(key, None))
        await asyncio.shield(task)  # a waiter that leaves does not cancel the others' load

    async def _load(self, worker: Worker, name: str, path: str, request_id: str) -> None:
        body = orjson.dumps({"lora_name": name, "lora_path": path})
        request = UpstreamRequest("/v1/load_lora_adapter", body, request_id)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._upstream.open(worker, request)
                try:
                    answer = await response.read(1 << 16)
                finally:
                    response.close()
        except TimeoutError:
            raise UpstreamFailed(
                f"worker {worker.name} did not load LoRA adapter `{name}` in time"
            ) from None
        except GatewayError as exc:
            raise UpstreamFailed(
                f"worker {worker.name} could not load LoRA adapter `{name}`: {exc.message}"
            ) from None
        if response.status != 200 and _ALREADY not in answer:
            message = answer.decode("utf-8", "replace")[:300]
            raise UpstreamFailed(
                f"worker {worker.name} refused to load LoRA adapter `{name}` "
                f"({response.status}): {message}"
            )
        worker.adapters = (worker.adapters or frozenset()) | {name}
        log.warning("worker %s (%s) loaded LoRA adapter %s", worker.name, worker.model, name)
