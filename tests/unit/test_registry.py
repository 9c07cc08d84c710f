"""The registry kept in step with a reloaded models file: unchanged workers keep their state
(in-flight counts, health, prefix slots), new ones take free slots, a worker at a new address
is a new worker, removed ones leave, and `drain: true` takes a worker out of rotation."""

from __future__ import annotations

from gateway.config.models import parse_models_config
from gateway.routing.cache_aware import PrefixSettings
from gateway.routing.registry import Registry

PREFIX = PrefixSettings(
    block_bytes=64, bytes_per_token=4, cache_tokens=1000, balance=0.25, min_blocks=1
)


def config(*workers: str, drain: str = "") -> str:
    entries = ", ".join(
        f"{{name: {w}, url: 'http://{w}.local:{8000 if w != 'w1b' else 9000}'"
        + (", drain: true}" if w == drain else "}")
        for w in workers
    )
    return f"models:\n  - {{name: m, model: x, workers: [{entries}]}}\n"


def registry(*workers: str) -> Registry:
    return Registry(parse_models_config(config(*workers)), "http://127.0.0.1:{port}", 8, PREFIX)


def test_unchanged_workers_keep_their_state_and_new_ones_take_free_slots() -> None:
    reg = registry("w0", "w1", "w2")
    route = reg.route("m")
    assert route is not None
    w0, w1, w2 = route.workers
    w0.inflight = 3
    assert route.prefix is not None
    route.prefix.index.record(w2.slot, [1, 2])
    change = reg.apply(parse_models_config(config("w0", "w2", "w3")))
    assert route.workers[0] is w0
    assert w0.inflight == 3
    assert [w.name for w in change.removed] == ["w1"]
    assert [w.name for w in change.added] == ["w3"]
    assert route.workers[2].slot == w1.slot  # the freed slot, with nothing of w1's left in it
    assert route.prefix.index.size(w1.slot) == 0
    assert route.prefix.index.size(w2.slot) == 2


def test_a_worker_at_a_new_address_is_a_new_worker() -> None:
    reg = registry("w0", "w1")
    old = reg.workers()[1]
    text = config("w0", "w1").replace("w1.local:8000", "w1.local:9999")
    change = reg.apply(parse_models_config(text))
    assert change.removed == [old]
    assert change.added[0].url == "http://w1.local:9999"
    assert reg.workers()[1] is not old


def test_drain_takes_a_worker_out_of_rotation_and_back() -> None:
    reg = registry("w0", "w1")
    w0 = reg.workers()[0]
    change = reg.apply(parse_models_config(config("w0", "w1", drain="w0")))
    assert change.draining == [w0]
    assert not w0.takes_traffic(0.0)
    reg.apply(parse_models_config(config("w0", "w1")))
    assert w0.takes_traffic(0.0)


def test_models_come_and_go() -> None:
    reg = registry("w0")
    two = config("w0") + "  - {name: n, model: y, workers: [{name: v0, url: 'http://v0'}]}\n"
    change = reg.apply(parse_models_config(two))
    assert change.added_models == ["n"]
    assert reg.route("n") is not None
    change = reg.apply(parse_models_config(config("w0")))
    assert change.removed_models == ["n"]
    assert reg.route("n") is None
