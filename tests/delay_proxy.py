"""A TCP proxy that delays what flows back (target -> client) by a set time: the added latency
of a slow link (one round trip costs `delay` more), for a kernel without tc's netem.

The delay is read from a file (seconds, e.g. "0.05"), checked every 50 ms, so a test changes it
while connections stay open. Order is kept: each chunk leaves `delay` after it arrived.
Run: python -m tests.delay_proxy --listen 0.0.0.0:6380 --target 127.0.0.1:6379 --delay-file F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path


class Delay:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.seconds = 0.0

    async def follow(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                self.seconds = float(self._path.read_text().strip() or 0)
            await asyncio.sleep(0.05)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay | None
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + (delay.seconds if delay else 0.0), chunk))
        queue.put_nowait((0.0, b""))
        await sender
    finally:
        sender.cancel()
        writer.close()


async def serve(listen: str, target: str, delay: Delay) -> None:
    target_host, target_port = target.rsplit(":", 1)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(OSError):
            await asyncio.gather(
                _pipe(client_r, upstream_w, None),
                _pipe(upstream_r, client_w, delay),
                return_exceptions=True,
            )

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    follower = asyncio.create_task(delay.follow())
    async with server:
        await server.serve_forever()
    follower.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--delay-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.target, Delay(args.delay_file)))


if __name__ == "__main__":
    main()
