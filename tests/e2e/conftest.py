"""Real vLLM CPU engines for the default configs/models.yaml, and a gateway in front of them.

The engines start once per test session (about two minutes on two cores) on free ports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml

from gateway.config.keys import hash_key, new_key
from gateway.config.models import ModelsConfig, load_models_config
from tests.procs import ROOT, Proc, free_port, start_gateway
from tests.redis_dbs import RedisDBs
from workers.local import LocalWorkers

TPM_LIMIT = 1500


@dataclass
class RealStack:
    gateway: str
    config: ModelsConfig
    engines: LocalWorkers
    proc: Proc
    key: str  # every model, no limits
    tpm_key: str  # tokens-per-minute limited (TPM_LIMIT)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.config.models]

    def engine_url(self, model: str) -> str:
        model_config = self.config.model(model)
        assert model_config is not None
        return self.engines.base_url(model_config.workers[0].name)

    def engine_metric(self, model: str, name: str) -> float:
        """One of vLLM's own unlabelled-by-reason series, e.g. vllm:num_requests_running."""
        text = httpx.get(self.engine_url(model) + "/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} missing from the engine's /metrics"
        return float(found.group(1))

    def running(self, model: str) -> float:
        """vLLM's count of requests in its running batch (updated as streamed output flows)."""
        return self.engine_metric(model, "vllm:num_requests_running")

    def generated(self, model: str) -> float:
        """vLLM's count of generated tokens; a request's tokens are added when it ends."""
        return self.engine_metric(model, "vllm:generation_tokens_total")


def _warm_up(engines: LocalWorkers, config: ModelsConfig) -> None:
    """A short generation per engine, streamed and not, as any engine has seen before real
    traffic: a fresh engine's first requests run its warm-up paths (seen: one of them missed a
    client's abort)."""
    for model in config.models:
        url = engines.base_url(model.workers[0].name) + "/v1/chat/completions"
        for stream in (False, True):
            body = {
                "model": model.name,
                "messages": [{"role": "user", "content": "warm up"}],
                "max_tokens": 64,
                "stream": stream,
            }
            httpx.post(url, json=body, timeout=120).raise_for_status()


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDBs) -> Iterator[RealStack]:
    config = load_models_config(ROOT / "configs" / "models.yaml")
    ports = {w.name: free_port() for m in config.models for w in m.workers if w.launched}
    with LocalWorkers(config, ports=ports) as engines, redis_dbs.take() as redis_url:
        _warm_up(engines, config)
        attached = engines.attached_config()
        text = yaml.safe_dump(attached.model_dump(mode="json", exclude_none=True))
        tmp = tmp_path_factory.mktemp("real")
        key, tpm_key = new_key(), new_key()
        (tmp / "keys.yaml").write_text(
            "keys:\n"
            f"  - {{name: e2e, sha256: {hash_key(key)}}}\n"
            f"  - {{name: e2e-tpm, sha256: {hash_key(tpm_key)}, tpm: {TPM_LIMIT}}}\n"
        )
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(tmp / "keys.yaml"),
            "GATEWAY_REDIS_URL": redis_url,
        }
        proc, url = start_gateway(tmp, text, env)
        try:
            yield RealStack(url, config, engines, proc, key, tpm_key)
        finally:
            proc.stop()
