"""The gateway process under a service manager's signals: SIGTERM drains (the requests in flight
finish, a stream longer than the drain ends with an error event and [DONE], /ready stops saying
ready) and exits 0 with every access line written; SIGHUP no longer ends it."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.procs import one_worker_models, start_fake, start_gateway

CHAT = [{"role": "user", "content": "hi"}]


def stream(url: str, chunks: int, gap: float, events: list[bytes]) -> None:
    body = {
        "model": "fake-a",
        "messages": CHAT,
        "stream": True,
        "fake": {"chunks": chunks, "gap": gap},
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        events.extend(e for e in response.read().split(b"\n\n") if e)


def test_sigterm_drains_ends_long_streams_with_an_error_event_and_exits_0(tmp_path: Path) -> None:
    fake, fake_url = start_fake(tmp_path, "fake-a")
    gateway, url = start_gateway(
        tmp_path, one_worker_models(fake_url), {"GATEWAY_DRAIN_TIMEOUT": "2"}
    )
    try:
        long: list[bytes] = []
        short: list[bytes] = []
        threads = [
            threading.Thread(target=stream, args=(url, 100, 0.1, long)),  # ~10 s: too long
            threading.Thread(target=stream, args=(url, 10, 0.1, short)),  # ~1 s: finishes
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        gateway.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            still_ready = httpx.get(url + "/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            still_ready = False  # no longer accepting: as good as not ready
        assert not still_ready
        for thread in threads:
            thread.join(15)
        assert gateway.popen.wait(15) == 0
    finally:
        gateway.stop()
        fake.stop()
    assert short[-1] == b"data: [DONE]"
    assert len(short) == 10 + 1
    assert long[-1] == b"data: [DONE]"
    error = json.loads(long[-2][len(b"data: ") :])
    assert error["error"]["code"] == "server_shutting_down"
    assert 5 < len(long) < 60  # the stream ran until the drain's deadline
    lines = [
        json.loads(line) for line in gateway.output().splitlines() if '"gateway.access"' in line
    ]
    completions = [line for line in lines if line["endpoint"] == "/v1/chat/completions"]
    assert sorted(line.get("error", "") for line in completions) == ["", "server_shutting_down"]


def test_sighup_does_not_end_a_single_process_gateway(tmp_path: Path) -> None:
    fake, fake_url = start_fake(tmp_path, "fake-a")
    gateway, url = start_gateway(tmp_path, one_worker_models(fake_url))
    try:
        gateway.popen.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert gateway.popen.poll() is None
        reply = httpx.post(url + "/v1/chat/completions", json={"model": "fake-a", "messages": CHAT})
        assert reply.status_code == 200
    finally:
        gateway.stop()
        fake.stop()
