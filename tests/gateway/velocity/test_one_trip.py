"""The request's single state call: claims folded in, on-allow counts applied provisionally.

One suite for memory, a real redis-server and a real cluster (the ``state_backends`` fixture).
"""

from __future__ import annotations

from decimal import Decimal

from gateway.velocity import Velocity
from tests.gateway.velocity.helpers import forwarded, refused, spec

PAY = {"user_id": "alice", "amount": Decimal("10.10"), "payee": "DE02X", "device_id": "d1"}
ALLOWED = [spec("allowed_amount", ["user_id"], "sum", field="amount", window_s=60, on="allow"),
           spec("allowed_tx", ["user_id"], "count", window_s=60, on="allow"),
           spec("lowvalue", ["user_id"], "sum", field="amount", reset_on="strong_auth",
                on="allow"),
           spec("attempts", ["user_id"], "count", window_s=60)]
CLAIM = [("{c:bank}:sig:1", 60_000), ("{c:bank}:nonce:1", 60_000)]


def test_a_used_claim_refuses_and_counts_nothing(state_backends):
    async def scenario(b):
        v = Velocity(ALLOWED, b)
        first = await v.observe_once(PAY, "e1", CLAIM)
        assert first.fresh and first.features["attempts"] == 1
        replay = await v.observe_once(PAY, "e2", CLAIM[1:])   # same nonce, new signature
        assert not replay.fresh and replay.features == {}
        # Nothing of the refused request was written: neither counts nor its other claim.
        assert (await v.observe_once(PAY, "e3", [("{c:bank}:sig:2", 60_000)])).fresh
        assert (await forwarded(v, PAY, "e4"))["attempts"] == 3
    state_backends.run(scenario)


def test_provisional_on_allow_is_invisible_to_its_own_request_and_kept(state_backends):
    async def scenario(b):
        v = Velocity(ALLOWED, b)
        seen = await v.observe_once(PAY, "e1", ())
        assert seen.features == {"allowed_amount": 0.0, "allowed_tx": 0, "lowvalue": 0.0,
                                 "attempts": 1}
        # Forwarded: nothing more to do; the next request sees the first one allowed.
        assert not v.allow_after_forward
        assert (await refused(v, PAY, "e2")) == {"allowed_amount": 10.1, "allowed_tx": 1,
                                                 "lowvalue": 10.1, "attempts": 2}
        # record_allowed never applies the provisional kinds a second time.
        await v.record_allowed(PAY, "e1")
        assert (await refused(v, PAY, "e3"))["allowed_tx"] == 1
    state_backends.run(scenario)


def test_withdraw_restores_counts_and_lets_the_repeat_count(state_backends):
    async def scenario(b):
        v = Velocity(ALLOWED, b)
        await v.observe_once(PAY, "e0", ())                  # an earlier allowed payment
        challenged = await v.observe_once(PAY, "e1", ())     # then refused (step-up)
        assert challenged.features["allowed_tx"] == 1
        await v.withdraw(challenged)
        assert (await refused(v, PAY, "peek1")) == {"allowed_amount": 10.1, "allowed_tx": 1,
                                                    "lowvalue": 10.1, "attempts": 3}
        repeat = await v.observe_once(PAY, "e1", ())         # the step-up repeat, same event
        assert repeat.features == {"allowed_amount": 10.1, "allowed_tx": 1, "lowvalue": 10.1,
                                   "attempts": 3}            # attempts: the repeat is not new
        assert (await refused(v, PAY, "peek2"))["allowed_tx"] == 2
        # A second observe of the same event (retry) counts nothing and withdraws nothing.
        again = await v.observe_once(PAY, "e1", ())
        assert again.pending == ()
        await v.withdraw(again)
        assert (await refused(v, PAY, "peek3"))["allowed_tx"] == 2
    state_backends.run(scenario)


def test_withdraw_after_a_reset_never_goes_negative(state_backends):
    async def scenario(b):
        v = Velocity(ALLOWED, b)
        pending = await v.observe_once(PAY, "e1", ())
        await v.strong_auth(PAY)
        await v.withdraw(pending)
        assert (await refused(v, PAY, "peek"))["lowvalue"] == 0.0
    state_backends.run(scenario)


def test_distinct_on_allow_waits_for_record_allowed(state_backends):
    counters = [spec("allowed_payees", ["user_id"], "distinct", field="payee", window_s=60,
                     on="allow")]

    async def scenario(b):
        v = Velocity(counters, b)
        assert v.allow_after_forward
        assert (await v.observe_once(PAY, "e1", ())).features == {"allowed_payees": 0}
        assert (await refused(v, PAY, "e2")) == {"allowed_payees": 0}
        await v.record_allowed(PAY, "e1")
        assert (await refused(v, PAY, "e3")) == {"allowed_payees": 1}
    state_backends.run(scenario)


def test_late_on_allow_kinds_count_next_to_provisional_ones(state_backends):
    # distinct and first_seen "on: allow" cannot be taken back, so they are recorded after
    # forwarding; a provisional sum on the same key must not make them look already applied.
    counters = [spec("allowed_amount", ["user_id"], "sum", field="amount", window_s=60, on="allow"),
                spec("payees", ["user_id"], "distinct", field="payee", window_s=60, on="allow")]

    async def scenario(b):
        v = Velocity(counters, b)
        seen = []
        for i in range(3):
            attrs = {**PAY, "payee": f"DE0{i}"}
            observation = await v.observe_once(attrs, f"e{i}", ())
            seen.append(observation.features["payees"])
            await v.record_allowed(attrs, f"e{i}")
        assert seen == [0, 1, 2]
        # Recording the same forwarded event again changes nothing.
        await v.record_allowed({**PAY, "payee": "DE09"}, "e2")
        assert (await refused(v, {**PAY, "payee": "DE00"}, "peek"))["payees"] == 3
    state_backends.run(scenario)
