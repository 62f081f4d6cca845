"""Everything one gateway process builds once from its configuration and shares across requests."""

from __future__ import annotations

from dataclasses import dataclass

from auth.audit import ADMIN_ACTOR, audit_trail
from auth.credentials import CredentialStore
from auth.signatures import SignatureVerifier
from auth.stepup import StepUp
from gateway.config import Config
from gateway.decision_log import DecisionLog, open_sinks
from gateway.forward import Forwarder
from gateway.lists import ListAdmin
from gateway.record import Recorder
from gateway.replay import ReplayGuard
from gateway.routing import Router
from gateway.rates import RateBook
from gateway.rulebook import RuleBook
from gateway.sides import LocalSide, SharedSide
from gateway.velocity import Velocity, settle_window_s
from metrics.definitions import STEPUP, precreate
from state import create_backend
from state.lists import LiveLists
from state.memory import MemoryBackend


_KEPT_VELOCITY_VIEWS = 4


@dataclass(frozen=True, slots=True)
class VelocityPair:
    shared: Velocity     # on the configured state backend
    local: Velocity      # per-process counters for on_state_error: local


class Services:
    def __init__(self, config: Config, master_key):
        self.config = config
        self.router = Router.of(config)
        self.state = create_backend(config.state.backend, **config.state.backend_options())
        # This process's own store: claims it accepted, and counters under on_state_error: local.
        self.local_state = MemoryBackend()
        replay = ReplayGuard(self.state, self.local_state)
        self.shared_side = SharedSide(self.state, replay)
        self.fallback = {policy: LocalSide(policy, replay) for policy in ("fail_open", "local")}
        # Credential changes made here come through the admin API: its token is the actor.
        self.credentials = CredentialStore(self.state, master_key, audit=audit_trail(
            lambda record: self.decision_log.write(record), ADMIN_ACTOR))
        self.verifier = SignatureVerifier(self.credentials, config.auth.signature.max_skew_s)
        # With a client CA, a verified TLS certificate may prove the client tier (auth.signatures).
        self.tls_clients = bool(config.tls and config.tls.client_ca_file)
        totp = config.auth.totp
        self.stepup = StepUp(self.credentials, self.state, totp_digits=totp.digits,
                             totp_period=totp.period, totp_valid_window=totp.valid_window,
                             max_failures=totp.max_failures, lockout_s=totp.lockout_s,
                             max_failures_per_user=totp.max_failures_per_user,
                             max_attempts_per_client=config.auth.client_attempts.max,
                             client_window_s=config.auth.client_attempts.window_s,
                             challenge_ttl_s=config.auth.challenge_ttl_s,
                             on_outcome=lambda method, outcome: STEPUP.labels(method, outcome).inc())
        self.rulebook = RuleBook(config.rules.path, self.router.attribute_types())
        self.zone = config.rules.zone   # of the built-ins hour and weekday
        # The challenger (rules.challenger): decides every transaction too, never enforced.
        self.challenger = (RuleBook(config.rules.challenger, self.router.attribute_types(),
                                    challenger=True)
                           if config.rules.challenger else None)
        self.rates = RateBook(config.currencies.rates, config.currencies.base)
        self._velocity: dict[tuple, VelocityPair] = {}
        self.rulebook.listeners.append(self._rebuild_velocity)
        if self.challenger is not None:
            self.challenger.listeners.append(self._rebuild_velocity)
        self.forwarder = Forwarder(config.limits.upstream_timeout_s, config.routes)
        self.decision_log = DecisionLog(open_sinks(config), config.decision_log.queue_size)
        self.recorder = Recorder(self.decision_log)
        self.list_admin = ListAdmin(LiveLists(self.state), self.live_lists,
                                    self.decision_log.write)
        precreate({route.name: route.on_state_error for route in config.routes})

    def _rebuild_velocity(self, _) -> None:
        # Counters change with the rules (champion and challenger); both views are built at
        # load time, never per request. The previous sets' views are kept a while for
        # requests still pinned to them.
        if not self.rulebook.loaded:
            return   # a challenger loaded first: the champion's load builds the views
        champion = self.rulebook.current
        challenger = self.challenger.current if self.challenger and self.challenger.loaded else None
        self.velocity_for(champion, challenger)
        for versions in list(self._velocity)[:-_KEPT_VELOCITY_VIEWS]:
            del self._velocity[versions]

    def velocity_for(self, rules, challenger=None) -> VelocityPair:
        versions = (rules.version, challenger.version if challenger is not None else None)
        pair = self._velocity.get(versions)
        if pair is None:   # new sets, or pinned to sets older than the views kept (rare)
            pair = self._velocity[versions] = self._views(rules, challenger)
        return pair

    def _views(self, rules, challenger) -> VelocityPair:
        # An event is remembered only as long as its step-up repeat can still arrive: every
        # request leaves a marker, so this bounds the store's memory per request rate.
        ttl = self.config.auth.challenge_ttl_s + 60
        settle = settle_window_s(self.config.limits.upstream_timeout_s)
        extra = challenger.counters if challenger is not None else ()
        # Live lists are read on the shared store only: under fail_open or local their
        # membership is unknown (absent), so both `in` and `not in` a live list are false.
        return VelocityPair(
            Velocity(rules.counters, self.state, settle_s=settle, event_ttl_s=ttl,
                     memberships=rules.memberships, challenger_counters=extra,
                     challenger_memberships=challenger.memberships if challenger else ()),
            Velocity(rules.counters, self.local_state, settle_s=settle, event_ttl_s=ttl,
                     challenger_counters=extra))

    def live_lists(self) -> tuple[str, ...]:
        """The live lists the running rules declare, the challenger's included."""
        names = self.rulebook.current.live_lists
        if self.challenger is not None and self.challenger.loaded:
            names += self.challenger.current.live_lists
        return names

    def load_challenger(self) -> None:
        """Load the challenger if there is one; a failure is reported (log, metric, readiness)
        and leaves the gateway deciding with the champion alone."""
        if self.challenger is not None:
            self.challenger.reload_quietly()

    def reload_rules(self) -> None:
        """Reload both rule sets (SIGHUP, the workers' broadcast); failures are reported."""
        self.rulebook.reload_quietly()
        self.load_challenger()

    async def start(self) -> None:
        await self.state.start()
        await self.credentials.check_master_key()
        self.rates.load()
        self.rulebook.load()
        self.load_challenger()
        self.decision_log.start()

    async def close(self) -> None:
        await self.forwarder.close()
        await self.decision_log.close()
        await self.rulebook.close()
        if self.challenger is not None:
            await self.challenger.close()
        await self.rates.close()
        await self.state.close()
