"""The one pipeline behind every model-addressed endpoint of the table in gateway/request.py:
authenticate, read and check what the gateway needs of the body, find the model's workers,
limit, queue, relay, settle. The table's row says what differs; the code here never names a
path. The outer middleware calls it with the request's record: no FastAPI request parsing or
dependency solving per request (the completion routes are the hot path)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from gateway.api.auth import authenticate
from gateway.api.body import read_body
from gateway.api.multipart import boundary_of, form_fields, form_model, form_stream
from gateway.api.usage import effective_priority, settle
from gateway.api.validation import parse_request
from gateway.config.keys import Principal
from gateway.config.settings import Settings
from gateway.errors import (
    AdapterNotLoaded,
    GatewayError,
    InvalidValue,
    ModelNotFound,
    ResponseNotFound,
    ResponseWorkerGone,
    UnknownRoute,
    UnsupportedEndpoint,
)
from gateway.limits.limiter import Limiter, Reservation
from gateway.limits.reserve import reserve_tokens
from gateway.record import RequestRecord
from gateway.relay.amend import body_asking_usage, body_prioritized, body_tagged
from gateway.relay.lease import WorkerLease
from gateway.relay.relay import Outbound, Relay
from gateway.relay.usage import NamedUsageTap, UsageTap
from gateway.request import Endpoint, RequestView, response_path
from gateway.routing.admission import ModelQueue
from gateway.routing.cache_aware import PrefixRouting
from gateway.routing.policy import Preference
from gateway.routing.registry import ModelRoute, Worker
from gateway.routing.response_homes import Home
from gateway.state import AppState

log = logging.getLogger("gateway.api")

# Where vLLM reads a request's scheduling `priority` (a JSON body of its own API).
_ENGINE_PRIORITY = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES})

# Where a request may go to its worker before its admit's answer: generation, which closing the
# connection aborts (a refusal then costs the worker a moment). Not a cancel, a stored
# response's fetch or a background response (done at once, or going on without the connection).
_EARLY = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES})

# A query string relayed to the worker as it came: only characters that need no escaping.
_SAFE_QUERY = re.compile(rb"[A-Za-z0-9._~%&=+\-\[\]]{1,2000}")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where a request may go: its model's queue, maybe only some of its workers, and a LoRA
    adapter to load first on the one worker it will use."""

    queue: ModelQueue
    only: frozenset[Worker] | None = None
    load: tuple[Worker, str, str] | None = None  # (worker, adapter name, adapter path)


class EndpointRoute:
    """The handler of one row of the endpoint table."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.spec = endpoint.spec
        self.methods = self.spec.methods

    async def __call__(
        self, record: RequestRecord, scope: Scope, receive: Receive, send: Send
    ) -> None:
        state: AppState = scope["app"].state.gateway
        dialect = self.spec.dialect
        try:
            principal = authenticate(scope["headers"], state.keys, x_api_key=dialect == "anthropic")
            record.key = principal.name
            view, home = await self._view(state, scope, receive)
            record.view = view
            target = _target(state, principal, view, home)
            priority = effective_priority(principal, scope["headers"], view)
            if target.load is not None:
                await state.adapters.ensure(*target.load, record.request_id)
            limits = _limits(state, principal, view)
            admission: EarlyAdmission | None = None
            reservation: Reservation | None = None
            if limits is not None:
                if _may_go_early(view) and state.limiter.early(*limits):
                    admission = EarlyAdmission(state.limiter, *limits)
                else:
                    reservation = await state.limiter.admit(*limits)
        except GatewayError as exc:
            record.error_code = exc.code
            await exc.to_response(dialect=dialect)(scope, receive, send)
            return
        prefix = target.queue.route.prefix if self.spec.cache_aware else None
        try:
            record.model = view.model  # a configured name (model or adapter): a bounded label
            prefer = _preference(state.settings, scope, view, prefix, target.only)
            if prefer is not None and prefer.prefix is not None:
                record.prompt_blocks = len(prefer.prefix)
            lease = WorkerLease(
                target.queue,
                state.health,
                record,
                key=principal.name,
                prefer=prefer,
                priority=priority,
            )
            outbound = _outbound(state, scope, record, view, reservation, prefer)
            if view.endpoint in _ENGINE_PRIORITY and _schedules_by_priority(state, view.model):
                outbound.body = body_prioritized(outbound.body, view, priority)
            if admission is not None:
                outbound.admission = admission.decision
            await Relay(state.relaying, lease, record, outbound)(scope, receive, send)
        finally:
            if admission is not None:
                reservation = await admission.outcome()
            if reservation is not None:
                await settle(state.limiter, reservation, record)
            if prefix is not None and record.usage is not None:
                prefix.learn(record.prompt_blocks, record.usage.prompt)

    async def _view(
        self, state: AppState, scope: Scope, receive: Receive
    ) -> tuple[RequestView, Home | None]:
        """The request's view, and the worker holding the stored response it is about."""
        kind = self.spec.body
        if kind == "response_id":
            return await self._by_id(state, scope, receive)
        body = await read_body(scope, receive, state.settings.max_body_bytes)
        if kind == "form":
            return _form_view(self.endpoint, scope, body), None
        view = parse_request(self.endpoint, body)
        if view.response_id is None:
            return view, None
        home = await state.homes.find(view.response_id)
        if home is None:
            raise ResponseNotFound(
                f"Previous response with id '{view.response_id}' not found: the gateway has "
                "no record of it (never stored, or expired).",
                param="previous_response_id",
            )
        return view, home

    async def _by_id(
        self, state: AppState, scope: Scope, receive: Receive
    ) -> tuple[RequestView, Home]:
        found = response_path(scope["path"])
        if found is None:
            raise UnknownRoute(f"Invalid URL ({scope['method']} {scope['path']})")
        response_id = found[1]
        home = await state.homes.find(response_id)
        if home is None:
            raise ResponseNotFound(
                f"Response with id '{response_id}' not found: the gateway has no record of it "
                "(never stored, or expired)."
            )
        body = b""
        if scope["method"] == "POST":
            body = await read_body(scope, receive, state.settings.max_body_bytes)
        view = RequestView(self.endpoint, home[0], False, body, {}, None, 1, False, response_id)
        return view, home


def _schedules_by_priority(state: AppState, model: str) -> bool:
    """The model's workers run vLLM with --scheduling-policy priority (models.yaml)."""
    config = state.config.base_of(model)
    return config is not None and config.scheduling_policy == "priority"


def _form_view(endpoint: Endpoint, scope: Scope, body: bytes) -> RequestView:
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    fields = form_fields(body, boundary_of(content_type))
    model, stream = form_model(fields), form_stream(fields)
    return RequestView(endpoint, model, stream, body, dict(fields), None, 1, False)


def _target(state: AppState, principal: Principal, view: RequestView, home: Home | None) -> Target:
    resolved = state.registry.resolve(view.model)
    if resolved is None or not principal.may_use(view.model):
        raise ModelNotFound(view.model)
    route, adapter = resolved
    runner = view.endpoint.spec.runner
    if runner not in {"any", route.runner}:
        raise UnsupportedEndpoint(
            f"The model `{view.model}` is served by `{route.runner}` workers, which do not "
            f"serve {view.endpoint.path} (it needs a `{runner}` model).",
            param="model",
        )
    queue = state.dispatcher.queue(route.name)
    if home is None and adapter is None:
        return Target(queue)  # the common case
    now = asyncio.get_running_loop().time()
    if home is not None:
        return Target(queue, _home_worker(state, route, home, now, view))
    assert adapter is not None
    return _adapter_target(queue, route, adapter, now, state.adapters.loading)


def _home_worker(
    state: AppState, route: ModelRoute, home: Home, now: float, view: RequestView
) -> frozenset[Worker]:
    """The worker holding the stored response, which alone can answer about it."""
    home_route = state.registry.resolve(home[0])
    if home_route is None or home_route[0] is not route:
        raise InvalidValue(
            f"Response '{view.response_id}' was made by model `{home[0]}`, not `{view.model}`.",
            param="previous_response_id",
        )
    worker = route.worker(home[1])
    if worker is None or not worker.takes_traffic(now):
        raise ResponseWorkerGone(
            f"The worker holding response '{view.response_id}' ({home[1]}) is gone or down; "
            "no other worker has it."
        )
    return frozenset({worker})


def _adapter_target(
    queue: ModelQueue,
    route: ModelRoute,
    adapter: str,
    now: float,
    loading: Callable[[tuple[Worker, ...], str], Worker | None],
) -> Target:
    """Workers with the adapter loaded; else one to load it on at run time (when the model
    allows it: loading is idempotent, so a worker whose adapters are not known yet gets a
    load; without run-time loading such a worker is trusted to have been launched with it)."""
    unknown_ok = not route.runtime_lora
    having = frozenset(
        w
        for w in route.workers
        if (w.adapters is None and unknown_ok) or (w.adapters is not None and adapter in w.adapters)
    )
    if any(w.takes_traffic(now) for w in having):
        return Target(queue, having)
    live = [w for w in route.workers if w.takes_traffic(now)]
    if route.runtime_lora and live:
        pending = loading(route.workers, adapter)  # join a load under way, never start two
        worker = pending if pending in live else min(live, key=lambda w: w.inflight)
        return Target(queue, frozenset({worker}), (worker, adapter, route.adapters[adapter]))
    if having:
        return Target(queue, having)  # all down: the queue says no_healthy_backend
    raise AdapterNotLoaded(
        f"No worker of model `{route.name}` has the LoRA adapter `{adapter}` loaded, and "
        "loading adapters at run time is off for it (runtime_lora)."
    )


def _preference(
    settings: Settings,
    scope: Scope,
    view: RequestView,
    prefix: PrefixRouting | None,
    only: frozenset[Worker] | None,
) -> Preference | None:
    """Session affinity (x-session-id, else the body's `user`), the prompt's blocks for
    cache-aware routing, prompt-size steering, and the workers the request is bound to."""
    session = None
    if settings.session_affinity:
        for name, value in scope["headers"]:
            if name == b"x-session-id":
                session = value.decode("latin-1")
                break
        else:
            user = view.doc.get("user")
            session = user if isinstance(user, str) and user else None
    bucket = None
    boundaries = settings.length_buckets_bytes
    if settings.length_steering:
        size = len(view.body)
        bucket = sum(1 for boundary in boundaries if size >= boundary)
    hashes = prefix.hashes(view) if prefix is not None else None
    if session is None and bucket is None and not hashes and only is None:
        return None
    tag = _tag(view) if prefix is not None and prefix.exact is not None and hashes else None
    return Preference(session, bucket, len(boundaries) + 1, hashes, tag, only)


def _tag(view: RequestView) -> str:
    """What marks the request on the worker's KV-cache events: vLLM's `session_id` (the
    client's own when it set one)."""
    client = view.doc.get("session_id")
    return client if isinstance(client, str) and client else "gw-" + os.urandom(8).hex()


def _limits(
    state: AppState, principal: Principal, view: RequestView
) -> tuple[Principal, int] | None:
    """Whom the limiter decides for, and the tokens to reserve (None: no keys, no limits)."""
    if state.keys is None:  # no keys: one anonymous caller, no limits, no usage per key
        return None
    usage = view.endpoint.spec.usage
    if usage == "none":  # no token limit here: requests per minute and concurrency only
        if principal.tpm is not None:
            principal = dataclasses.replace(principal, tpm=None)
        return principal, 0
    if usage == "prompt":
        return principal, len(view.body) // 4 + 1
    return principal, reserve_tokens(view, state.settings.default_reserved_completion_tokens)


def _may_go_early(view: RequestView) -> bool:
    return view.endpoint in _EARLY and view.doc.get("background") is not True


class EarlyAdmission:
    """The admit of a request that went to its worker before its answer (limits/headroom.py):
    `decision` for the relay (resolves to the x-ratelimit headers, or raises the refusal), and
    the reservation to settle afterwards."""

    def __init__(self, limiter: Limiter, principal: Principal, cost: int) -> None:
        self.reservation: Reservation | None = None
        self._limiter = limiter
        self.decision = asyncio.get_running_loop().create_task(self._admit(principal, cost))

    async def _admit(self, principal: Principal, cost: int) -> list[tuple[bytes, bytes]]:
        self.reservation = await self._limiter.admit(principal, cost, early=True)
        return self.reservation.headers

    async def outcome(self) -> Reservation | None:
        """The reservation once decided (None: refused, or the limiter failed closed)."""
        decision = self.decision
        if not decision.done():  # the client left, or the worker failed, before the gate
            with contextlib.suppress(Exception):
                await asyncio.shield(decision)  # (a cancel of ours must not cancel it)
        if not decision.cancelled():
            error = decision.exception()  # retrieved: the relay answered with a refusal
            if error is not None and not isinstance(error, GatewayError):
                log.error("request limits failed", exc_info=error)
        return self.reservation


def _outbound(  # noqa: PLR0917 (the one call site names them)
    state: AppState,
    scope: Scope,
    record: RequestRecord,
    view: RequestView,
    reservation: Reservation | None,
    prefer: Preference | None,
) -> Outbound:
    spec = view.endpoint.spec
    headers = reservation.headers if reservation is not None else []
    tap: UsageTap | NamedUsageTap | None = None
    body = view.body
    if view.stream:
        if spec.stream == "named":
            tap = NamedUsageTap()
        elif spec.usage != "none":  # ask vLLM for the usage chunk; strip it if not asked
            tap = UsageTap(strip=not view.include_usage)
            body = body_asking_usage(view)
    if prefer is not None and prefer.tag is not None:
        body = body_tagged(body, view, prefer.tag)
    out = Outbound(
        view.endpoint.path,
        body,
        view.stream,
        headers,
        tap,
        dialect=spec.dialect,
        named=spec.stream == "named",
        usage=spec.usage != "none",
    )
    if spec.body != "json":
        _special(out, scope, view)
    if view.endpoint is Endpoint.RESPONSES and view.doc.get("store") is not False:
        model = view.model

        async def remember(response_id: str) -> None:
            await state.homes.remember(response_id, model, record.worker or "")

        out.remember = remember
    return out


def _special(out: Outbound, scope: Scope, view: RequestView) -> None:
    """Multipart uploads keep their content type; requests about a stored response go to its
    own path, with the client's method."""
    out.usage = False
    if view.endpoint.spec.body == "form":
        content_type = next(v for k, v in scope["headers"] if k == b"content-type")
        out.content_type = content_type.decode("latin-1")
    else:  # the query too: GET /v1/responses/{id}?include[]=...
        query: bytes = scope.get("query_string", b"")
        path = scope["path"]
        if query and _SAFE_QUERY.fullmatch(query):
            path += "?" + query.decode("ascii")
        out.path, out.method = path, scope["method"]


def endpoint_routes() -> dict[str, EndpointRoute]:
    """Path -> handler, dispatched ahead of FastAPI by middleware.RequestContext."""
    return {endpoint.path: EndpointRoute(endpoint) for endpoint in Endpoint}
