"""Serving the app: uvicorn with the hardened protocol, one process or several sharing the port,
the open-files limit raised. Signals are the lifespan's (signals.py): SIGTERM drains then exits
0, SIGHUP reloads the configuration; with several processes the parent passes SIGHUP on."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.server.protocol import GatewayHttpProtocol

_BACKSTOP = 5.0  # seconds uvicorn waits beyond the drain before it cancels what is left


def raise_open_files_limit() -> int:
    """Raise this process's open-files limit to its hard limit; return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Supervisor(Multiprocess):
    """Several gateway processes on one port. SIGHUP is passed on to each, which reloads in
    place (uvicorn's own supervisor would replace them all)."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


def serve(app: Any, options: dict[str, Any], *, processes: int, drain_seconds: float) -> None:
    """Run `app` (an ASGI app, or for several processes the import string of a factory)."""
    options = {
        **options,
        "http": GatewayHttpProtocol,
        "ws": "none",  # an upgrade request is answered as plain HTTP, in the envelope
        "lifespan": "on",
        "proxy_headers": False,  # the gateway does not use the client's address
        "timeout_graceful_shutdown": drain_seconds + _BACKSTOP,
    }
    if processes == 1:
        uvicorn.Server(uvicorn.Config(app, **options)).run()
        return
    config = uvicorn.Config(app, factory=True, workers=processes, **options)
    Supervisor(config, sockets=[config.bind_socket()]).run()
