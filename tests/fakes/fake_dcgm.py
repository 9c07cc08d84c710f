"""A stand-in for NVIDIA's DCGM exporter: /metrics serves the GPU-memory gauges the dashboard and
the alerts read (DCGM_FI_DEV_FB_USED, DCGM_FI_DEV_FB_FREE, in MiB), with the exporter's labels.

No GPU can exist on the test machines, so the live monitoring test scrapes this instead; the
names, types and labels follow dcgm-exporter's default counters (default-counters.csv).
Run: python -m tests.fakes.fake_dcgm --port P [--used-mib U0,U1,...] [--total-mib T]
(one GPU per number in --used-mib).
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(used_mib: list[int], total_mib: int) -> str:
    """The text a dcgm-exporter would serve for GPUs of `total_mib` each, `used_mib[i]` in use."""
    lines = []
    for name, help_text, free in (
        ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", True),
        ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", False),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for gpu, used in enumerate(used_mib):
            value = total_mib - used if free else used
            labels = (
                f'gpu="{gpu}",UUID="GPU-00000000-0000-0000-0000-00000000000{gpu}",'
                f'pci_bus_id="00000000:0{gpu}:00.0",device="nvidia{gpu}",'
                f'modelName="NVIDIA H100 80GB HBM3",Hostname="fake-gpu-host"'
            )
            lines.append(f"{name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


def handler_class(body: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, body, CONTENT_TYPE)
            elif self.path == "/health":
                self._answer(200, b"ok\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape would only fill the log

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--used-mib", default="73000,73000", help="comma-separated, one a GPU")
    parser.add_argument("--total-mib", type=int, default=81_559)
    args = parser.parse_args()
    used = [int(value) for value in args.used_mib.split(",")]
    body = exposition(used, args.total_mib).encode()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_class(body))
    server.serve_forever()


if __name__ == "__main__":
    main()
