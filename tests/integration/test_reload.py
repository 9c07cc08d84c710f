"""Reloading configs/models.yaml while serving: SIGHUP or a change of the file adds and removes
models and workers without dropping what is in flight, an invalid file keeps the running
configuration (the error names the field), and a worker set to drain takes no new request while
its own finish, under load, without a failed request."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.integration.test_routing import fleet, metric, one_request, ready, wait_for
from tests.procs import Proc, start_gateway

CHAT = [{"role": "user", "content": "hi"}]
FAST = {"GATEWAY_HEALTH_INTERVAL": "0.2", "GATEWAY_CONFIG_RELOAD_INTERVAL": "0.3"}


def models_yaml(models: dict[str, list[tuple[str, str, bool]]]) -> str:
    lines = ["models:"]
    for name, workers in models.items():
        entries = ", ".join(
            f"{{name: {w}, url: '{url}'" + (", drain: true}" if drain else "}")
            for w, url, drain in workers
        )
        lines.append(f"  - {{name: {name}, model: f, workers: [{entries}]}}")
    return "\n".join(lines) + "\n"


def config_file(gateway: Proc) -> Path:
    return next(Path(gateway.log.parent).glob(f"models-{gateway.log.stem.split('-')[1]}.yaml"))


def replace_file(path: Path, text: str) -> None:
    """As the README says to: write a new file, then rename it over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


def test_sighup_serves_a_new_model_while_open_streams_complete(tmp_path: Path) -> None:
    with fleet(tmp_path, 2) as workers:
        first = models_yaml({"m": [("w0", workers.urls[0], False)]})
        gateway, url = start_gateway(
            tmp_path, first, {**FAST, "GATEWAY_CONFIG_RELOAD_INTERVAL": "0"}
        )
        try:
            events: list[bytes] = []
            body = {
                "model": "m",
                "messages": CHAT,
                "stream": True,
                "fake": {"chunks": 20, "gap": 0.1},
            }

            def stream() -> None:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body) as reply:
                    events.extend(e for e in reply.read().split(b"\n\n") if e)

            streaming = threading.Thread(target=stream)
            streaming.start()
            time.sleep(0.3)
            second = {"m": [("w0", workers.urls[0], False)], "n": [("w1", workers.urls[1], False)]}
            replace_file(config_file(gateway), models_yaml(second))
            gateway.popen.send_signal(signal.SIGHUP)
            wait_for(lambda: "n" in ready(url)["models"] and ready(url)["models"]["n"], 5.0)
            reply = httpx.post(url + "/v1/chat/completions", json={"model": "n", "messages": CHAT})
            assert reply.status_code == 200
            assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["m", "n"]
            streaming.join(10)
            assert events[-1] == b"data: [DONE]"
            assert len(events) == 21  # the open stream completed in full
            assert metric(url, "gateway_config_reloads_total", 'file="models"') == 1
        finally:
            gateway.stop()


def test_an_invalid_file_keeps_the_running_configuration_and_names_the_field(
    tmp_path: Path,
) -> None:
    with fleet(tmp_path, 1) as workers:
        text = models_yaml({"m": [("w0", workers.urls[0], False)]})
        gateway, url = start_gateway(tmp_path, text, FAST)
        try:
            replace_file(config_file(gateway), text.replace("url:", "port: -1, url:"))
            wait_for(
                lambda: metric(url, "gateway_config_reload_errors_total", 'file="models"') == 1,
                5.0,
            )
            reply = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": CHAT})
            assert reply.status_code == 200
            assert "models[0] (name=m).workers[0] (name=w0).port" in gateway.output()
        finally:
            gateway.stop()


async def test_draining_a_worker_under_load_fails_no_request(tmp_path: Path) -> None:
    with fleet(tmp_path, 2) as workers:
        both = {"m": [("w0", workers.urls[0], False), ("w1", workers.urls[1], False)]}
        gateway, url = start_gateway(tmp_path, models_yaml(both), FAST)
        try:
            outcomes: list[str] = []
            stop = asyncio.Event()

            async def load() -> None:
                async with httpx.AsyncClient(timeout=20) as client:
                    while not stop.is_set():
                        script = {"chunks": 5, "gap": 0.05}
                        outcomes.append(await one_request(client, url, True, fake=script))

            tasks = [asyncio.create_task(load()) for _ in range(6)]
            await asyncio.sleep(1.0)
            drained = {"m": [("w0", workers.urls[0], True), ("w1", workers.urls[1], False)]}
            await asyncio.to_thread(replace_file, config_file(gateway), models_yaml(drained))
            await asyncio.to_thread(
                wait_for, lambda: ready(url)["workers"]["m/w0"]["draining"], 5.0
            )
            await asyncio.to_thread(
                wait_for, lambda: ready(url)["workers"]["m/w0"]["inflight"] == 0, 5.0
            )
            before = workers.requests(0)
            await asyncio.sleep(1.0)
            assert workers.requests(0) == before  # no new request reached the draining worker
            await asyncio.to_thread(replace_file, config_file(gateway), models_yaml(both))
            await asyncio.to_thread(
                wait_for, lambda: not ready(url)["workers"]["m/w0"]["draining"], 5.0
            )
            await asyncio.sleep(1.0)
            assert workers.requests(0) > before  # back in rotation
            stop.set()
            await asyncio.gather(*tasks)
            assert set(outcomes) == {"ok"}
            assert len(outcomes) > 50
        finally:
            gateway.stop()


def test_a_reload_adds_a_lora_adapter_as_a_model_and_routes_it(tmp_path: Path) -> None:
    with fleet(tmp_path, 1) as workers:
        worker = f"{{name: w0, url: '{workers.urls[0]}'}}"
        base = f"models:\n  - {{name: m, model: f, workers: [{worker}]}}\n"
        gateway, url = start_gateway(tmp_path, base, FAST)
        try:
            lora = {"model": "m-lora", "messages": CHAT}
            assert httpx.post(url + "/v1/chat/completions", json=lora).status_code == 404
            with_adapter = base.replace(
                "model: f,", "model: f, runtime_lora: true, adapters: [{name: m-lora, path: /a}],"
            )
            replace_file(config_file(gateway), with_adapter)
            wait_for(
                lambda: any(
                    m.get("parent") == "m" for m in httpx.get(url + "/v1/models").json()["data"]
                )
            )
            answer = httpx.post(url + "/v1/chat/completions", json=lora)
            assert answer.status_code == 200, answer.text
            stats = httpx.get(workers.urls[0] + "/fake/stats").json()
            assert stats["lora_loads"] == 1
            assert stats["last_body"]["model"] == "m-lora"
        finally:
            gateway.stop()
