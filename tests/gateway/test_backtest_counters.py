"""`rules replay --recompute` counts as the gateway does: the replay's counters
(gateway.backtest) and the gateway's own ``Velocity`` on a ``MemoryBackend`` (the velocity
script's twin, which the behaviour suite checks against Redis and a cluster) are given the
same random traffic and must report the same features at every record.

The traffic mixes what changes a count: every kind of counter (windows, sums that saturate,
running totals reset by strong authentication, distinct members past their window, first_seen
with a short retention, `on: allow` provisional and late counters, `where:` filters, a second
key attribute, `scope: client`), step-up repeats of an event, withdrawals (denied, challenged,
failed upstream), absent key attributes, and a clock that stands still, steps and jumps past
every window and retention.
"""

from __future__ import annotations

import random

import pytest

from auth.tiers import tier_rank
from gateway.backtest import RecomputedCounters
from gateway.velocity import Velocity
from rules import load_rules
from rules.decision import Decision
from state.memory import MemoryBackend, run_sync
from state.window import DISTINCT_CAP, NUMBER_CAP, SUM_SCALE

COUNTERS = """
version: 1
counters:
  - {name: user_tx_10s, key: [user_id], window: 10s, aggregate: count}
  - {name: user_tx_2m, key: [user_id], window: 2m, aggregate: count, on: allow}
  - {name: user_sum_1m, key: [user_id], window: 1m, aggregate: sum, field: amount}
  - {name: user_sum_ok_2m, key: [user_id], window: 2m, aggregate: sum, field: amount, on: allow}
  - {name: user_low_sum, key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
  - {name: user_low_count, key: [user_id], reset_on: strong_auth, aggregate: count}
  - {name: user_payees_1m, key: [user_id], window: 1m, aggregate: distinct, field: payee}
  - {name: user_payees_ok_1m, key: [user_id], window: 1m, aggregate: distinct, field: payee, on: allow}
  - {name: user_devices, key: [user_id], reset_on: strong_auth, aggregate: distinct, field: device_id}
  - {name: device_users_1m, key: [device_id], window: 1m, aggregate: distinct, field: user_id, scope: client}
  - {name: payee_users_30s, key: [payee], window: 30s, aggregate: distinct, field: user_id, on: allow}
  - {name: user, key: [user_id], aggregate: first_seen, window: 3m}
  - {name: user_payee, key: [user_id, payee], aggregate: first_seen, on: allow}
  - {name: user_device, key: [user_id, device_id], aggregate: first_seen, window: 2m, on: allow}
  - {name: user_payee_big_1m, key: [user_id, payee], window: 1m, aggregate: count, where: amount >= 50}
  - {name: user_big_ok_1m, key: [user_id], window: 1m, aggregate: sum, field: amount, on: allow, where: amount >= 50}
  - {name: device_first, key: [device_id], aggregate: first_seen, on: allow, where: channel == "app"}
rules:
  - {id: R-1, description: unused, when: amount > 1000000, action: deny}
"""
SETTLE_S = 5.0
CHALLENGE_TTL_S = 30


class Reference:
    """What the gateway does per request, on its own code: Velocity.observe_once, then what
    Recorder.settle does once the decision is known (withdraw, confirm, record_allowed,
    strong_auth), on a MemoryBackend whose clock is the record's time."""

    def __init__(self, rs):
        self.now = 0.0
        self.velocity = Velocity(rs.counters, MemoryBackend(clock=lambda: self.now),
                                 settle_s=SETTLE_S, event_ttl_s=CHALLENGE_TTL_S + 60)

    def features(self, record: dict) -> dict:
        self.now = float(record["ts"])
        attrs = dict(record["features"])
        self.event = record["event_id"]
        self.observation = run_sync(self.velocity.observe_once(attrs, self.event, ()))
        attrs.update(self.observation.features)
        self.attrs = attrs
        return attrs

    def settle(self, record: dict, decision: Decision) -> None:
        tier = record["tier"]
        wanted = decision.required_tier
        forwarded = decision.action != "deny" and (wanted is None or tier_rank(wanted) <= tier_rank(tier))
        status = record.get("status") if record.get("decision") in ("allow", "review") else None
        if not (forwarded and (not isinstance(status, int) or status < 400)):
            run_sync(self.velocity.withdraw(self.observation))
            return
        self.velocity.confirm(self.observation)
        if self.velocity.allow_after_forward:
            run_sync(self.velocity.record_allowed(self.attrs, self.event))
        if tier != "client":
            run_sync(self.velocity.strong_auth(self.attrs))


def traffic(seed: int, n: int):
    rnd = random.Random(seed)
    ts, events = 1_790_000_000.0, []
    for i in range(n):
        step = rnd.choice((0.0, 0.0, 0.001, 0.4, 1.5, 3.0, 7.0, 20.0, 61.0, 200.0))
        ts += step * rnd.random() if rnd.random() < 0.5 else step
        repeat = events and rnd.random() < 0.15
        if repeat:
            event, features = rnd.choice(events[-5:])
            tier = rnd.choice(("otp", "device", "client"))
        else:
            event = f"e{i}"
            amount = rnd.choice((0, 1, 7.5, 49.99, 50, 120, -20, 0.0001, NUMBER_CAP / SUM_SCALE * 0.7))
            features = {"user_id": rnd.choice(("u1", "u2", "u3", 4, "4")), "amount": amount,
                        "payee": rnd.choice(("P1", "P2", "P3", "P4", "P5")),
                        "device_id": rnd.choice(("d1", "d2", "d3")),
                        "channel": rnd.choice(("app", "web")),
                        "client_id": rnd.choice(("shop", "bank"))}
            for name in ("payee", "device_id", "amount", "user_id"):
                if rnd.random() < 0.07:
                    del features[name]
            events.append((event, features))
            tier = "client"
        record = {"ts": ts, "event_id": event, "request_id": f"r{i}", "tier": tier,
                  "features": {**features, "tier": tier},
                  "decision": rnd.choice(("allow", "allow", "allow", "review", "step_up", "deny")),
                  "status": rnd.choice((200, 200, 200, 201, 401, 502))}
        action = rnd.choice(("allow", "allow", "allow", "review", "require_otp", "require_device", "deny"))
        yield record, Decision(action, 0.0, (), "test")


@pytest.mark.parametrize("seed", range(6))
def test_replay_counters_count_as_the_gateway_s_velocity(tmp_path, seed):
    (tmp_path / "c.yaml").write_text(COUNTERS)
    with load_rules(tmp_path) as rs:
        reference = Reference(rs)
        replayed = RecomputedCounters(rs, CHALLENGE_TTL_S, settle_s=SETTLE_S)
        seen = {name: set() for name in (c.feature for c in rs.counters)}
        for n, (record, decision) in enumerate(traffic(seed, 2500)):
            expected = reference.features(record)
            got = replayed.features(record)
            assert got == expected, f"record {n}: {record}"
            for name in seen:
                seen[name].add(got.get(name))
            reference.settle(record, decision)
            replayed.settle(record, decision)
    # The traffic moved every counter through several values, absent included where it can be.
    assert all(len(values) >= 3 for values in seen.values()), seen


def replay_both(tmp_path, counters: str, records) -> dict:
    """Each record through the gateway's Velocity and the replay's counters, every one allowed
    and forwarded; the features must agree at every record. Returns the last features."""
    (tmp_path / "c.yaml").write_text(counters)
    allow = Decision("allow", 0.0, (), "test")
    with load_rules(tmp_path) as rs:
        reference = Reference(rs)
        replayed = RecomputedCounters(rs, CHALLENGE_TTL_S, settle_s=SETTLE_S)
        for i, (ts, features) in enumerate(records):
            record = {"ts": ts, "event_id": f"e{i}", "request_id": f"r{i}", "tier": "client",
                      "features": features, "decision": "allow", "status": 200}
            expected = reference.features(record)
            assert replayed.features(record) == expected, f"record {i}: {features}"
            reference.settle(record, allow)
            replayed.settle(record, allow)
    return expected


# Counters alone: a rule set needs a rule.
UNUSED_RULE = "rules:\n  - {id: R-1, description: unused, when: amount > 1000000, action: deny}\n"
CAPPED = """
version: 1
counters:
  - {name: user_payees_1m, key: [user_id], window: 1m, aggregate: distinct, field: payee}
  - {name: user_payees, key: [user_id], reset_on: strong_auth, aggregate: distinct, field: payee, on: allow}
""" + UNUSED_RULE


def test_distinct_counters_past_their_cap_count_as_the_gateway_s_velocity(tmp_path):
    """More members than a distinct counter keeps (DISTINCT_CAP): many last seen in the same
    ms, where the store's order (time, then digest) says which go, some seen again, and the
    window then passing over them."""
    rnd = random.Random(7)

    def records():
        ts = 1_790_000_000.0
        for i in range(2600):
            # Hundreds of members in one ms, more 30 s later, then the window past the first.
            ts += {700: 30.0, 1400: 0.001, 2100: 35.0}.get(i, 0.0)
            payee = f"P{rnd.randrange(1400)}" if i > 1300 else f"P{i}"
            yield ts, {"user_id": "u1", "payee": payee, "amount": 10, "tier": "client"}

    assert replay_both(tmp_path, CAPPED, records())["user_payees"] == DISTINCT_CAP


SUMMED = """
version: 1
counters:
  - {name: user_sum_1m, key: [user_id], window: 1m, aggregate: sum, field: amount}
  - {name: user_sum_ok, key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
""" + UNUSED_RULE


def amounts(rnd):
    """Amounts whose scaling is easy to get wrong: ties at the fourth decimal (to even), the
    smallest and largest floats, past the cap, every magnitude, and what is not a number."""
    yield from (0.00005, 0.00015, 0.00025, 1.00005, 2.5e-05, 7.5e-05, -0.00005, -0.00015,
                0.123456789, 1e-300, 5e-324, 1.7976931348623157e308, -1e20, 1e16, 9.999999999999999e15,
                450359962737.0496, 450359962737.0497, 450359962738, -450359962738, 450359962737,
                2 ** 70, -(2 ** 70), 0.0, -0.0, 1, -1, 123456789, float("inf"), float("nan"),
                True, False, None, "12.5", " 7 ", "1_000", "1e3", "NaN", "abc", "0.00005")
    for _ in range(3000):
        magnitude = 10.0 ** rnd.randint(-9, 17)
        value = rnd.choice((-1, 1)) * rnd.random() * magnitude
        yield rnd.choice((value, round(value, rnd.randint(0, 6)), int(value)))


def test_sums_scale_every_amount_as_the_gateway_s_velocity(tmp_path):
    replay_both(tmp_path, SUMMED, ((1_790_000_000.0 + i, {"user_id": f"u{i % 50}", "amount": amount})
                                   for i, amount in enumerate(amounts(random.Random(3)))))


def test_sums_far_below_zero_count_as_the_gateway_s_velocity(tmp_path):
    """Only the top of a sum saturates: negative amounts take it down past any 64-bit integer
    (2**63 units are 2,048 amounts clamped to -NUMBER_CAP), and it must still read exactly."""
    last = replay_both(tmp_path, SUMMED, ((1_790_000_000.0 + i / 100,
                                           {"user_id": "u1", "amount": -1e12 if i % 7 else 3})
                                          for i in range(2600)))
    assert last["user_sum_ok"] < -(2 ** 63) / SUM_SCALE


def test_counters_refuse_what_they_cannot_work_on():
    """Misuse is an error, never a crash: a record in another time unit, a wrong layout, an
    object never initialised."""
    from gateway import _backtest_counters as compiled

    with pytest.raises(RuntimeError, match="not initialised"):
        compiled.Counters.__new__(compiled.Counters).differences
    with pytest.raises(RuntimeError, match="not initialised"):
        compiled.Counters.__new__(compiled.Counters).features({})
    layout = (compiled.WINDOW, "f", "user_id", (), None, None, False, True, 0, 60, 60_000, 61.0)
    with pytest.raises(ValueError, match="bucket width"):
        compiled.Counters([layout], [], [], 1.0, 0, str, str)
    with pytest.raises(TypeError):
        compiled.Counters([layout[:3] + (["not", "a", "tuple"],) + layout[4:]], [], [], 1.0, 0, str, str)
    counters = compiled.Counters([layout[:8] + (1000,) + layout[9:]], [("user_id", [0], [], [])],
                                 [], 1.0, 0, str, str)
    with pytest.raises(ValueError, match="not a Unix time in seconds"):
        counters.features({"ts": 1e16, "features": {"user_id": "u1"}})
    assert counters.features({"ts": 1e9, "features": {"user_id": "u1"}}) == {"user_id": "u1", "f": 1}
