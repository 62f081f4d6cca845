"""Runs rule scenarios (``rules.scenarios``) the way the gateway runs requests.

Each step goes through the gateway's own parts: the route's transaction extractor (when a
config is given), the built-in attributes, ``Velocity.observe_once`` on a memory backend whose
clock is the scenario's, the rule set's ``decide``, the step-up sequence of the pipeline
(challenge, then the repeat of the same event answering it) and ``Recorder.settle`` for the
``on: allow`` counters and the strong-authentication resets. Only the network, the signature
and the OTP or device proof itself are left out: ``passed:`` says which tier the user proves.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from auth.tiers import tier_rank
from gateway.config import Config
from gateway.errors import GatewayError, InvalidRequest
from gateway.features import builtins
from gateway.rates import Rate, Rates, load_rates, money_attributes
from gateway.record import Recorder
from gateway.routing import Route, Router
from gateway.velocity import Velocity, settle_window_s
from rules.ruleset import RuleSet
from rules.ruletests import decision_failures, route_of
from rules.scenarios import Scenario, Step
from state.memory import MemoryBackend

_METHOD = "POST"
# Attributes the gateway adds itself, which a step may set in its transaction.
_BUILTIN = ("ip", "client_id")
# Every request through the gateway has an authenticated client: a scenario step that names
# none runs as this one (so `scope: client` counters count as they would).
DEFAULT_CLIENT = "scenario-client"
_EVENT_TTL_S = 360   # challenge_ttl_s (300) + 60, as gateway.services sets it


@dataclass
class _Request:
    """The part of gateway.exchange.Exchange that Recorder.settle reads."""

    attrs: dict
    event_id: str
    velocity: Velocity
    request_id: str
    observation: Any = None
    forwarded: bool = False
    upstream_status: int | None = None
    stepped_up: bool = False


@dataclass
class Result:
    """What became of one request of a scenario."""

    first: Any = None                # the decision before any step-up
    outcome: str = "error"
    tier: str = "client"
    error: str | None = None


class ScenarioRunner:
    """One runner per configuration; ``run`` takes a scenario and the loaded rule set."""

    def __init__(self, config: Config | None = None):
        """Raises RatesError when the config's rates file does not load."""
        self._routes = {r.name: r for r in Router.of(config).routes} if config else None
        gateway = config or Config()
        currencies = gateway.currencies
        self._settle_s = settle_window_s(gateway.limits.upstream_timeout_s)
        # A scenario's `start` is UTC; its steps' hour and weekday are local to this zone.
        self._zone = gateway.rules.zone
        self._base = currencies.base
        self._rates = load_rates(currencies.rates, currencies.base)

    @property
    def has_config(self) -> bool:
        return self._routes is not None

    def run(self, scenario: Scenario, rs: RuleSet) -> list[str]:
        """Failure messages (empty when every step met its expectations)."""
        return asyncio.run(self._run(scenario, rs))

    def play(self, scenario: Scenario, rs: RuleSet) -> list[Result]:
        """The result of every request of a scenario, no expectation checked (bench.pack_eval).
        Raises ValueError when the scenario cannot run (its route, unknown rule ids)."""
        route_name, route = self._plan(scenario, rs)

        async def collect():
            return [result async for _, _, result in self._play(scenario, rs, route_name, route)]
        return asyncio.run(collect())

    async def _run(self, scenario: Scenario, rs: RuleSet) -> list[str]:
        try:
            route_name, route = self._plan(scenario, rs)
        except ValueError as exc:
            return [str(exc)]
        async for step, i, result in self._play(scenario, rs, route_name, route):
            if i == step.repeat - 1:
                failures = _check(step, result)
                if failures:
                    label = f"step {step.where}" + (f" (repeat {i + 1})" if step.repeat > 1 else "")
                    return [f"{label}: {failures[0]}"] + failures[1:]
        return []

    def _plan(self, scenario: Scenario, rs: RuleSet) -> tuple[str, Route | None]:
        route_name = scenario.route or route_of(rs, [r for s in scenario.steps
                                                     for r in s.rules + s.not_rules])
        route = None
        if self._routes is not None:
            route = self._routes.get(route_name)
            if route is None or route.config.transaction is None:
                raise ValueError(f"route {route_name!r} is not a route with a transaction block in the config")
        known = {r.id for r in rs.rules}
        missing = sorted({r for s in scenario.steps for r in s.rules + s.not_rules} - known)
        if missing:
            raise ValueError(f"unknown rule ids: {', '.join(missing)}")
        return route_name, route

    async def _play(self, scenario: Scenario, rs: RuleSet, route_name: str, route: Route | None):
        """(step, repetition, Result) of every request, in order."""
        rates = self._rates
        if scenario.rates is not None:   # the scenario's own rates: stable whatever the file says
            rates = Rates(self._base, {code: Rate(Decimal(repr(value)), datetime.date.min)
                                       for code, value in scenario.rates.items()})
        clock = _Clock(scenario.start)
        velocity = Velocity(rs.counters, MemoryBackend(clock=clock),
                            settle_s=self._settle_s, event_ttl_s=_EVENT_TTL_S)
        events = 0
        for step in scenario.steps:
            for i in range(step.repeat):
                clock.now = scenario.start + step.at_s + i * step.every_s
                events += 1
                yield step, i, await _Step(rs, route, route_name, velocity, rates, step, clock.now,
                                           self._zone, f"s{events}",
                                           scenario.currency_without_rate).run()


class _Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Step:
    def __init__(self, rs, route: Route | None, route_name: str, velocity: Velocity,
                 rates: Rates, step: Step, now: float, zone, event_id: str, policy: str | None):
        self.rs, self.route, self.route_name = rs, route, route_name
        self.velocity, self.rates, self.step = velocity, rates, step
        self.now, self.zone, self.event_id = now, zone, event_id
        # Without a config, a route's defaults (RouteConfig) apply.
        self.min_tier = route.config.min_tier if route is not None else "client"
        self.policy = policy or (route.config.currency_without_rate if route is not None
                                 else "refuse")

    async def run(self) -> Result:
        result = Result()
        try:
            transaction, extra = _extract(self.route, self.step.transaction)
            self.money = money_attributes(transaction, self.rates, self.policy)
        except GatewayError as exc:   # refused at extraction: 400 or 415
            result.error = f"transaction refused: {exc}"
            return result
        self.transaction, self.extra = transaction, extra
        try:
            request, decision = await self._request("client")
        except ValueError as exc:   # a value of the wrong kind for the rule set
            result.error = f"transaction refused: {exc}"
            return result
        result.first = decision
        while True:
            if decision.action == "deny":
                result.outcome = "deny"
                break
            required = _max(self.min_tier, decision.required_tier or "client")
            if tier_rank(required) <= tier_rank(request.attrs["tier"]):
                request.forwarded, request.upstream_status = True, 200
                result.outcome = "review" if decision.action == "review" else "allow"
                break
            # A challenge for `required`: this request is not forwarded; the user's answer is
            # the repeat of the same event (the pipeline reuses the challenge's event id).
            await _settled(request)
            passed = self.step.passed
            if passed is None or tier_rank(passed) < tier_rank(required):
                result.outcome, request = "step_up", None
                break
            request, decision = await self._request("client")
            if decision.action == "deny":
                result.outcome = "deny"
                break
            # An answer is always verified, and at least as otp (gateway.pipeline.step_up).
            answered = _max(required, decision.required_tier or "client", "otp")
            if tier_rank(passed) < tier_rank(answered):
                result.outcome = "step_up"
                break
            request.attrs["tier"] = answered
            request.stepped_up = True
            decision = self.rs.decide(request.attrs, self.route_name)
        if request is not None:
            await _settled(request)
            result.tier = request.attrs["tier"]
        return result

    async def _request(self, tier: str):
        """One request of the step: built-ins, counters (one observe), the decision."""
        extra = self.extra
        attrs = {**builtins(self.route_name, _METHOD, tier, extra.get("client_id", DEFAULT_CLIENT),
                            extra.get("ip"), self.now, self.zone), **self.transaction, **self.money}
        request = _Request(attrs, self.event_id, self.velocity, self.event_id)
        observation = await self.velocity.observe_once(attrs, self.event_id, ())
        request.observation = observation
        attrs.update(observation.features)
        return request, self.rs.decide(attrs, self.route_name)


def _max(*tiers: str) -> str:
    return max(tiers, key=tier_rank)


def _extract(route: Route | None, given: dict) -> tuple[dict, dict]:
    """(transaction attributes, built-ins) of a step, through the route's extractor when there is
    a config: the same parsing, typing, checks and normalisation as a live request."""
    # null in a step removes a field the scenario's common transaction gives: not sent.
    given = {k: v for k, v in given.items() if v is not None}
    extra = {k: given[k] for k in _BUILTIN if k in given}
    rest = {k: v for k, v in given.items() if k not in _BUILTIN}
    if route is None:
        return rest, extra
    fields = {f.name: f for f in route.extractor.fields}
    unknown = sorted(set(rest) - set(fields))
    if unknown:
        raise InvalidRequest(f"{', '.join(unknown)}: not a field of route {route.name}")
    document: dict = {}
    headers: dict[str, str] = {"Content-Type": "application/json"}
    for name, value in rest.items():
        f = fields[name]
        if f.kind == "json":
            if not all(isinstance(step, str) for step in f.where):
                raise InvalidRequest(f"{name}: scenarios support object paths only")
            node = document
            for key in f.where[:-1]:
                node = node.setdefault(key, {})
            node[f.where[-1]] = value
        elif f.kind == "header":
            headers[f.where] = value if isinstance(value, str) else orjson.dumps(value).decode()
    principal = next((rest[n] for n, f in fields.items() if f.kind == "principal" and n in rest),
                     extra.get("client_id", DEFAULT_CLIENT))
    body = orjson.dumps(document) if route.extractor.needs_json else b""
    return route.extractor.extract(body, headers, principal), extra


def _check(step: Step, result: Result) -> list[str]:
    if result.error is not None:
        if step.outcome == "error":
            return []
        return [result.error]
    decision = result.first
    matched = [h.rule for h in decision.hits]
    failures = decision_failures(step, decision)
    if step.outcome is not None and result.outcome != step.outcome:
        failures.append(f"expected outcome {step.outcome}, got {result.outcome}")
    if step.tier is not None and result.tier != step.tier:
        failures.append(f"expected tier {step.tier}, got {result.tier}")
    if failures:
        failures.append(f"matched: {', '.join(matched) or '(none)'}; action {decision.action}, "
                        f"score {decision.score:g}; outcome {result.outcome}")
    return failures


async def _settled(request) -> None:
    """Recorder.settle and the round trip it may still need."""
    pending = Recorder.settle(request)
    if pending is not None:
        await pending
