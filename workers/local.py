"""Run the launched workers of a ModelsConfig as real vLLM servers on this machine's CPUs.

Each worker is its own process group with its own log file; LocalWorkers starts them, waits until
every /health answers 200, and stops them (SIGTERM to the group, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import httpx

from gateway.config.models import AdapterConfig, ModelConfig, ModelsConfig, WorkerConfig
from workers.cpu_plan import (
    DEFAULT_CACHE_DIR,
    DEFAULT_VENV,
    REPO_ROOT,
    WorkerLaunch,
    adapter_commands,
    adapter_dir,
    plan_launches,
    server_command,
    server_env,
    tinylora_command,
    tinymodel_command,
)
from workers.progress import (
    WAITING_EVERY_SECONDS,
    print_line,
    still_waiting,
    worker_ready,
    worker_starting,
)


class WorkerStartError(RuntimeError):
    """A worker exited or did not become healthy in time; the message carries its log tail."""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still exists
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(pgid, sig)


def stop_groups(processes: list[subprocess.Popen[bytes]], grace: float = 30.0) -> None:
    """SIGTERM each whole group (vLLM's engine core and workers are children), then SIGKILL.

    All groups are signalled first so that several workers shut down in parallel.
    """
    # start_new_session=True made each leader's pid its group id.
    for process in processes:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for process in processes:
            process.poll()  # reap the leader: a zombie would keep its group alive
        if not any(_group_alive(process.pid) for process in processes):
            break
        time.sleep(0.2)
    for process in processes:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


class LocalWorkers:
    """Context manager: real vLLM CPU servers for every launched worker of `config`.

    `ports` maps worker names to ports that replace the configured ones (tests pass free ports).
    `env` is added to every server's environment; `stand_in_shape` names the stand-in's size
    (workers.tinymodel.SHAPES; None: the default); `cpu_bind` replaces every worker's planned
    VLLM_CPU_OMP_THREADS_BIND (e.g. "nobind": the kernel shares the CPUs among them).
    """

    def __init__(
        self,
        config: ModelsConfig,
        *,
        venv: Path = DEFAULT_VENV,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        ports: Mapping[str, int] | None = None,
        host: str = "127.0.0.1",
        kv_cache_gib: int = 1,
        startup_timeout: float = 600.0,
        stop_grace: float = 30.0,
        progress: Callable[[str], None] = print_line,
        env: Mapping[str, str] | None = None,
        stand_in_shape: str | None = None,
        cpu_bind: str | None = None,
    ) -> None:
        self._config = config
        self._env = dict(env or {})
        self._shape_args = ["--shape", stand_in_shape] if stand_in_shape else []
        self._python = venv / "bin" / "python"
        self._cache_dir = cache_dir
        self._kv_cache_gib = kv_cache_gib
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self._progress = progress
        cpus = sorted(os.sched_getaffinity(0))
        launches = plan_launches(config, cache_dir=cache_dir, host=host, ports=ports, cpus=cpus)
        # Each process on this machine publishes its KV-cache events on a port of its own.
        self._launches = {
            launch.name: dataclasses.replace(
                launch,
                kv_events_port=_free_port(host),
                cpu_bind=launch.cpu_bind if cpu_bind is None else cpu_bind,
            )
            for launch in launches
        }
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> LocalWorkers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def launches(self) -> list[WorkerLaunch]:
        return list(self._launches.values())

    def base_url(self, worker_name: str) -> str:
        """`http://host:port` of a launched worker (append /v1 for the OpenAI API)."""
        return self._launches[worker_name].base_url

    def attached_config(self) -> ModelsConfig:
        """The same config with each launched worker turned into an attached `url:` worker.

        What a gateway under test should route with, since the ports may have been overridden;
        LoRA adapters point at their local stand-ins (what a run-time load must name).
        """
        models = []
        for model in self.stand_in_config().models:
            workers = [self._as_attached(worker) for worker in model.workers]
            models.append(model.model_copy(update={"workers": workers}))
        return self._config.model_copy(update={"models": models})

    def stand_in_config(self) -> ModelsConfig:
        """The config with the LoRA adapters of launched models pointing at their local
        stand-ins: the paths a gateway must name when it loads one at run time."""
        models = []
        for model in self._config.models:
            adapters = [self._local_adapter(model, adapter) for adapter in model.adapters]
            models.append(model.model_copy(update={"adapters": adapters}))
        return self._config.model_copy(update={"models": models})

    def _local_adapter(self, model: ModelConfig, adapter: AdapterConfig) -> AdapterConfig:
        if not any(w.launched for w in model.workers):
            return adapter
        local = adapter_dir(self._cache_dir, adapter.name)
        return AdapterConfig(name=adapter.name, path=str(local))

    def stand_in_adapter(self, model_name: str, adapter_name: str) -> Path:
        """Generate (or keep) a stand-in LoRA adapter for a launched model that no worker loaded
        at start (for run-time loading); returns its directory."""
        launch = next(x for x in self._launches.values() if x.model.name == model_name)
        out_dir = adapter_dir(self._cache_dir, adapter_name)
        self._run_generator(
            tinylora_command(self._python, out_dir, launch.model, launch.model_dir, adapter_name)
        )
        return out_dir

    def _as_attached(self, worker: WorkerConfig) -> WorkerConfig:
        if worker.name not in self._launches:
            return worker
        return WorkerConfig(name=worker.name, url=self.base_url(worker.name))

    def start(self) -> None:
        """Generate stand-in models, start every worker, and wait until all are healthy."""
        try:
            self._prepare_models()
            for name in self._launches:
                self._spawn(name)
            self._wait_ready(list(self._launches))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every running worker; safe to call twice."""
        self._stop(list(self._processes))

    def kill(self, worker_name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a worker's whole process group without waiting (to simulate a crash)."""
        _signal_group(self._processes[worker_name].pid, sig)

    def restart(self, worker_name: str) -> None:
        """Stop one worker (if running), start it again and wait until it is healthy."""
        self._stop([worker_name])
        self._spawn(worker_name)
        self._wait_ready([worker_name])

    def exited(self) -> dict[str, int]:
        """Workers whose server process has exited, with their exit codes."""
        codes = {name: proc.poll() for name, proc in self._processes.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def _stop(self, names: list[str]) -> None:
        running = {name: self._processes.pop(name) for name in names if name in self._processes}
        if running:
            stop_groups(list(running.values()), self._stop_grace)
            self._progress(f"stopped worker(s) {', '.join(running)}")

    def _prepare_models(self) -> None:
        if not self._python.exists():
            raise WorkerStartError(f"no vLLM venv: {self._python} is missing (vllm-cpu goes there)")
        chains: dict[Path, list[list[str]]] = {}
        for launch in self._launches.values():
            if launch.model_dir in chains:  # workers of one model share its stand-in
                continue
            shape = self._shape_args if launch.model.runner == "generate" else []
            model = [*tinymodel_command(launch, self._python), *shape]
            # A model's adapters need the model first; the models are made side by side.
            chains[launch.model_dir] = [model, *adapter_commands(launch, self._python)]
        with ThreadPoolExecutor(max(1, len(chains))) as pool:
            for done in [pool.submit(self._run_chain, chain) for chain in chains.values()]:
                done.result()

    def _run_chain(self, commands: list[list[str]]) -> None:
        for command in commands:
            self._run_generator(command)

    def _run_generator(self, command: list[str]) -> None:
        # Offline: the generators read only local files, and no hub is reachable here anyway.
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
        subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            command, cwd=REPO_ROOT, env=env, check=True
        )

    def _spawn(self, name: str) -> None:
        launch = self._launches[name]
        if _port_in_use(launch.connect_host, launch.port):
            # Otherwise a stale server on that port would answer /health for us.
            raise WorkerStartError(f"worker {name}: port {launch.port} is already in use")
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._progress(worker_starting(launch))
        with launch.log_path.open("ab") as log:
            self._processes[name] = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                server_command(launch, self._python),
                env=server_env(launch, {**os.environ, **self._env}, self._kv_cache_gib),
                cwd=launch.model_dir.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop it whole, spare our Ctrl-C
            )

    def _wait_ready(self, names: list[str]) -> None:
        started = time.monotonic()
        reminded = started
        pending = list(names)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name in list(pending):
                    if self._healthy(client, name):
                        pending.remove(name)
                        waited = time.monotonic() - started
                        self._progress(worker_ready(self._launches[name], waited))
                if pending and time.monotonic() - reminded >= WAITING_EVERY_SECONDS:
                    reminded = time.monotonic()
                    self._progress(still_waiting(pending, reminded - started))
                if pending and time.monotonic() - started > self._startup_timeout:
                    name = pending[0]
                    raise WorkerStartError(
                        f"worker {name} not healthy after {self._startup_timeout:.0f} s; "
                        f"log tail:\n{log_tail(self._launches[name].log_path)}"
                    )
                if pending:
                    time.sleep(1.0)

    def _healthy(self, client: httpx.Client, name: str) -> bool:
        launch = self._launches[name]
        code = self._processes[name].poll()
        if code is not None:
            raise WorkerStartError(
                f"worker {name} exited with code {code} while starting; "
                f"log tail:\n{log_tail(launch.log_path)}"
            )
        try:
            return client.get(f"{launch.base_url}/health").status_code == 200
        except httpx.TransportError:  # nothing listens until the model is loaded
            return False
