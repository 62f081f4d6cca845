"""Step-up: raise a request from the tier it proved to the tier its risk needs.

``StepUp.check`` is the pipeline's one call. Given the required and proven tiers it either
returns the tier achieved, or raises ``AuthError``:

- 401 ``insufficient_user_authentication`` with a fresh challenge (header and body of the
  contract) when the request carries no answer, a wrong one, or one for an expired, used or
  foreign challenge. Every failure looks the same to the client: it never says whether the
  challenge, the code, the device or the transaction was wrong.
- 423 ``user_locked`` once ``max_failures`` consecutive wrong answers were given; the lock lasts
  ``lockout_s`` (``Retry-After`` says how long) and then the user starts again with a clean
  count. A success resets the count.
- 401 ``otp_reused`` with a fresh challenge and ``Retry-After`` (seconds to the next time
  step) when the code is right but its time step was already accepted: a user who sent the
  same code twice learns to wait for the next one instead of retyping a "wrong" code. It
  tells nothing a guesser can use (a used step never opens again) and counts as a failure.
- 403 ``enrollment_required`` when the user has no active credential for the tier needed (or
  the route names no user): asking for a code nobody can produce would only loop. The body's
  ``missing`` names what to enrol (``totp`` or ``device``) or ``user_id`` when there is no user.

Counting: wrong answers (bad code, replayed code, bad device signature, unknown device,
challenge for another transaction or a weaker method) count toward the lockout. An answer to
a challenge that no longer exists (expired, already used, another user's) is not counted:
nothing was verified, so nothing was guessed. The count lives ``failure_window_s`` (24 h
by default) after the first failure. A locked user is refused step-up only: a request whose
proven tier already suffices is not a strong authentication and passes untouched.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from auth.challenges import Challenge, ChallengeStore
from auth.credentials import CredentialStore
from auth.devices import decode_signature, signing_payload
from auth.errors import AuthError
from auth.tiers import H_CHALLENGE, H_DEVICE_ID, H_DEVICE_SIGNATURE, H_OTP, tier_rank
from auth.totp import Totp
from state.base import StateBackend


@dataclass(frozen=True, slots=True)
class _Reused:
    """A right TOTP code whose time step was already accepted; the next step starts in
    ``retry_after_s`` seconds."""
    retry_after_s: int


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not hasattr(headers, "getall"):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value.strip() if value else None


class StepUp:
    """Challenge issuance and verification of OTP and device answers, with lockout."""

    def __init__(self, store: CredentialStore, state: StateBackend, totp_digits: int = 6,
                 totp_period: int = 30, totp_valid_window: int = 1, max_failures: int = 5,
                 lockout_s: int = 900, challenge_ttl_s: int = 300,
                 on_outcome: Callable[[str, str], None] | None = None,
                 failure_window_s: int = 86400, clock=time.time,
                 max_failures_per_user: int | None = None, max_attempts_per_client: int = 0,
                 client_window_s: int = 60):
        self._store = store
        self._state = state
        self.totp = Totp(totp_digits, totp_period, totp_valid_window)
        self.challenges = ChallengeStore(state, challenge_ttl_s, clock)
        self._max_failures = max_failures
        self._max_failures_per_user = max_failures_per_user or max_failures
        self._max_attempts_per_client = max_attempts_per_client
        self._client_window_s = client_window_s
        self._lockout_s = lockout_s
        self._failure_window_s = max(failure_window_s, lockout_s)
        self._on_outcome = on_outcome or (lambda method, outcome: None)
        self._clock = clock

    @staticmethod
    def _keys(user: str) -> tuple[str, str, str]:
        tag = f"{{u:{user}}}"
        return f"{tag}:auth:failures", f"{tag}:auth:locked", f"{tag}:totp:step"

    def _lockouts(self, user: str, client: str | None) -> list[tuple[str, str, int]]:
        """(failures key, locked key, limit) of every lockout a wrong answer counts toward:
        the user's through this client (so another client cannot lock the user out), and the
        user's across all clients (so guesses spread over clients are bounded too)."""
        failures, locked, _ = self._keys(user)
        lockouts = [(failures, locked, self._max_failures_per_user)]
        if client is not None:
            lockouts.append((f"{failures}:c={client}", f"{locked}:c={client}", self._max_failures))
        return lockouts

    async def check(self, required_tier: str, proven_tier: str, user_id: str | None,
                    request_hash: bytes, transaction: Mapping, headers: Mapping[str, str],
                    event_id: str | None = None, client_id: str | None = None) -> str:
        """The tier achieved (``proven_tier`` when it suffices, else "otp" or "device");
        raises AuthError 401 (challenge), 403 (nothing enrolled), 423 (locked) or 429 (the
        client's answers across its users are over their limit). A challenge issued here
        remembers ``event_id`` (ChallengeStore.event_of)."""
        if tier_rank(proven_tier) >= tier_rank(required_tier):
            return proven_tier
        if not user_id:
            raise AuthError(403, "enrollment_required", "no_user",
                            body={"acr_values": required_tier, "missing": "user_id"})
        lockouts = self._lockouts(user_id, client_id)

        challenge_id = _get(headers, H_CHALLENGE)
        signature, device_id = _get(headers, H_DEVICE_SIGNATURE), _get(headers, H_DEVICE_ID)
        code = _get(headers, H_OTP)
        # A device answer wins when both are sent: it is the stronger proof.
        method = "device" if signature and device_id else "otp" if code else None

        for _, locked_key, _ in lockouts:
            locked_until = await self._state.get(locked_key)
            if locked_until is not None:
                self._on_outcome(method or required_tier, "locked")
                raise self._locked(float(locked_until))

        reason = "step_up_required"
        if challenge_id and method:
            if client_id is not None and self._max_attempts_per_client:
                await self._limit_client(client_id, method)
            challenge = await self.challenges.take(user_id, challenge_id)
            if challenge is None:
                self._on_outcome(method, "expired")
                reason = "challenge_expired"
            else:
                # The attempt is counted before it is checked: concurrent answers each draw a
                # number atomically, so no more than the limit are ever verified.
                attempts = [await self._state.incr(failures, self._failure_window_s)
                            for failures, _, _ in lockouts]
                verdict = None
                if all(n <= limit for n, (_, _, limit) in zip(attempts, lockouts)):
                    verdict = await self._verify(challenge, method, required_tier, user_id,
                                                 request_hash, transaction, code, signature,
                                                 device_id)
                if verdict is True:
                    for failures, _, _ in lockouts:
                        await self._state.delete(failures)
                    self._on_outcome(method, "passed")
                    return method
                until = None
                for n, (failures, locked_key, limit) in zip(attempts, lockouts):
                    if n >= limit:
                        until = self._clock() + self._lockout_s
                        await self._state.put(locked_key, repr(until).encode(), self._lockout_s)
                        # The count ends with the lock (not before: answers still in flight
                        # must keep drawing numbers above the limit), then starts afresh.
                        await self._state.put(failures, str(n).encode(), self._lockout_s)
                if until is not None:
                    self._on_outcome(method, "locked")
                    raise self._locked(until)
                if isinstance(verdict, _Reused):
                    self._on_outcome(method, "reused")
                    raise await self._issue(required_tier, user_id, request_hash, transaction,
                                            "otp_reused", event_id, reused=verdict)
                self._on_outcome(method, "failed")
                reason = "step_up_failed"
        raise await self._issue(required_tier, user_id, request_hash, transaction, reason,
                                event_id)

    async def event_of(self, user_id: str | None, headers: Mapping[str, str],
                       request_hash: bytes) -> str | None:
        """The event id of the transaction whose challenge this request answers, if any."""
        challenge_id = _get(headers, H_CHALLENGE)
        if not user_id or not challenge_id:
            return None
        return await self.challenges.event_of(user_id, challenge_id, request_hash)

    async def _verify(self, challenge: Challenge, method: str, required_tier: str, user: str,
                      req_hash: bytes, transaction: Mapping, code, signature,
                      device_id) -> bool | _Reused:
        """True for a valid answer, False for a wrong one, _Reused for a right TOTP code whose
        time step was already accepted."""
        # The answer must be as strong as both what was asked then and what is needed now
        # (the rules may have changed between the challenge and its answer).
        if tier_rank(method) < max(tier_rank(challenge.method), tier_rank(required_tier)):
            return False
        if not challenge.matches(user, req_hash):
            return False
        if method == "device":
            device = await self._store.device_key(user, device_id)
            raw = decode_signature(signature)
            if device is None or raw is None:
                return False
            payload = signing_payload(challenge.id, user, transaction.get("amount"),
                                      transaction.get("currency"), transaction.get("payee"),
                                      req_hash)
            return device.verify(payload, raw)
        secret = await self._store.totp_secret(user)
        if secret is None:
            return False
        step = self.totp.matching_step(secret, code, self._clock())
        if step is None:
            return False
        # Each time step is accepted once per user: an equal or older step is a replay.
        if await self._state.advance(self._keys(user)[2], step, self.totp.replay_ttl()):
            return True
        now = self._clock()
        next_step = max(step, self.totp.step(now)) + 1
        return _Reused(max(1, math.ceil(next_step * self.totp.period - now)))

    async def _acr(self, required_tier: str, user: str) -> str:
        """The method to ask for: a TOTP code for "otp" (a device when the user has no TOTP
        but a device, which proves more), a device signature for "device"."""
        if required_tier == "otp" and await self._store.has_totp(user):
            return "otp"
        if await self._store.has_device(user):
            return "device"
        raise AuthError(403, "enrollment_required", "not_enrolled",
                        body={"acr_values": required_tier,
                                    "missing": "totp" if required_tier == "otp" else "device"})

    async def _issue(self, required_tier: str, user: str, req_hash: bytes, transaction: Mapping,
                     reason: str, event_id: str | None, reused: _Reused | None = None
                     ) -> AuthError:
        acr = await self._acr(required_tier, user)
        challenge = await self.challenges.issue(user, acr, req_hash, event_id)
        self._on_outcome(acr, "issued")
        body = {"acr_values": acr, "challenge": challenge.id,
                "expires_in": self.challenges.ttl_s}
        if acr == "device":
            payload = signing_payload(challenge.id, user, transaction.get("amount"),
                                      transaction.get("currency"), transaction.get("payee"),
                                      req_hash)
            body["signing_payload"] = base64.b64encode(payload).decode("ascii")
        code = "insufficient_user_authentication" if reused is None else "otp_reused"
        headers = {"WWW-Authenticate": f'Txgate-Step-Up error="{code}", '
                                       f'acr_values="{acr}", challenge="{challenge.id}"'}
        if reused is not None:
            headers["Retry-After"] = str(reused.retry_after_s)
            body["retry_after"] = reused.retry_after_s
        return AuthError(401, code, reason, headers=headers, body=body)

    async def _limit_client(self, client_id: str, method: str) -> None:
        # Answers are counted per client across all its users: a client guessing codes for
        # many users, a few each, stays under every user's lockout but not under this.
        attempts = await self._state.incr(f"{{c:{client_id}}}:auth:attempts", self._client_window_s)
        if attempts > self._max_attempts_per_client:
            self._on_outcome(method, "limited")
            raise AuthError(429, "too_many_attempts", "client_limited",
                            headers={"Retry-After": str(self._client_window_s)})

    def _locked(self, until: float) -> AuthError:
        retry = max(1, int(until - self._clock() + 0.999))
        return AuthError(423, "user_locked", "locked", headers={"Retry-After": str(retry)})
