"""FastAPI's exception handlers: every error it raises leaves in the OpenAI envelope too."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    UnknownRoute,
)


def install_handlers(app: FastAPI) -> None:
    """Make every error leave in the OpenAI envelope: ours, routing/validation ones, and bugs."""

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return exc.to_response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            error: GatewayError = UnknownRoute(f"Invalid URL ({method} {path})")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"Method {method} is not allowed on {path}")
        else:
            error = InvalidRequest(str(exc.detail))
            error.status = exc.status_code
        return error.to_response(exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return InvalidRequest(f"Invalid '{param}': {first['msg']}", param=param).to_response()

    async def on_bug(request: Request, exc: Exception) -> Response:
        logging.getLogger("gateway").error(
            "unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path
        )
        return InternalError("The gateway failed to handle the request.").to_response()

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_bug)
