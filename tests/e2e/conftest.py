"""Real vLLM CPU engines for the default configs/models.yaml, and a gateway in front of them.

The engines start once per test session, all at once (a few minutes on two cores) on free ports:
the chat models (one with a LoRA adapter, one with two workers), and the embedding model. Two
gateway replicas share one Redis, as in a deployment with several gateways.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from gateway.config.keys import hash_key, new_key
from gateway.config.models import AdapterConfig, ModelConfig, ModelsConfig, load_models_config
from tests.procs import ROOT, Proc, free_port, start_gateway
from tests.redis_dbs import RedisDBs
from workers.local import LocalWorkers

TPM_LIMIT = 1500
# Four engines on two shared cores: each compiles and warms up for minutes.
ENGINE_START_SECONDS = 1800.0
# Listed for the gateway only: no worker has it at start, so the gateway loads it at run time.
RUNTIME_ADAPTER = "qwen2.5-1.5b-runtime-lora"


@dataclass
class RealStack:
    gateway: str
    config: ModelsConfig  # what the gateway routes with (attached workers, local adapters)
    engines: LocalWorkers
    proc: Proc
    key: str  # every model, no limits
    tpm_key: str  # tokens-per-minute limited (TPM_LIMIT)
    second_gateway: str  # another replica, sharing the first one's Redis
    second_proc: Proc
    embed_tpm_key: str  # tokens-per-minute limited (TPM_LIMIT), for embeddings only

    @property
    def model_names(self) -> list[str]:
        """The chat (generate) models; the embedding model is `embedding_model`."""
        return [m.name for m in self.config.models if m.runner == "generate"]

    @property
    def embedding_model(self) -> str:
        return next(m.name for m in self.config.models if m.runner == "pooling")

    @property
    def lora_model(self) -> ModelConfig:
        """The chat model with a LoRA adapter preloaded and run-time loading allowed."""
        return next(m for m in self.config.models if m.adapters and m.runtime_lora)

    @property
    def adapter(self) -> str:
        """The adapter every worker of `lora_model` loads at start."""
        return self.lora_model.adapters[0].name

    @property
    def replicated_model(self) -> ModelConfig:
        """A chat model with two workers (stored Responses live on one of them)."""
        return next(m for m in self.config.models if len(m.workers) > 1)

    @property
    def served_names(self) -> list[str]:
        """Every name /v1/models lists: models and adapters."""
        return [n for m in self.config.models for n in (m.name, *(a.name for a in m.adapters))]

    def worker_urls(self, model: str) -> list[str]:
        model_config = self.config.model(model)
        assert model_config is not None
        return [w.url for w in model_config.workers if w.url]

    def engine_url(self, model: str) -> str:
        return self.worker_urls(model)[0]

    def engine_metric(self, model: str, name: str) -> float:
        """One of vLLM's own unlabelled-by-reason series, e.g. vllm:num_requests_running,
        summed over the model's workers."""
        total = 0.0
        for url in self.worker_urls(model):
            text = httpx.get(url + "/metrics", timeout=5).text
            found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
            assert found, f"{name} missing from the engine's /metrics"
            total += float(found.group(1))
        return total

    def running(self, model: str) -> float:
        """vLLM's count of requests in its running batch (updated as streamed output flows)."""
        return self.engine_metric(model, "vllm:num_requests_running")

    def generated(self, model: str) -> float:
        """vLLM's count of generated tokens; a request's tokens are added when it ends."""
        return self.engine_metric(model, "vllm:generation_tokens_total")


def _warm_up(config: ModelsConfig) -> None:
    """A short request per engine, as any engine has seen before real traffic: a fresh engine's
    first requests run its warm-up paths (seen: one of them missed a client's abort). Chat
    engines answer a generation streamed and not; the embedding engine an embedding."""
    with httpx.Client(timeout=300) as http:
        for model in config.models:
            for worker in model.workers:
                if model.runner == "pooling":
                    embed = {"model": model.name, "input": "warm up"}
                    http.post(f"{worker.url}/v1/embeddings", json=embed).raise_for_status()
                    continue
                for stream in (False, True):
                    body: dict[str, Any] = {
                        "model": model.name,
                        "messages": [{"role": "user", "content": "warm up"}],
                        "max_tokens": 64,
                        "stream": stream,
                    }
                    http.post(f"{worker.url}/v1/chat/completions", json=body).raise_for_status()


def _gateway_config(engines: LocalWorkers) -> ModelsConfig:
    """The engines as attached workers, plus an adapter no worker loaded (run-time loading)."""
    attached = engines.attached_config()
    models = []
    for model in attached.models:
        if model.runtime_lora and model.adapters:
            path = engines.stand_in_adapter(model.name, RUNTIME_ADAPTER)
            extra = AdapterConfig(name=RUNTIME_ADAPTER, path=str(path))
            models.append(model.model_copy(update={"adapters": [*model.adapters, extra]}))
        else:
            models.append(model)
    return attached.model_copy(update={"models": models})


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDBs) -> Iterator[RealStack]:
    config = load_models_config(ROOT / "configs" / "models.yaml")
    ports = {w.name: free_port() for m in config.models for w in m.workers if w.launched}
    engines = LocalWorkers(config, ports=ports, startup_timeout=ENGINE_START_SECONDS)
    with engines, redis_dbs.take() as redis_url:
        gateway_config = _gateway_config(engines)
        _warm_up(gateway_config)
        text = yaml.safe_dump(gateway_config.model_dump(mode="json", exclude_none=True))
        tmp = tmp_path_factory.mktemp("real")
        key, tpm_key, embed_tpm_key = new_key(), new_key(), new_key()
        (tmp / "keys.yaml").write_text(
            "keys:\n"
            f"  - {{name: e2e, sha256: {hash_key(key)}}}\n"
            f"  - {{name: e2e-tpm, sha256: {hash_key(tpm_key)}, tpm: {TPM_LIMIT}}}\n"
            f"  - {{name: e2e-embed-tpm, sha256: {hash_key(embed_tpm_key)}, tpm: {TPM_LIMIT}}}\n"
        )
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(tmp / "keys.yaml"),
            "GATEWAY_REDIS_URL": redis_url,
            # Engines sharing two busy cores may take over a second to answer /health (the
            # default timeout), which would mark them down for a moment; on such a machine Redis
            # may miss the default 0.1 s too (seen: a stored response's home not found by the
            # other replica).
            "GATEWAY_HEALTH_TIMEOUT": "5",
            "GATEWAY_REDIS_TIMEOUT": "2",
        }
        proc, url = start_gateway(tmp, text, env)
        try:
            second_proc, second_url = start_gateway(tmp, text, env)
        except BaseException:
            proc.stop()
            raise
        try:
            yield RealStack(
                url,
                gateway_config,
                engines,
                proc,
                key,
                tpm_key,
                second_url,
                second_proc,
                embed_tpm_key,
            )
        finally:
            second_proc.stop()
            proc.stop()
