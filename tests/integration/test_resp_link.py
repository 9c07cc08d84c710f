"""The limiter's own Redis link (gateway/limits/resp.py) against real redis-servers: replies in
order with error replies in place (as redis-py's pipeline, used for rediss://, gives them), AUTH
and SELECT from the URL, a restart survived, a silent server timed out, a cancelled caller
leaving the connection in step."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import uvloop
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.limits.batch import Link, PipelineLink, ScriptBatcher
from gateway.limits.resp import RespLink, pack, supports
from tests.procs import free_port
from tests.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    private = RedisServer(tmp_path)
    private.start()
    try:
        yield private
    finally:
        private.kill()


def test_pack_is_resp_arrays_of_bulk_strings() -> None:
    assert pack([("SET", b"k", 5), ("INCRBYFLOAT", "k", 0.5)]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
        b"*3\r\n$11\r\nINCRBYFLOAT\r\n$1\r\nk\r\n$3\r\n0.5\r\n"
    )
    with pytest.raises(DataError):
        pack([("SET", "k", None)])  # type: ignore[list-item]


def test_tls_urls_stay_with_redis_py() -> None:
    assert supports("redis://127.0.0.1:6379/2")
    assert supports("unix:///run/redis.sock?db=1")
    assert not supports("rediss://127.0.0.1:6379/0")


@pytest.mark.parametrize("kind", ["own", "redis-py"])
async def test_a_batch_gets_its_replies_in_order_with_errors_in_place(
    redis_url: str, kind: str
) -> None:
    client = Redis.from_url(redis_url)
    link: Link = RespLink(redis_url, 1.0) if kind == "own" else PipelineLink(client)
    try:
        replies = await link.execute(
            [
                ("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v"),
                ("EVALSHA", "0" * 40, 0),
                ("INCR", "k"),  # not an integer: an error reply
                ("EVAL", "return {1, 'two', KEYS[1]}", 1, "x"),
                ("GET", "k"),
            ]
        )
    finally:
        if isinstance(link, RespLink):
            await link.aclose()
        await client.aclose()
    assert replies[0] == b"OK"
    assert isinstance(replies[1], NoScriptError)
    assert isinstance(replies[2], ResponseError)
    assert not isinstance(replies[2], NoScriptError)
    assert replies[3] == [1, b"two", b"x"]
    assert replies[4] == b"v"


async def test_password_and_db_come_from_the_url(tmp_path: Path) -> None:
    port = free_port()
    private = RedisServer(tmp_path, port)
    private.start()
    try:
        redis.Redis(port=port).config_set("requirepass", "s3cret")
        link = RespLink(f"redis://:s3cret@127.0.0.1:{port}/3", 1.0)
        assert await link.execute([("SET", "where", "db3")]) == [b"OK"]
        await link.aclose()
        check = redis.Redis(port=port, db=3, password="s3cret")
        assert check.get("where") == b"db3"
        check.close()
        wrong = RespLink(f"redis://:nope@127.0.0.1:{port}/3", 1.0)
        with pytest.raises(RedisError):
            await wrong.execute([("GET", "where")])
    finally:
        private.kill()


async def test_a_restarted_redis_costs_one_reconnect_not_an_error(server: RedisServer) -> None:
    link = RespLink(server.url(0), 1.0)
    try:
        assert await link.execute([("SET", "a", "1")]) == [b"OK"]
        await asyncio.to_thread(server.restart)
        assert await link.execute([("SET", "a", "2")]) == [b"OK"]
        server.kill()
        with pytest.raises(RedisConnectionError):
            await link.execute([("GET", "a")])
    finally:
        await link.aclose()


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """Accepts connections and reads, never answers."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, accepted
    finally:
        server.close()
        for writer in accepted:
            writer.close()


async def test_a_silent_redis_times_out_and_the_next_call_uses_a_new_connection() -> None:
    async with _silent_server() as (port, accepted):
        link = RespLink(f"redis://127.0.0.1:{port}", 0.2)
        loop = asyncio.get_running_loop()
        for calls in (1, 2):
            started = loop.time()
            with pytest.raises(RedisTimeoutError):
                await link.execute([("GET", "k")])
            assert 0.15 < loop.time() - started < 1.0
            assert len(accepted) == calls  # the timed-out connection is not reused
        await link.aclose()


async def test_a_cancelled_caller_leaves_the_connection_in_step(redis_url: str) -> None:
    link = RespLink(redis_url, 1.0)
    try:
        (before,) = await link.execute([("CLIENT", "ID")])  # connected
        cut = asyncio.create_task(link.execute([("SET", "n", "second"), ("GET", "n")]))
        await asyncio.sleep(0)  # written, its replies not read yet
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        got = await link.execute([("GET", "n"), ("STRLEN", "n"), ("CLIENT", "ID")])
        assert got == [b"second", 6, before]  # the same connection, its replies in step
        assert await link.execute([]) == []
    finally:
        await link.aclose()


async def test_a_caller_cancelled_in_the_batcher_logs_nothing(redis_url: str) -> None:
    """Its future is cancelled, not given the CancelledError to log as never retrieved."""
    client = Redis.from_url(redis_url)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    await script(keys=["c"], args=[])  # loaded
    link = RespLink(redis_url, 1.0)
    batcher = ScriptBatcher(link)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        assert await batcher.call(script, ["c"], []) == 2  # connected
        cut = asyncio.create_task(batcher.call(script, ["c"], []))
        await asyncio.sleep(0)
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        del cut
        gc.collect()
        assert await batcher.call(script, ["c"], []) == 4  # the cut call ran too
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(previous)
        await link.aclose()
        await client.aclose()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_server_that_closes_at_once_is_a_connection_error_with_what_it_said(
    loop_kind: str,
) -> None:
    """As Redis at maxclients does: an error line, then the close (uvloop would raise
    RuntimeError writing to the closed connection; plain asyncio would wait for the timeout)."""

    async def scenario() -> str:
        async def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"-ERR max number of clients reached\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = RespLink(f"redis://127.0.0.1:{port}", 5.0)
        try:
            started = asyncio.get_running_loop().time()
            messages = []
            for _ in range(3):
                with pytest.raises(RedisConnectionError) as caught:
                    await link.execute([("GET", "k")])
                messages.append(str(caught.value))
                await asyncio.sleep(0.05)  # the close has arrived
            assert asyncio.get_running_loop().time() - started < 2.0  # no timeout waited out
            return messages[-1]
        finally:
            await link.aclose()
            server.close()

    runner = uvloop.run if loop_kind == "uvloop" else asyncio.run
    assert "max number of clients" in runner(scenario())


async def test_refused_is_a_connection_error() -> None:
    link = RespLink(f"redis://127.0.0.1:{free_port()}", 1.0)
    with pytest.raises(RedisConnectionError):
        await link.execute([("PING",)])
