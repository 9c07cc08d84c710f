"""A gateway facing hostile or broken clients, over raw sockets (clients would normalise what is
sent here): unbounded request heads, silent and slow connections, bodies shorter than their
Content-Length, too many connections, malformed HTTP, a trailing slash, a WebSocket upgrade, and
stream clients that stop reading. Each gets a bounded, enveloped answer or a clean close, and
none of it costs other clients their service or a healthy worker its place."""

from __future__ import annotations

import contextlib
import re
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.test_routing import metric
from tests.procs import Proc, one_worker_models, start_fake, start_gateway

CHAT = [{"role": "user", "content": "hi"}]
HARDENED = {
    "GATEWAY_HEADER_TIMEOUT": "2",
    "GATEWAY_BODY_TIMEOUT": "2",
    "GATEWAY_CLIENT_WRITE_TIMEOUT": "1",
    "GATEWAY_HEALTH_INTERVAL": "0.5",
    "GATEWAY_EJECT_AFTER_FAILURES": "2",
}


@dataclass
class Stack:
    url: str
    port: int
    fake: str
    gateway: Proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile")
    fake, fake_url = start_fake(tmp, "fake-a")
    try:
        gateway, url = start_gateway(tmp, one_worker_models(fake_url), HARDENED)
        try:
            yield Stack(url, int(url.rsplit(":", 1)[1]), fake_url, gateway)
        finally:
            gateway.stop()
    finally:
        fake.stop()


def connect(stack: Stack, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict[str, object], bool]:
    """Read until the server closes: (status, JSON body, closed)."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, orjson.loads(body) if body else {}, True


def chat_latency(stack: Stack) -> float:
    started = time.perf_counter()
    body = {"model": "fake-a", "messages": CHAT}
    assert httpx.post(stack.url + "/v1/chat/completions", json=body).status_code == 200
    return time.perf_counter() - started


# --- 1. the request head is bounded ---------------------------------------------------------


def test_a_150_mb_header_is_refused_and_others_keep_their_latency(stack: Stack) -> None:
    idle = statistics.median(chat_latency(stack) for _ in range(30))
    refused: list[tuple[int, dict[str, object], bool]] = []

    def attack() -> None:
        sock = connect(stack)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):
            for _ in range(1500):  # 150 MB, 100 KB at a time
                sock.sendall(b"a" * 100_000)
        refused.append(answer_of(sock))

    attacker = threading.Thread(target=attack)
    attacker.start()
    during = [chat_latency(stack) for _ in range(30)]
    attacker.join(30)
    status, body, _ = refused[0]
    assert status == 431
    assert body["error"]["code"] == "request_header_too_large"  # type: ignore[index]
    assert statistics.median(during) <= 2 * idle + 0.002


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 100_000 + b"\r\n",
    ],
    ids=["64k-header", "101-headers", "100k-headers"],
)
def test_an_oversized_head_gets_431_in_the_envelope(stack: Stack, head: bytes) -> None:
    sock = connect(stack)
    with contextlib.suppress(OSError):
        sock.sendall(head)
    status, body, closed = answer_of(sock)
    assert (status, closed) == (431, True)
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# --- 3. slow and silent clients are closed ----------------------------------------------------


def test_2000_silent_connections_do_not_stop_service_and_close_at_the_header_deadline(
    stack: Stack,
) -> None:
    silent = [connect(stack, timeout=10) for _ in range(2000)]
    try:
        assert chat_latency(stack) < 1.0  # served while they sit there
        started = time.monotonic()
        statuses = [answer_of(sock)[0] for sock in silent]
        assert time.monotonic() - started < 6  # the header deadline is 2 s
        assert set(statuses) == {408}
    finally:
        for sock in silent:
            sock.close()


def test_headers_trickled_one_byte_a_second_are_cut_at_the_deadline(stack: Stack) -> None:
    sock = connect(stack)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n":
            sock.send(bytes([byte]))
            time.sleep(1)
            if time.monotonic() - started > 5:
                break
    status, body, _ = answer_of(sock)
    assert status == 408
    assert time.monotonic() - started < 5
    assert body["error"]["code"] == "request_timeout"  # type: ignore[index]


def test_a_body_shorter_than_its_content_length_is_cut_at_the_body_deadline(stack: Stack) -> None:
    sock = connect(stack)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b'content-length: 1000\r\n\r\n{"model": "fake-a"'
    )
    started = time.monotonic()
    status, body, _ = answer_of(sock)
    assert status == 408
    assert time.monotonic() - started < 5
    assert "body" in str(body["error"]["message"])  # type: ignore[index]


def test_connections_beyond_the_cap_get_503_and_a_close(tmp_path: Path) -> None:
    fake, fake_url = start_fake(tmp_path, "fake-a")
    env = {"GATEWAY_MAX_CONNECTIONS": "20", "GATEWAY_HEADER_TIMEOUT": "30"}
    gateway, url = start_gateway(tmp_path, one_worker_models(fake_url), env)
    port = int(url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        status, body, _ = answer_of(extra)
        assert status == 503
        assert body["error"]["code"] == "server_overloaded"  # type: ignore[index]
        held.pop().close()
        time.sleep(0.2)
        assert httpx.get(url + "/health").status_code == 200  # a freed place is usable
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
        fake.stop()


# --- 7. every answer in the envelope ----------------------------------------------------------


def test_malformed_http_gets_a_400_envelope(stack: Stack) -> None:
    sock = connect(stack)
    sock.sendall(b"GARBAGE\x00\x01 NOT HTTP\r\n\r\n")
    status, body, _ = answer_of(sock)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_trailing_slash_is_a_404_envelope_never_a_redirect(stack: Stack) -> None:
    reply = httpx.post(
        stack.url + "/v1/chat/completions/",
        json={"model": "fake-a", "messages": CHAT},
        headers={"host": "evil.example"},
    )
    assert reply.status_code == 404
    assert "location" not in reply.headers
    assert reply.json()["error"]["code"] == "unknown_url"


def test_a_websocket_upgrade_is_answered_in_the_envelope(stack: Stack) -> None:
    reply = httpx.get(
        stack.url + "/v1/chat/completions",
        headers={
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "x3JJHMbDL1EzLkh9GBhXDw==",
        },
    )
    assert reply.status_code == 405
    assert reply.json()["error"]["code"] == "method_not_allowed"


# --- 2. a client that stops reading is its own fault ----------------------------------------


def stalled_stream(stack: Stack) -> socket.socket:
    """Ask for a long stream of large events, then never read (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.port))
    body = orjson.dumps(
        {
            "model": "fake-a",
            "messages": CHAT,
            "stream": True,
            "fake": {"chunks": 5000, "text": "x" * 4000},
        }
    )
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def read_slowly(port: int, chunks: int, pause: float) -> bytes:
    """A stream of `chunks` 4 KB events (more than the socket buffers hold) read by a client
    that first reads nothing for `pause` seconds, then reads on, a little at a time."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    body = orjson.dumps(
        {
            "model": "fake-a",
            "messages": CHAT,
            "stream": True,
            "fake": {"chunks": chunks, "text": "x" * 4000},
        }
    )
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    data = bytearray()
    with sock:
        time.sleep(pause)
        while chunk := sock.recv(65536):
            data += chunk
            time.sleep(0.002)
    return bytes(data)


def assert_whole_stream(data: bytes, chunks: int) -> None:
    assert data.startswith(b"HTTP/1.1 200")
    indexes = [int(found) for found in re.findall(rb"x{4000}(\d+) ", data)]
    assert indexes == list(range(chunks))
    assert b'"error"' not in data
    assert data.rstrip().endswith(b"data: [DONE]\n\n\r\n0")


def test_a_slow_client_gets_every_event_and_is_not_taken_for_a_stalled_worker(
    tmp_path: Path,
) -> None:
    """The send buffer fills and reading from the worker pauses until the client catches up,
    losing nothing; while the gateway waits for the client, the stream's idle deadline (no event
    from the worker for that long) does not run: the client's own write deadline bounds it."""
    fake, fake_url = start_fake(tmp_path, "fake-a")
    env = {
        "GATEWAY_FIRST_BYTE_TIMEOUT": "0.5",  # the deadline's first firing (it only moves later)
        "GATEWAY_IDLE_TIMEOUT": "0.5",
        "GATEWAY_CLIENT_WRITE_TIMEOUT": "5",
    }
    try:
        gateway, url = start_gateway(tmp_path, one_worker_models(fake_url), env)
        try:
            assert_whole_stream(read_slowly(int(url.rsplit(":", 1)[1]), 3000, 1.5), 3000)
            assert metric(url, "gateway_upstream_errors_total", 'kind="timeout"') == 0
        finally:
            gateway.stop()
    finally:
        fake.stop()


def test_three_clients_that_stop_reading_are_dropped_and_never_eject_the_worker(
    stack: Stack,
) -> None:
    aborted_before = httpx.get(stack.fake + "/fake/stats").json()["aborted"]
    gone_before = metric(stack.url, "gateway_requests_total", 'status="499"')
    clients = [stalled_stream(stack) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while httpx.get(stack.fake + "/fake/stats").json()["aborted"] < aborted_before + 3:
            assert time.monotonic() < deadline, "the stalled streams were not dropped"
            time.sleep(0.1)
        assert metric(stack.url, "gateway_requests_total", 'status="499"') == gone_before + 3
        ready = httpx.get(stack.url + "/ready").json()
        assert ready["workers"]["fake-a/w0"]["up"] is True
        assert ready["workers"]["fake-a/w0"]["ejected_for"] == 0
        assert ready["workers"]["fake-a/w0"]["inflight"] == 0  # their slots are free
        assert chat_latency(stack) < 1.0
    finally:
        for sock in clients:
            sock.close()
    log = stack.gateway.output()
    assert log.count('"error":"client_write_timeout"') >= 3
