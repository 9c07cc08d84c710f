"""AppState: everything a request needs, built once per app in the lifespan (no globals).

The top of the import graph: only the API layer and the app factory read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.keys import KeyStore
from gateway.config.models import ModelsConfig
from gateway.config.settings import Settings
from gateway.limits.limiter import Limiter
from gateway.observe.metrics import Metrics
from gateway.relay.lora_load import AdapterLoader
from gateway.relay.relay import Relaying
from gateway.relay.upstream import Upstream
from gateway.routing.admission import Dispatcher
from gateway.routing.health import Health
from gateway.routing.kv_feeds import KvEventFeeds
from gateway.routing.prefix_share import PrefixShare
from gateway.routing.probe import HttpProbe
from gateway.routing.registry import Registry
from gateway.routing.response_homes import ResponseHomes
from gateway.server.drain import Drain


@dataclass(slots=True)
class AppState:
    settings: Settings
    config: ModelsConfig  # replaced, with models_body, when the models file is reloaded
    registry: Registry
    upstream: Upstream  # relayed requests (relay/h1.py)
    probe: HttpProbe  # health probes and /ready checks (httpx)
    relaying: Relaying  # the upstream client, the bounds and the drain every relay shares
    metrics: Metrics
    keys: KeyStore | None  # None: auth switched off
    limiter: Limiter
    health: Health
    dispatcher: Dispatcher
    models_body: bytes  # GET /v1/models, rendered once
    prefix_share: PrefixShare | None  # cache-aware routing decisions shared through Redis
    kv_feeds: KvEventFeeds  # precise mode: the workers' KV-cache events (idle otherwise)
    drain: Drain  # shutdown: /ready says 503, the requests in flight get a deadline
    homes: ResponseHomes  # which worker holds each stored Responses API response
    adapters: AdapterLoader  # LoRA adapters loaded on workers at run time
