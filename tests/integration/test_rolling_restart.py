"""`workers run`'s rolling restart, against fake workers under load through a real gateway:
each worker is drained in the gateway's models file, restarted once idle, and back in rotation
before the next; no request fails."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from gateway.config.models import parse_models_config
from tests.integration.test_routing import Fleet, fleet, one_request
from tests.procs import Proc, start_gateway
from workers.rolling import GatewayDrains, rolling_restart, write_models


class FleetWorkers:
    """The fake workers behind the Restartable protocol (LocalWorkers does it for vLLM)."""

    def __init__(self, workers: Fleet) -> None:
        self._workers = workers
        self.restarted: list[str] = []

    def restart(self, worker_name: str) -> None:
        self._workers.restart(int(worker_name.removeprefix("w")))
        self.restarted.append(worker_name)


async def test_a_rolling_restart_under_load_fails_no_request(tmp_path: Path) -> None:
    with fleet(tmp_path, 3) as workers:
        config = parse_models_config(workers.models())
        gateway: Proc
        env = {"GATEWAY_HEALTH_INTERVAL": "0.2", "GATEWAY_CONFIG_RELOAD_INTERVAL": "0"}
        gateway, url = start_gateway(tmp_path, workers.models(), env)
        models_file = tmp_path / f"models-{url.rsplit(':', 1)[1]}.yaml"  # start_gateway's
        write_models(config, models_file)
        drains = GatewayDrains(
            config, models_file, url, lambda: gateway.popen.send_signal(signal.SIGHUP)
        )
        restarted = FleetWorkers(workers)
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                while not stop.is_set():
                    script = {"chunks": 4, "gap": 0.05}
                    outcomes.append(await one_request(client, url, True, fake=script))

        try:
            tasks = [asyncio.create_task(load()) for _ in range(6)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(
                rolling_restart,
                restarted,
                drains,
                ["w0", "w1", "w2"],
                timeout=20,
                progress=lambda line: None,
            )
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            gateway.stop()
        assert restarted.restarted == ["w0", "w1", "w2"]
        assert set(outcomes) == {"ok"}
        assert len(outcomes) > 30
