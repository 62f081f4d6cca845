"""One request through txgate, stage by stage, in the order of the architecture diagram.

    match route · read body          (gateway.routing, gateway.body)
    authenticate the client          (auth.signatures)
    extract the transaction          (gateway.transaction)
    observe velocity                 (gateway.velocity, with the route's on_state_error policy)
    decide                           (rules)
    step up                          (auth.stepup)
    forward                          (gateway.forward)
    record                           (gateway.record: on-allow counters, metrics, decision log)

A stage that decides ends the request by raising GatewayError or AuthError; the answer to
both is built in gateway.responses. Every request is recorded, whatever ended it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid

import aiohttp
from aiohttp import web

from auth.errors import AuthError, invalid_signature
from auth.stepup import request_hash
from gateway.body import read_body
from gateway.errors import GatewayError, StateUnavailable
from gateway.exchange import Exchange
from gateway.features import builtin_attributes
from gateway.forward import stream_back, upstream_headers
from gateway.responses import error_response
from gateway.routing import check_path
from gateway.state.base import StateError
from metrics.definitions import FAIL_OPEN, STATE_ERRORS, UPSTREAM_DURATION, UPSTREAM_ERRORS

log = logging.getLogger("txgate.pipeline")
_TIER_RANK = {"client": 0, "otp": 1, "device": 2}
_NO_ROUTE = GatewayError(404, "no_route", "no route matches this request")
_INTERNAL = GatewayError(500, "internal_error", "the gateway failed; the request was not forwarded")


class Pipeline:
    def __init__(self, services):
        self.s = services   # gateway.services.Services: everything built once per process

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ex = Exchange(request, uuid.uuid4().hex, time.perf_counter())
        try:
            check_path(request.raw_path)
            route = ex.route = self.s.router.match(request.method, request.path, request.host)
            if route is None:
                raise _NO_ROUTE
            route.headers.check(request.headers)
            ex.body = await read_body(request, self.s.config.limits.max_body_bytes)
            await self.authenticate(ex)
            if route.config.transaction is None:
                await self.require_tier(ex, route.config.min_tier)
                return await self.forward(ex)
            with self.s.rulebook.use() as rules:
                ex.rules = rules
                self.extract(ex)
                await self.observe(ex)
                self.decide(ex)
                await self.step_up(ex)   # refuses a denied transaction before any challenge
                return await self.forward(ex)
        except (GatewayError, AuthError) as exc:
            ex.error = exc
            return error_response(exc, ex.request_id)
        except Exception:
            if ex.forwarded:
                raise   # the answer is already streaming: only the connection can end now
            log.exception("request %s failed inside the gateway", ex.request_id)
            ex.error = _INTERNAL
            return error_response(_INTERNAL, ex.request_id)
        finally:
            if not ex.forwarded and ex.observation is not None:
                # Not forwarded: take back the provisional on-allow counts before the answer
                # leaves, so that a step-up repeat never races its own withdrawal.
                await self.s.recorder.settle(ex)
            self.s.recorder.record(ex)

    async def authenticate(self, ex: Exchange) -> None:
        """The stateless half of the signature check; the single-use claims it yields ride on
        the request's one state round trip (``observe``), or on their own for pass-through."""
        req = ex.request
        target = f"{req.scheme}://{req.host}{req.raw_path}"
        try:
            checked = await self.s.verifier.check(req.method, target, req.headers, ex.body)
        except StateError as exc:
            # The client's key could not be read: the route's policy decides, and a key this
            # process still holds (stale-if-error) keeps the request going.
            self._state_failed(ex, exc)
            try:
                checked = await self.s.local_verifier.check(req.method, target, req.headers,
                                                            ex.body)
            except StateError:   # the client's key is not known to this process either
                raise StateUnavailable() from None
        ex.client_id = checked.client_id
        ex.key_id = checked.key_id
        ex.claims = tuple((key, max(1, int(ttl * 1000))) for key, ttl in checked.claims)
        ex.tier = "client"
        if ex.route.config.transaction is None:
            await self._claim_alone(ex)

    async def _claim_alone(self, ex: Exchange) -> None:
        if await self.s.replay.seen(ex.claims):
            raise invalid_signature("replay")
        if ex.degraded is None:
            try:
                await self.s.replay.ready()
                trip = await self.s.state.trip(ex.claims, ())
            except StateError as exc:
                self._state_failed(ex, exc)
            else:
                if not trip.fresh:
                    raise invalid_signature("replay")
        await self._keep_claims(ex)

    async def _keep_claims(self, ex: Exchange) -> None:
        # Kept in this process as well: while the store is down (fail_open, local) they are
        # the replay protection, and they are written back to the store when it returns.
        if not await self.s.replay.keep(ex.claims, store_down=ex.degraded is not None):
            raise invalid_signature("replay")

    def extract(self, ex: Exchange) -> None:
        req = ex.request
        ex.transaction = ex.route.extractor.extract(ex.body, req.headers, ex.client_id,
                                                    ex.normalized)
        ex.attrs = {**builtin_attributes(ex), **ex.transaction}

    async def observe(self, ex: Exchange) -> None:
        """ONE state call: the signature's claims, every counter, the provisional on-allow."""
        velocity = self.s.velocity_for(ex.rules)
        ex.event_id = await self._event_id(ex)
        if await self.s.replay.seen(ex.claims):
            raise invalid_signature("replay")
        observation = None
        if ex.degraded is None:
            try:
                await self.s.replay.ready()
                observation = await velocity.shared.observe_once(ex.attrs, ex.event_id,
                                                                 ex.claims)
                ex.velocity = velocity.shared
            except StateError as exc:
                self._state_failed(ex, exc)
        if observation is None or observation.fresh:
            await self._keep_claims(ex)
        if ex.degraded == "local":   # per-process counters while the store is down
            observation = await velocity.local.observe_once(ex.attrs, ex.event_id, ())
            ex.velocity = velocity.local
        if observation is not None:
            if not observation.fresh:
                raise invalid_signature("replay")
            ex.observation = observation
            ex.features = observation.features
        ex.attrs.update(ex.features)

    async def _event_id(self, ex: Exchange) -> str:
        """Identifies a transaction across its step-up repeat, so that it is counted once: a
        repeat takes the event id stored with the challenge it answers (server-side, never
        chosen by the client, and only for the exact request it was issued for)."""
        if "Txgate-Challenge" in ex.request.headers:
            try:
                known = await self.s.stepup.event_of(ex.transaction.get("user_id"),
                                                     ex.request.headers, _request_hash(ex))
            except StateError as exc:
                STATE_ERRORS.labels(exc.operation).inc()
                raise StateUnavailable() from None   # step-up never degrades
            if known:
                return known
        return secrets.token_urlsafe(18)

    def _state_failed(self, ex: Exchange, exc: StateError) -> None:
        """Apply the route's on_state_error policy: the one place it is decided."""
        STATE_ERRORS.labels(exc.operation).inc()
        policy = ex.route.config.on_state_error
        if policy == "fail_closed":
            raise StateUnavailable() from None
        if ex.degraded is None:   # counted once per request, however many stages failed
            FAIL_OPEN.labels(ex.route.name, policy).inc()
        ex.degraded = policy

    def decide(self, ex: Exchange) -> None:
        ex.decision = ex.rules.decide(ex.attrs, ex.route.name)

    async def step_up(self, ex: Exchange) -> None:
        _refuse_denied(ex)
        required = ex.route.config.min_tier
        wanted = ex.decision.required_tier
        if wanted and _TIER_RANK[wanted] > _TIER_RANK[required]:
            required = wanted
        if "Txgate-Challenge" in ex.request.headers:
            # An answer is always verified, and its challenge used up, even when the rules no
            # longer ask for one: the challenge made this request count as its transaction's
            # repeat, so it must not be reusable.
            required = max(required, "otp", key=_TIER_RANK.__getitem__)
        elif _TIER_RANK[required] <= _TIER_RANK[ex.tier]:
            return
        tier = await self._check(ex, required, ex.request.headers)
        if tier != ex.tier:
            # The rules see the tier the request proved; a stronger tier may change the decision.
            ex.tier = ex.attrs["tier"] = tier
            ex.stepped_up = True
            self.decide(ex)
            _refuse_denied(ex)
            wanted = ex.decision.required_tier
            if wanted and _TIER_RANK[wanted] > _TIER_RANK[tier]:
                await self._check(ex, wanted, {})

    async def _check(self, ex: Exchange, required: str, headers) -> str:
        try:
            return await self.s.stepup.check(
                required, ex.tier, ex.transaction.get("user_id"), _request_hash(ex),
                ex.transaction, headers, event_id=ex.event_id, client_id=ex.client_id)
        except StateError as exc:
            STATE_ERRORS.labels(exc.operation).inc()
            raise StateUnavailable() from None   # step-up never degrades: it guards money

    async def require_tier(self, ex: Exchange, min_tier: str) -> None:
        # Pass-through routes have no transaction and no user: only the client tier exists.
        if _TIER_RANK[min_tier] > _TIER_RANK[ex.tier]:
            raise GatewayError(403, "insufficient_tier", "this route needs a user tier")

    async def forward(self, ex: Exchange) -> web.StreamResponse:
        req, route = ex.request, ex.route
        added = {"Txgate-Request-Id": ex.request_id, "Txgate-Tier": ex.tier}
        if ex.decision is not None:
            added["Txgate-Decision"] = ex.decision.action
            added["Txgate-Risk-Score"] = _score(ex.decision.score)
        host = route.host_for(req.host) if route.config.match.hosts else self.s.config.public_host
        headers = upstream_headers(req.headers, client_ip=req.remote or "unknown", proto=req.scheme,
                                   host=host, added=added)
        ex.overhead_s = time.perf_counter() - ex.started
        sent = time.perf_counter()
        try:
            upstream = await self.s.forwarder.open(req.method, route.config.upstream + req.raw_path,
                                                   headers, ex.body)
        except GatewayError as exc:
            UPSTREAM_ERRORS.labels(route.name, exc.code.removeprefix("upstream_")).inc()
            raise
        UPSTREAM_DURATION.labels(route.name).observe(time.perf_counter() - sent)
        ex.forwarded = True
        ex.upstream_status = upstream.status
        after = asyncio.ensure_future(self.s.recorder.settle(ex)) if ex.decision else None
        try:
            return await stream_back(req, upstream, {"Txgate-Request-Id": ex.request_id})
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The status line is already sent: all we can do is cut the connection and count it.
            UPSTREAM_ERRORS.labels(route.name, "stream").inc()
            raise ConnectionResetError("upstream stream broke") from exc
        finally:
            if after is not None:
                await after


def _refuse_denied(ex: Exchange) -> None:
    if ex.decision.action == "deny":
        raise GatewayError(403, "transaction_denied", "the transaction was refused")


def _request_hash(ex: Exchange) -> bytes:
    if ex.request_hash is None:
        ex.request_hash = request_hash(ex.request.method, ex.request.raw_path, ex.body)
    return ex.request_hash


def _score(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else f"{score:.2f}"
