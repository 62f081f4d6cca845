"""Velocity semantics, one suite for memory, a real redis-server and a real 3-master cluster.

Waits move the memory backend's clock instantly and sleep for real on Redis, so windows here
are 1 s and every wait is about a second or less.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from gateway.velocity import Velocity
from gateway.velocity.core import CONFIRM_IDLE_S
from tests.gateway.velocity.helpers import forwarded, refused, spec

PAY = {"user_id": "alice", "amount": Decimal("10.10"), "payee": "DE02X", "device_id": "d1"}


def test_count_includes_current_request_and_slides(state_backends):
    counters = [spec("user_tx", ["user_id"], "count", window_s=1)]

    async def scenario(b):
        v = Velocity(counters, b)
        assert [(await forwarded(v, PAY, f"e{i}"))["user_tx"] for i in range(3)] == [1, 2, 3]
        assert (await forwarded(v, {**PAY, "user_id": "bob"}, "e9"))["user_tx"] == 1
        await state_backends.wait(1.1)
        assert (await forwarded(v, PAY, "e4"))["user_tx"] == 1
    state_backends.run(scenario)


def test_sum_is_exact_in_decimal_units(state_backends):
    counters = [spec("amount_1h", ["user_id"], "sum", field="amount", window_s=3600)]

    async def scenario(b):
        v = Velocity(counters, b)
        for i in range(10):
            features = await forwarded(v, {**PAY, "amount": 0.1}, f"t{i}")
        assert features["amount_1h"] == 1.0  # ten float 0.1s, no drift
        features = await forwarded(v, {**PAY, "amount": Decimal("1234.5678")}, "big")
        assert features["amount_1h"] == 1235.5678
        features = await forwarded(v, {**PAY, "amount": "2"}, "str")
        assert features["amount_1h"] == 1237.5678
        # A missing or non-numeric amount reads the counter without adding to it.
        assert (await forwarded(v, {"user_id": "alice"}, "none"))["amount_1h"] == 1237.5678
        assert (await forwarded(v, {**PAY, "amount": "abc"}, "bad"))["amount_1h"] == 1237.5678
    state_backends.run(scenario)


def test_distinct_counts_members_in_window(state_backends):
    counters = [spec("device_users", ["device_id"], "distinct", field="user_id", window_s=1)]

    async def scenario(b):
        v = Velocity(counters, b)
        seen = [(await forwarded(v, {"device_id": "d1", "user_id": u}, f"e{i}"))["device_users"]
                for i, u in enumerate(["a", "b", "a", "c", "b"])]
        assert seen == [1, 2, 2, 3, 3]
        await state_backends.wait(0.6)
        assert (await forwarded(v, {"device_id": "d1", "user_id": "a"}, "e5"))["device_users"] == 3
        await state_backends.wait(0.6)
        # b and c were last seen over a second ago; a was refreshed 0.6 s ago.
        assert (await forwarded(v, {"device_id": "d1", "user_id": "d"}, "e6"))["device_users"] == 2
    state_backends.run(scenario)


def test_first_seen_age_and_absence(state_backends):
    counters = [spec("user_payee", ["user_id", "payee"], "first_seen"),
                spec("allowed_payee", ["user_id", "payee"], "first_seen", on="allow")]

    async def scenario(b):
        v = Velocity(counters, b)
        # The current attempt counts as a sighting (age 0); an on: allow one only once
        # forwarded: the refused request leaves none.
        assert await refused(v, PAY, "e0") == {"user_payee_age_s": 0}
        assert await forwarded(v, PAY, "e1") == {"user_payee_age_s": 0}
        await state_backends.wait(1.1)
        later = await forwarded(v, PAY, "e2")
        assert later == {"user_payee_age_s": 1, "allowed_payee_age_s": 1}
        other = await forwarded(v, {**PAY, "payee": "FR76Y"}, "e3")
        assert other == {"user_payee_age_s": 0}
    state_backends.run(scenario)


def test_on_allow_first_seen_is_provisional_until_confirmed(state_backends):
    """An on: allow first_seen rides on the request's one round trip as a provisional mark:
    absent for everyone until its request is forwarded and the mark confirmed (with the next
    state call), or, when a confirmation is lost, until the settle window has passed. A
    withdrawal deletes only the withdrawing request's own mark."""
    counters = [spec("payee", ["user_id", "payee"], "first_seen", on="allow")]

    async def scenario(b):
        v = Velocity(counters, b, settle_s=0.5)
        # Two payments in flight at once to a new payee: both see it as new.
        first = await v.observe_once(PAY, "a1", ())
        assert first.features == (await v.observe_once(PAY, "a2", ())).features == {}
        # The first is forwarded: its confirmation travels first in the next call.
        v.confirm(first)
        assert (await forwarded(v, PAY, "a3"))["payee_age_s"] == 0
        # A confirmation that never came (a gateway that died): counted after the window.
        other = {**PAY, "payee": "FR76Y"}
        await v.observe_once(other, "b1", ())
        assert (await v.observe_once(other, "b2", ())).features == {}
        await state_backends.wait(0.6)
        assert (await v.observe_once(other, "b3", ())).features["payee_age_s"] == 0
        # A refused payment's mark is gone at once: it never makes its payee known...
        third = {**PAY, "payee": "NL91Z"}
        refused_first = await v.observe_once(third, "c1", ())
        await v.withdraw(refused_first)
        assert await forwarded(v, third, "c2") == {}
        # ...and a withdrawal deletes only its own mark, not c2's.
        await v.withdraw(refused_first)
        assert (await forwarded(v, third, "c3"))["payee_age_s"] == 0
        # Refused while a payment of the same payee that found its mark was forwarded: both
        # marks are gone, the payee is new again (the cautious side).
        fourth = {**PAY, "payee": "IT60W"}
        d1 = await v.observe_once(fourth, "d1", ())
        v.confirm(await v.observe_once(fourth, "d2", ()))
        await v.withdraw(d1)
        assert await forwarded(v, fourth, "d3") == {}
    state_backends.run(scenario)


def test_an_idle_gateway_sends_its_confirmations_alone(state_backends):
    counters = [spec("payee", ["user_id", "payee"], "first_seen", on="allow")]

    async def scenario(b):
        mine = Velocity(counters, b, settle_s=3600)
        other_gateway = Velocity(counters, b, settle_s=3600)
        mine.confirm(await mine.observe_once(PAY, "e1", ()))
        assert (await other_gateway.observe_once(PAY, "e2", ())).features == {}
        await asyncio.sleep(CONFIRM_IDLE_S + 0.3)   # no further call on `mine`: sent alone
        assert "payee_age_s" in (await other_gateway.observe_once(PAY, "e3", ())).features
    state_backends.run(scenario)


def test_absent_key_attribute_skips_counter(state_backends):
    counters = [spec("user_tx", ["user_id"], "count", window_s=60),
                spec("device_tx", ["device_id"], "count", window_s=60),
                spec("pair", ["user_id", "device_id"], "count", window_s=60)]

    async def scenario(b):
        v = Velocity(counters, b)
        assert await forwarded(v, {"user_id": "alice"}, "e1") == {"user_tx": 1}
        assert await forwarded(v, {"user_id": "alice", "device_id": None}, "e2") == {"user_tx": 2}
        assert await forwarded(v, {"device_id": "d1"}, "e3") == {"device_tx": 1}
        assert await forwarded(v, {"user_id": "alice", "device_id": "d1"}, "e4") == {
            "user_tx": 3, "device_tx": 2, "pair": 1}
        assert await forwarded(v, {}, "e5") == {}
    state_backends.run(scenario)


def test_repeated_event_id_is_counted_once(state_backends):
    counters = [spec("user_tx", ["user_id"], "count", window_s=60),
                spec("device_users", ["device_id"], "distinct", field="user_id", window_s=60),
                spec("amount", ["user_id"], "sum", field="amount", window_s=60)]

    async def scenario(b):
        v = Velocity(counters, b)
        first = await forwarded(v, PAY, "tx-1")
        repeat = await forwarded(v, PAY, "tx-1")  # the step-up repeat of the same transaction
        assert first == repeat == {"user_tx": 1, "device_users": 1, "amount": 10.1}
        assert (await forwarded(v, PAY, "tx-2"))["user_tx"] == 2
        assert (await forwarded(v, PAY, "tx-1"))["user_tx"] == 2
    state_backends.run(scenario)


def test_on_allow_counters_count_only_forwarded_requests(state_backends):
    counters = [spec("allowed_amount", ["user_id"], "sum", field="amount", window_s=60,
                     on="allow"),
                spec("allowed_tx", ["user_id"], "count", window_s=60, on="allow"),
                spec("allowed_payees", ["user_id"], "distinct", field="payee", window_s=60,
                     on="allow"),
                spec("attempts", ["user_id"], "count", window_s=60)]
    nothing_allowed = {"allowed_amount": 0.0, "allowed_tx": 0, "allowed_payees": 0}

    async def scenario(b):
        v = Velocity(counters, b)
        # The value the rules see leaves out the request itself, forwarded or not.
        assert await refused(v, PAY, "e0") == {**nothing_allowed, "attempts": 1}
        assert await forwarded(v, PAY, "e1") == {**nothing_allowed, "attempts": 2}
        assert await refused(v, PAY, "e2") == {"allowed_amount": 10.1, "allowed_tx": 1,
                                               "allowed_payees": 1, "attempts": 3}
        # Settling the forwarded request again (a retried settle, the same event observed
        # again) counts nothing more: idempotent per event id.
        await forwarded(v, PAY, "e1")
        await v.record_allowed(PAY, "e1")
        # No key attribute: nothing to observe, nothing to record.
        assert await forwarded(v, {"amount": 5}, "e3") == {}
        assert await refused(v, PAY, "e4") == {"allowed_amount": 10.1, "allowed_tx": 1,
                                               "allowed_payees": 1, "attempts": 4}
    state_backends.run(scenario)


def test_strong_auth_restarts_reset_counters_only(state_backends):
    counters = [spec("lowvalue_sum", ["user_id"], "sum", field="amount",
                     reset_on="strong_auth", on="allow"),
                spec("lowvalue_n", ["user_id"], "count", reset_on="strong_auth"),
                spec("user_tx", ["user_id"], "count", window_s=60)]

    async def scenario(b):
        v = Velocity(counters, b)
        for i in range(3):
            await forwarded(v, PAY, f"e{i}")
            await forwarded(v, {**PAY, "user_id": "bob"}, f"b{i}")
        assert await forwarded(v, PAY, "e3") == {"lowvalue_sum": 30.3, "lowvalue_n": 4,
                                              "user_tx": 4}
        await v.strong_auth({"user_id": "alice"})
        assert await forwarded(v, PAY, "e4") == {"lowvalue_sum": 0.0, "lowvalue_n": 1,
                                              "user_tx": 5}
        bob = await forwarded(v, {**PAY, "user_id": "bob"}, "b3")
        assert bob["lowvalue_n"] == 4 and bob["lowvalue_sum"] == 30.3
        await v.strong_auth({})  # no user: nothing to reset, no error
    state_backends.run(scenario)


def test_values_cannot_forge_other_keys(state_backends):
    counters = [spec("pair", ["user_id", "payee"], "count", window_s=60)]

    async def scenario(b):
        v = Velocity(counters, b)
        assert (await forwarded(v, {"user_id": "a}", "payee": "p"}, "e1"))["pair"] == 1
        assert (await forwarded(v, {"user_id": "a", "payee": "p"}, "e2"))["pair"] == 1
        assert (await forwarded(v, {"user_id": "a:payee=p", "payee": "p"}, "e3"))["pair"] == 1
        assert (await forwarded(v, {"user_id": "a", "payee": "p:payee=p"}, "e4"))["pair"] == 1
        assert (await forwarded(v, {"user_id": "a}", "payee": "p"}, "e5"))["pair"] == 2
    state_backends.run(scenario)


def test_many_entities_in_one_observe(state_backends):
    counters = [spec(f"c{i}", [key], "count", window_s=60)
                for i, key in enumerate(["user_id", "device_id", "payee", "ip", "client_id"])]
    attrs = {"user_id": "u", "device_id": "d", "payee": "p", "ip": "1.2.3.4", "client_id": "c"}

    async def scenario(b):
        v = Velocity(counters, b)
        await forwarded(v, attrs, "e1")
        assert await forwarded(v, attrs, "e2") == {f"c{i}": 2 for i in range(5)}
    state_backends.run(scenario)


def test_client_scoped_counters_keep_one_value_per_calling_client(state_backends):
    from gateway.velocity.counters import CounterPlan
    from rules import CounterSpec
    scoped = CounterSpec("device_users", ("device_id",), "distinct", "user_id", 60, scope="client")
    counters = [scoped, spec("device_all", ["device_id"], "distinct", field="user_id", window_s=60)]

    async def scenario(b):
        v = Velocity(counters, b)
        for i in range(3):
            seen = await forwarded(v, {"device_id": "d", "user_id": f"b{i}", "client_id": "B"},
                                   f"b{i}")
        assert seen == {"device_users": 3, "device_all": 3}
        seen = await forwarded(v, {"device_id": "d", "user_id": "alice", "client_id": "A"}, "a1")
        assert seen == {"device_users": 1, "device_all": 4}
    state_backends.run(scenario)
    # Same entity hash tag as the global counter: one slot, one script call.
    tag, key = CounterPlan.of(scoped).tag_and_key({"device_id": "d", "client_id": "A"})
    assert tag == "{device_id=d}" and key.endswith(":client_id=A")


def test_a_filtered_counter_counts_only_what_its_where_holds_for(state_backends):
    where = 'amount >= 100 and route in ["payments", "transfers"]'
    counters = [spec("large_tx", ["user_id"], "count", window_s=60, where=where),
                spec("large_sum", ["user_id"], "sum", field="amount", window_s=60, where=where,
                     on="allow"),
                spec("large_payee", ["user_id", "payee"], "first_seen", on="allow", where=where),
                spec("all_tx", ["user_id"], "count", window_s=60)]
    big, small = {**PAY, "route": "payments", "amount": 150}, {**PAY, "route": "payments", "amount": 99}

    async def scenario(b):
        v = Velocity(counters, b)
        # Every transaction reads the filtered counters; only matching ones add to them.
        assert await forwarded(v, small, "e1") == {"large_tx": 0, "large_sum": 0, "all_tx": 1}
        assert await forwarded(v, big, "e2") == {"large_tx": 1, "large_sum": 0, "all_tx": 2}
        assert await forwarded(v, {**big, "route": "loans"}, "e3") == {
            "large_tx": 1, "large_sum": 150, "large_payee_age_s": 0, "all_tx": 3}
        assert await forwarded(v, {**PAY, "route": "payments"}, "e4") == {
            "large_tx": 1, "large_sum": 150, "large_payee_age_s": 0, "all_tx": 4}
        assert await refused(v, big, "e5") == {
            "large_tx": 2, "large_sum": 150, "large_payee_age_s": 0, "all_tx": 5}
        # A small payment to a new payee leaves the filtered first_seen unseen.
        other = {**small, "payee": "FR76Y"}
        assert "large_payee_age_s" not in await forwarded(v, other, "e6")
        assert "large_payee_age_s" not in await forwarded(v, other, "e7")
    state_backends.run(scenario)


def test_a_challengers_own_counters_are_kept_apart_from_the_champions(state_backends):
    champion = [spec("user_tx", ["user_id"], "count", window_s=60),
                spec("user_sum", ["user_id"], "sum", field="amount", window_s=60, on="allow")]
    # user_tx: the same counter (kept once); user_sum: the same name counting attempts (its
    # own keys); user_new: the challenger's alone.
    challenger = [spec("user_tx", ["user_id"], "count", window_s=60),
                  spec("user_sum", ["user_id"], "sum", field="amount", window_s=60),
                  spec("user_new", ["user_id"], "count", window_s=60, where="amount >= 10")]

    async def scenario(b):
        v = Velocity(champion, b, challenger_counters=challenger)
        first = await v.observe_once({**PAY, "amount": 10}, "e1", ())
        assert first.features == {"user_tx": 1, "user_sum": 0}
        assert first.challenger == {"user_sum": 10, "user_new": 1}
        await v.withdraw(first)                    # refused: the champion's on-allow undone
        second = await v.observe_once({**PAY, "amount": 5}, "e2", ())
        assert second.features == {"user_tx": 2, "user_sum": 0}
        assert second.challenger == {"user_sum": 15, "user_new": 1}
        # The champion alone: its own counters only (the second payment stood: 5).
        alone = await Velocity(champion, b).observe_once({**PAY, "amount": 1}, "e3", ())
        assert alone.features == {"user_tx": 3, "user_sum": 5} and not alone.challenger
    state_backends.run(scenario)
