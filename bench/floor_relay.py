"""The floor for the benchmark: the least a Python relay on our stack can cost.

FastAPI + uvicorn (uvloop, httptools) + one aiohttp ClientSession, about thirty lines: the body
goes to the worker as it came, the answer comes back as it is (streams chunk by chunk). No keys,
validation, limits, routing, metrics, timeouts or error handling. `python -m bench --floor` runs
it as one more target beside the gateway, so the gateway's cost can be read against it.

    python -m bench.floor_relay --config MODELS_YAML --port P
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from bench.raw_floor import relay_args


def build(worker_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            app.state.session = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> Response:
        return Response(b"ok")

    @app.post("/v1/chat/completions")
    async def relay(request: Request) -> Response:
        session: aiohttp.ClientSession = request.app.state.session
        upstream = await session.post(
            worker_url + "/v1/chat/completions",
            data=await request.body(),
            headers={"content-type": "application/json"},
        )
        media = upstream.headers.get("content-type", "application/json")
        if media.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                async with upstream:
                    async for chunk in upstream.content.iter_any():
                        yield chunk

            return StreamingResponse(chunks(), upstream.status, media_type=media)
        async with upstream:
            return Response(await upstream.read(), upstream.status, media_type=media)

    return app


def main() -> None:
    url, port = relay_args(__doc__.splitlines()[0])
    uvicorn.run(
        build(url),
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
