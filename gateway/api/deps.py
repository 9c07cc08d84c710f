"""How handlers receive the AppState built in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.state import AppState


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, per request.
    state: AppState = request.app.state.gateway
    return state


State = Annotated[AppState, Depends(get_state)]
