"""The raw floor: the least any Python relay on asyncio can cost on this machine.

No framework and no ASGI: uvloop, one `asyncio.Protocol` per client connection, httptools
parsing the client's requests and the worker's answers, keep-alive connections to the worker
reused. The worker's answer goes to the client byte for byte as it arrives (its own head, its
own chunked framing): per streamed chunk one `recv` from the worker and one `send` to the client,
which is all a relay must do. No keys, validation, limits, routing, metrics, timeouts or error
handling. `python -m bench --floor` measures it beside the gateway and the FastAPI floor relay,
so the gateway's cost can be read against what Python itself costs.

    python -m bench.raw_floor --config MODELS_YAML --port P
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

from gateway.config.models import load_models_config

_HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class WorkerLink(asyncio.Protocol):
    """One keep-alive connection to the worker: its answer's bytes go straight to the client."""

    def __init__(self, pool: list[WorkerLink]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.client = None
        self.parser = httptools.HttpResponseParser(self)
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None:
            self.client.close()


class ClientConnection(asyncio.Protocol):
    """One client connection: each complete request goes to a worker connection."""

    def __init__(self, worker: tuple[str, int], pool: list[WorkerLink]) -> None:
        self.worker = worker
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        body, self.body = b"".join(self.body), []
        if self.url == b"/health":
            self.transport.write(_HEALTH)
            return
        head = (
            b"POST %s HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (self.url, len(body))
        )
        if self.pool:
            self._send(self.pool.pop(), head + body)
        else:
            asyncio.get_running_loop().create_task(self._connect_and_send(head + body))

    async def _connect_and_send(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, link = await loop.create_connection(lambda: WorkerLink(self.pool), *self.worker)
        self._send(link, request)

    def _send(self, link: WorkerLink, request: bytes) -> None:
        assert link.transport is not None
        link.client = self.transport
        link.transport.write(request)


async def serve(worker_url: str, port: int) -> None:
    parts = urlsplit(worker_url)
    worker = (parts.hostname or "127.0.0.1", parts.port or 80)
    pool: list[WorkerLink] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ClientConnection(worker, pool), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def relay_args(description: str) -> tuple[str, int]:
    """A floor's command line (--config MODELS_YAML --port P): its worker's URL and its port."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    url = load_models_config(Path(args.config)).models[0].workers[0].url
    assert url is not None, "a floor relays to an attached (url:) worker"
    return url, args.port


def main() -> None:
    uvloop.run(serve(*relay_args(__doc__.splitlines()[0])))


if __name__ == "__main__":
    main()
