"""What the load is sent to: the fake upstream directly, or a gateway configuration in front of it.

A configuration is a label, GATEWAY_* variables and the limits of the bench's API key, so
features can be switched per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.procs import ROOT, Service, free_port, pinned

MODEL = "bench-model"
# Without API keys the bench measures the bare gateway; a configuration turns them on with
# GATEWAY_AUTH_ENABLED=true, and then gets a keys file holding the bench's key.
# The fake upstream shares its CPU with the load generator: under a thousand paced streams on a
# busy machine its /health answer can take over the default second, and an ejected upstream
# would turn the run into 503s. The probes still run, as in production. The one fake upstream
# takes any number of streams: the per-worker in-flight cap (256 by default, then queueing and
# 503s) is raised so paced1024 and the fleet steps measure relaying, not admission.
BASE_ENV = {
    "GATEWAY_AUTH_ENABLED": "false",
    "GATEWAY_HEALTH_TIMEOUT": "10",
    "GATEWAY_MAX_INFLIGHT_PER_WORKER": "8192",
}
KEY_LIMITS = ("rpm", "tpm", "max_concurrent")
# The non-streaming request wrk sends. Compact JSON on purpose: bench.streamload sends spaced
# JSON, so the upstream's stream detection and the gateway's parsing see both spellings.
CHAT_BODY = orjson.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something, please."}],
        "max_tokens": 32,
    }
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    label: str
    env: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    key_limits: dict[str, int] = field(default_factory=dict)  # of the bench's API key
    module: str = "gateway"  # what runs: the gateway, or a reference relay (the floors)
    checkout: Path | None = None  # run the gateway of another checkout (A/B of a change)

    @property
    def auth(self) -> bool:
        return self.env.get("GATEWAY_AUTH_ENABLED", "true").lower() in ("1", "true", "yes", "on")

    def describe(self) -> str:
        if self.module != "gateway":
            return f"`{self.label}`: `python -m {self.module}` (a reference, not the gateway)"
        env = ", ".join(f"`{k}={v}`" for k, v in sorted(self.env.items())) or "none (defaults)"
        noun = "process" if self.processes == 1 else "processes"
        text = f"`{self.label}`: {self.processes} {noun}; GATEWAY_* set: {env}"
        if self.checkout is not None:
            text += f"; the gateway of checkout {self.checkout} ({_revision(self.checkout)})"
        if self.auth:
            limits = ", ".join(f"{k}={v}" for k, v in sorted(self.key_limits.items()))
            text += f"; API key limits: {limits or 'none'}"
        return text


FLOOR = GatewayConfig("floor", module="bench.floor_relay")
RAW_FLOOR = GatewayConfig("raw-floor", module="bench.raw_floor")


def _revision(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()[:80] or "not a git checkout"


def new_api_key() -> str:
    """The key all loads send as `Authorization: Bearer` (ignored while auth is off)."""
    return "sk-gw-bench-" + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class Target:
    """A URL under load; `service` is the gateway whose CPU is measured (None: direct)."""

    name: str
    url: str
    service: Service | None = None


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


def parse_config_set(spec: str, common: dict[str, str], processes: int) -> GatewayConfig:
    """`name:KEY=V,key.rpm=N,...` (or just `name`) -> a configuration on top of `common`.

    `key.rpm`, `key.tpm` and `key.max_concurrent` are limits of the bench's API key (they go
    into the keys file); `checkout=PATH` runs the gateway of that checkout (e.g. a `git
    worktree` of the commit before a change: A and B in one run); every other item is an
    environment variable.
    """
    label, _, rest = spec.partition(":")
    if not label:
        raise ValueError(f"a config set needs a name: {spec!r}")
    items = parse_env([p for p in rest.split(",") if p.strip()])
    limits: dict[str, int] = {}
    for name in [k for k in items if k.startswith("key.")]:
        limit = name.removeprefix("key.")
        if limit not in KEY_LIMITS:
            raise ValueError(f"{name}: the key's limits are {', '.join(KEY_LIMITS)}")
        limits[limit] = int(items.pop(name))
    checkout = items.pop("checkout", None)
    return GatewayConfig(
        label,
        {**common, **items},
        processes,
        limits,
        checkout=Path(checkout).resolve() if checkout else None,
    )


def keys_file(path: Path, api_key: str, limits: dict[str, int]) -> Path:
    """The gateway's keys file with the bench's key (JSON, which is YAML too)."""
    entry: dict[str, object] = {
        "name": "bench",
        "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
    }
    entry.update(limits)
    path.write_text(json.dumps({"keys": [entry]}, indent=1))
    return path


def models_yaml(upstream_url: str) -> str:
    return (
        "models:\n"
        f"  - name: {MODEL}\n"
        "    model: bench/fake-upstream\n"
        "    workers:\n"
        f'      - {{name: bench-upstream, url: "{upstream_url}"}}\n'
    )


def _processes_option(processes: int, cwd: Path) -> list[str]:
    """`--processes N` for a gateway of N processes (CPU and RSS are summed over its tree)."""
    if processes == 1:
        return []  # also works with a gateway from before --processes existed
    usage = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "--processes" not in usage:
        raise SystemExit(f"--processes {processes}: this gateway has no --processes option")
    return ["--processes", str(processes)]


def start_gateway(
    config: GatewayConfig, upstream_url: str, cpus: str, log_dir: Path, api_key: str
) -> tuple[Service, str]:
    """Start a gateway for `config` pinned to `cpus`; return once its /health answers."""
    port = free_port()
    config_file = log_dir / f"models-{config.label}-{port}.yaml"
    config_file.write_text(models_yaml(upstream_url))
    # Inherited GATEWAY_* variables are dropped: only the configuration decides what is on.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(config.env)
    if config.auth and "GATEWAY_KEYS_FILE" not in env:
        path = log_dir / f"keys-{config.label}-{port}.yaml"
        env["GATEWAY_KEYS_FILE"] = str(keys_file(path, api_key, config.key_limits))
    args = [sys.executable, "-m", config.module, "--config", str(config_file), "--port", str(port)]
    # `python -m` puts the working directory first on sys.path: another checkout's gateway.
    cwd = config.checkout or ROOT
    if config.module == "gateway":
        args += _processes_option(config.processes, cwd)
    service = Service(
        f"gateway {config.label}",
        pinned(cpus, args),
        log_dir / f"gateway-{config.label}-{port}.log",
        env,
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(url + "/health")
    except RuntimeError:
        service.stop()
        raise
    return service, url
