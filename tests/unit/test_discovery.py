"""Workers found by DNS: the `dns` field, the expansion of a name into one worker per address,
the diff between answers, a failed answer keeping the last known set (logged once), and the
registry following the expansions as it follows a reloaded file."""

from __future__ import annotations

import logging

import pytest

from gateway.config.errors import ConfigError
from gateway.config.models import parse_models_config, split_host_port
from gateway.config.settings import Settings, parse_nameserver
from gateway.routing import discovery
from gateway.routing.discovery import (
    Discovery,
    ResolveFailed,
    Target,
    address_name,
    diff,
    dns_targets,
    expand,
)
from gateway.routing.registry import Registry

TEXT = (
    "models:\n"
    "  - {name: m, model: x, workers: [{name: v, dns: 'vllm.ns.svc:8000'},"
    " {name: fixed, url: 'http://10.9.9.9:8000'}]}\n"
)


def test_dns_worker_parses_and_is_attached() -> None:
    worker = parse_models_config(TEXT).models[0].workers[0]
    assert (worker.dns, worker.url, worker.launched) == ("vllm.ns.svc:8000", None, False)
    assert split_host_port("[fd00::1]:8000") == ("fd00::1", 8000)


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        ("{name: w, dns: 'vllm.svc'}", "the port is required"),
        ("{name: w, dns: 'vllm.svc:0'}", "port in 1-65535"),
        ("{name: w, dns: 'vllm.svc:http'}", "port in 1-65535"),
        ("{name: w, dns: ':8000'}", "the port is required"),
        ("{name: w, dns: 'a/b:8000'}", "host:port"),
        ("{name: w, dns: 'a:1', url: 'http://a:1'}", "either `url` or `dns`"),
        ("{name: w, dns: 'a:1', port: 1}", "drop `gpus`/`port`"),
        ("{name: w, dns: 'a:1', gpus: [0]}", "drop `gpus`/`port`"),
        ("{name: w}", "`url`, `dns`, or both `gpus` and `port`"),
    ],
)
def test_bad_dns_worker_is_a_config_error(worker: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_models_config(f"models: [{{name: m, model: x, workers: [{worker}]}}]", "t.yaml")
    assert "models[0] (name=m).workers[0] (name=w)" in str(caught.value)
    assert expected in str(caught.value)


def test_expand_gives_one_url_worker_per_address() -> None:
    config = parse_models_config(TEXT)
    assert dns_targets(config) == [Target("m", "v", "vllm.ns.svc", 8000)]
    assert [w.name for w in expand(config, {}).models[0].workers] == ["fixed"]
    out = expand(config, {("m", "v"): ("10.0.0.1", "fd00::2")})
    workers = out.models[0].workers
    assert [(w.name, w.url) for w in workers] == [
        ("v@10.0.0.1:8000", "http://10.0.0.1:8000"),
        ("v@[fd00::2]:8000", "http://[fd00::2]:8000"),
        ("fixed", "http://10.9.9.9:8000"),
    ]
    assert all(w.dns is None for w in workers)
    assert config.models[0].workers[0].dns is not None  # the source is untouched
    plain = parse_models_config(
        "models: [{name: m, model: x, workers: [{name: w, url: 'http://a'}]}]"
    )
    assert expand(plain, {}) is plain


def test_drain_applies_to_every_address() -> None:
    config = parse_models_config(TEXT.replace("8000'}", "8000', drain: true}", 1))
    workers = expand(config, {("m", "v"): ("10.0.0.1", "10.0.0.2")}).models[0].workers
    assert [w.drain for w in workers] == [True, True, False]


def test_diff_and_names() -> None:
    assert diff(["a", "b"], ["b", "c"]) == (["c"], ["a"])
    assert diff([], []) == ([], [])
    assert address_name("v", "10.0.0.1", 80) == "v@10.0.0.1:80"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
    ],
)
def test_nameservers(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example:53", "10.0.0.1:x", "10.0.0.1:70000", ""])
def test_bad_nameserver(text: str) -> None:
    with pytest.raises(ValueError, match="ip or ip:port"):
        parse_nameserver(text)
    with pytest.raises(ValueError, match="ip or ip:port"):  # refused at start, not at a round
        Settings(dns_nameservers=[text])


async def test_a_failure_keeps_the_last_set_and_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[tuple[str, ...] | Exception] = []

    async def fake_resolve(resolver: object, host: str) -> tuple[str, ...]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(discovery, "resolve", fake_resolve)
    config = parse_models_config(TEXT)
    found = Discovery(["127.0.0.1:1"], 1.0, 1.0)
    registry = Registry(expand(config, found.resolved), "http://127.0.0.1:{port}", 8)
    answers[:] = [("10.0.0.1", "10.0.0.2")]
    assert await found.refresh(config)
    change = registry.apply(expand(config, found.resolved))
    assert sorted(w.name for w in change.added) == ["v@10.0.0.1:8000", "v@10.0.0.2:8000"]
    kept = registry.route("m").workers[0]  # type: ignore[union-attr]

    caplog.set_level(logging.ERROR, "gateway.discovery")
    answers[:] = [ResolveFailed("timeout"), ResolveFailed("timeout"), ("10.0.0.2", "10.0.0.3")]
    assert not await found.refresh(config)
    assert not await found.refresh(config)
    assert found.resolved[("m", "v")] == ("10.0.0.1", "10.0.0.2")
    assert len([r for r in caplog.records if "failed" in r.message]) == 1

    assert await found.refresh(config)
    change = registry.apply(expand(config, found.resolved))
    assert [w.name for w in change.added] == ["v@10.0.0.3:8000"]
    assert [w.name for w in change.removed] == ["v@10.0.0.1:8000"]
    assert kept not in registry.workers()  # requests holding it finish on it; no new ones
    assert [w.name for w in registry.workers()] == ["v@10.0.0.2:8000", "v@10.0.0.3:8000", "fixed"]

    answers[:] = []
    gone = parse_models_config(
        "models: [{name: m, model: x, workers: [{name: w, url: 'http://a'}]}]"
    )
    assert await found.refresh(gone)  # the dns worker left the file: its addresses go
    assert found.resolved == {}
