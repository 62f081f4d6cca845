"""One request through txgate, stage by stage, in the order of the architecture diagram.

    match route · read body          (gateway.routing, gateway.body)
    authenticate the client          (auth.signatures)
    extract the transaction          (gateway.transaction)
    observe velocity                 (gateway.velocity, with the route's on_state_error policy)
    decide                           (rules)
    step up                          (auth.stepup)
    forward                          (gateway.forward)
    record                           (gateway.record: on-allow counters, metrics, decision log)

A stage that decides ends the request by raising a RequestError (GatewayError, AuthError);
the answer is built in gateway.responses. Every request is recorded, whatever ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import web

from auth.errors import RequestError, invalid_signature
from auth.signatures import client_id_from_certificate
from auth.challenges import request_hash
from auth.tiers import H_CHALLENGE, tier_rank
from gateway.body import read_body
from gateway.errors import GatewayError, StateUnavailable
from gateway.exchange import Exchange
from gateway.features import builtin_attributes
from gateway.forward import ClientStalled, stream_back, upstream_headers
from gateway.ids import event_id, request_id
from gateway.logs import REQUEST_ID
from gateway.rates import money_attributes
from gateway.responses import error_response
from gateway.routing import check_path
from state.base import StateError
from metrics.definitions import (CLIENT_STALLED, FAIL_OPEN, STATE_ERRORS, UPSTREAM_DURATION,
                                UPSTREAM_ERRORS)

log = logging.getLogger("txgate.pipeline")
_NO_ROUTE = GatewayError(404, "no_route", "no route matches this request")
_INTERNAL = GatewayError(500, "internal_error", "the gateway failed; the request was not forwarded")


class Pipeline:
    def __init__(self, services):
        self.s = services   # gateway.services.Services: everything built once per process

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ex = Exchange(request, request_id(), time.perf_counter(), self.s.shared_side)
        logged_as = REQUEST_ID.set(ex.request_id)   # every log line of this request carries it
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
            with self.s.rulebook.use() as rules, self._challenger() as challenger:
                ex.rules, ex.challenger = rules, challenger
                self.extract(ex)
                await self.observe(ex)
                self.decide(ex)
                await self.step_up(ex)   # refuses a denied transaction before any challenge
                return await self.forward(ex)
        except RequestError as exc:
            # Kept without its traceback and context: the traceback holds this frame, the frame
            # holds ``ex``, and ``ex`` would hold the error, a cycle of some fifty objects per
            # refused request that only the cycle collector frees (a flood of bad signatures
            # spent 15-18 % of the time collecting them, docs/performance.md).
            exc.__context__ = None
            ex.error = exc.with_traceback(None)
            return error_response(exc, ex.request_id)
        except Exception:
            if ex.forwarded:
                raise   # the answer is already streaming: only the connection can end now
            log.exception("request %s failed inside the gateway", ex.request_id)
            ex.error = _INTERNAL
            return error_response(_INTERNAL, ex.request_id)
        finally:
            if not ex.forwarded and (withdrawal := self.s.recorder.settle(ex)) is not None:
                # Not forwarded: take back the provisional on-allow counts before the answer
                # leaves, so that a step-up repeat never races its own withdrawal.
                await withdrawal
            self.s.recorder.record(ex)
            REQUEST_ID.reset(logged_as)

    def _challenger(self):
        book = self.s.challenger
        return book.use() if book is not None else contextlib.nullcontext()

    async def authenticate(self, ex: Exchange) -> None:
        """The stateless half of the signature check; the single-use claims it yields ride on
        the request's one state round trip (``observe``), or on their own for pass-through."""
        req = ex.request
        target = f"{req.scheme}://{req.host}{req.raw_path}"
        tls_client = _tls_client(req) if self.s.tls_clients else None
        try:
            checked = await self.s.verifier.check(req.method, target, req.headers, ex.body,
                                                  tls_client)
        except StateError as exc:
            # The client's key is not known to this process and the store cannot tell it
            # (keys it knew keep working while the store is down): no policy can serve.
            STATE_ERRORS.labels(exc.operation).inc()
            raise StateUnavailable() from None
        ex.client_id = checked.client_id
        ex.key_id = checked.key_id
        ex.claims = checked.claims
        ex.tier = "client"
        if ex.route.config.transaction is None:
            if not await self._on_side(ex, lambda side: side.claim(ex.claims)):
                raise invalid_signature("replay")

    def extract(self, ex: Exchange) -> None:
        req = ex.request
        ex.transaction = ex.route.extractor.extract(ex.body, req.headers, ex.client_id,
                                                    ex.normalized)
        ex.attrs = {**builtin_attributes(ex, self.s.zone), **ex.transaction}
        ex.attrs.update(money_attributes(ex.transaction, self.s.rates.current,
                                         ex.route.config.currency_without_rate))

    async def observe(self, ex: Exchange) -> None:
        """ONE state call: the signature's claims, every counter, the provisional on-allow."""
        pair = self.s.velocity_for(ex.rules, ex.challenger)
        ex.event_id = await self._event_id(ex)
        observation = await self._on_side(
            ex, lambda side: side.observe(pair, ex.attrs, ex.event_id, ex.claims))
        if observation is not None:
            if not observation.fresh:
                raise invalid_signature("replay")
            ex.observation, ex.velocity = observation, ex.side.velocity(pair)
            ex.attrs.update(observation.features)
            if observation.challenger:
                ex.challenger_features = observation.challenger

    async def _event_id(self, ex: Exchange) -> str:
        """Identifies a transaction across its step-up repeat, so that it is counted once: a
        repeat takes the event id stored with the challenge it answers (server-side, never
        chosen by the client, and only for the exact request it was issued for)."""
        if H_CHALLENGE in ex.request.headers:
            try:
                known = await self.s.stepup.event_of(ex.transaction.get("user_id"),
                                                     ex.request.headers, _request_hash(ex))
            except StateError as exc:
                STATE_ERRORS.labels(exc.operation).inc()
                raise StateUnavailable() from None   # step-up never degrades
            if known:
                return known
        return event_id()

    async def _on_side(self, ex: Exchange, call):
        """``call(ex.side)``; when the store fails, once more on the side the route's policy
        names (``degrade``)."""
        try:
            return await call(ex.side)
        except StateError as exc:
            self.degrade(ex, exc)
            return await call(ex.side)

    def degrade(self, ex: Exchange, exc: StateError) -> None:
        """Apply the route's on_state_error: the one place it is read."""
        STATE_ERRORS.labels(exc.operation).inc()
        policy = ex.route.config.on_state_error
        if policy == "fail_closed" or ex.side.policy is not None:
            raise StateUnavailable() from None
        FAIL_OPEN.labels(ex.route.name, policy).inc()
        ex.side = self.s.fallback[policy]

    def decide(self, ex: Exchange) -> None:
        ex.decision = ex.rules.decide(ex.attrs, ex.route.name)
        if ex.challenger is not None:
            # Decided on the same transaction and counters (its own over the champion's), and
            # only recorded: nothing the challenger says changes what happens to the request.
            try:
                ex.challenger_decision = ex.challenger.decide(
                    {**ex.attrs, **ex.challenger_features}, ex.route.name)
            except ValueError:   # a value of a kind its rules do not compare: logged as error
                ex.challenger_decision, ex.challenger_failed = None, True

    async def step_up(self, ex: Exchange) -> None:
        _refuse_denied(ex)
        required = ex.route.config.min_tier
        wanted = ex.decision.required_tier
        if wanted and tier_rank(wanted) > tier_rank(required):
            required = wanted
        if H_CHALLENGE in ex.request.headers:
            # An answer is always verified, and its challenge used up, even when the rules no
            # longer ask for one: the challenge made this request count as its transaction's
            # repeat, so it must not be reusable.
            required = max(required, "otp", key=tier_rank)
        elif tier_rank(required) <= tier_rank(ex.tier):
            return
        tier = await self._check(ex, required, ex.request.headers)
        if tier != ex.tier:
            # The rules see the tier the request proved; a stronger tier may change the decision.
            ex.tier = ex.attrs["tier"] = tier
            ex.stepped_up = True
            self.decide(ex)
            _refuse_denied(ex)
            wanted = ex.decision.required_tier
            if wanted and tier_rank(wanted) > tier_rank(tier):
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
        if tier_rank(min_tier) > tier_rank(ex.tier):
            raise GatewayError(403, "insufficient_tier", "this route needs a user tier")

    async def forward(self, ex: Exchange) -> web.StreamResponse:
        req, route = ex.request, ex.route
        added = {"Txgate-Request-Id": ex.request_id, "Txgate-Tier": ex.tier}
        if ex.decision is not None:
            # What happened, as the decision log says it: a step-up the request passed is an allow.
            added["Txgate-Decision"] = "review" if ex.decision.action == "review" else "allow"
            added["Txgate-Risk-Score"] = _score(ex.decision.score)
        host = route.host_for(req.host) if route.config.match.hosts else self.s.config.public_host
        headers = upstream_headers(req.headers, client_ip=req.remote or "unknown", proto=req.scheme,
                                   host=host, added=added)
        ex.overhead_s = time.perf_counter() - ex.started
        sent = time.perf_counter()
        try:
            upstream = await self.s.forwarder.open(req.method, route.config.upstream,
                                                   req.raw_path, headers, ex.body)
        except GatewayError as exc:
            UPSTREAM_ERRORS.labels(route.name, exc.code.removeprefix("upstream_")).inc()
            raise
        UPSTREAM_DURATION.labels(route.name).observe(time.perf_counter() - sent)
        ex.forwarded = True
        ex.upstream_status = upstream.status
        settling = self.s.recorder.settle(ex) if ex.decision else None
        after = asyncio.ensure_future(settling) if settling is not None else None
        try:
            return await stream_back(req, upstream, {"Txgate-Request-Id": ex.request_id},
                                     self.s.config.limits.client_timeout_s)
        except ClientStalled:
            CLIENT_STALLED.labels(route.name).inc()
            raise
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


def _tls_client(request: web.Request) -> str | None:
    transport = request.transport
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return None
    # getpeercert() is empty unless the certificate verified against client_ca_file.
    return client_id_from_certificate(transport.get_extra_info("peercert"))
