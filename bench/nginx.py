"""nginx as a plain reverse proxy in front of the fake upstream: a reference for what relaying
costs in C, measured in the same run as the gateway (`python -m bench --nginx`).

Debian's nginx-light (`make tools` installs it without starting its service). One worker
process, keep-alive connections to the upstream, no buffering of answers (streams pass through
chunk by chunk, as the gateway relays them), no access log. CPU is read over master and worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.procs import Service, free_port, pinned

NGINX = "nginx"
LABEL = "nginx"


def available() -> str | None:
    """The nginx binary, or None (the bench then skips it with a note)."""
    return shutil.which(NGINX) or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def describe() -> str:
    return (
        "nginx (Debian's nginx-light) as a plain reverse proxy: 1 worker process, keep-alive to "
        "the upstream, proxy_buffering off, no access log (bench/nginx.py)"
    )


def config(port: int, upstream_url: str, prefix: Path) -> str:
    upstream = upstream_url.removeprefix("http://")
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream worker {{ server {upstream}; keepalive 2048; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location = /health {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def start_nginx(upstream_url: str, cpus: str, log_dir: Path) -> tuple[Service, str]:
    binary = available()
    if binary is None:
        raise RuntimeError("nginx is not installed (make tools)")
    port = free_port()
    prefix = log_dir / f"nginx-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config(port, upstream_url, prefix))
    args = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    service = Service("nginx", pinned(cpus, args), log_dir / f"nginx-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(url + "/health")
    except RuntimeError:
        service.stop()
        raise
    return service, url
