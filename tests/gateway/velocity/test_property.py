"""Random timed event streams: the memory backend against an exact reference model.

The documented bound: a windowed count or sum equals the exact total over a window whose start
is within one bucket (W/60) of ``now - W``; distinct and first_seen are exact (below the cap).
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.velocity import Velocity
from state import memory as memory_executor
from state.memory import MemoryBackend, run_sync
from state.window import bucket_ms
from tests.gateway.velocity.helpers import forwarded, spec

events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5_000),           # gap before the event, ms
        st.sampled_from(["a", "b"]),                          # user
        st.decimals(min_value=0, max_value=1000, places=2),   # amount
        st.sampled_from(["d1", "d2"]),                        # device
        st.sampled_from(["p1", "p2", "p3"]),                  # payee
        st.booleans(),                                        # repeat the previous event id
    ),
    max_size=60,
)


class MsClock:
    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> float:
        return (self.ms + 0.5) / 1000  # mid-millisecond: floor(x * 1000) gives self.ms back


@settings(max_examples=200, deadline=None)
@given(window_s=st.sampled_from([1, 3, 7, 60]), start=st.integers(0, 10**7), stream=events)
def test_windowed_counters_stay_within_one_bucket(window_s, start, stream):
    window, width = window_s * 1000, bucket_ms(window_s * 1000)
    clock = MsClock(1_700_000_000_000 + start)
    v = Velocity([spec("n", ["user_id"], "count", window_s=window_s),
                  spec("s", ["user_id"], "sum", field="amount", window_s=window_s),
                  spec("d", ["device_id"], "distinct", field="user_id", window_s=window_s),
                  spec("f", ["user_id", "payee"], "first_seen")], MemoryBackend(clock))
    seen: list[tuple[int, str, Decimal, str, str]] = []
    event_id = None
    for i, (gap, user, amount, device, payee, repeat) in enumerate(stream):
        clock.ms += gap
        now = clock.ms
        repeated = repeat and event_id is not None
        if not repeated:
            event_id = f"e{i}"
            seen.append((now, user, amount, device, payee))
        else:
            # A step-up repeat: same transaction, so the same attributes as the first time.
            _, user, amount, device, payee = seen[-1]
        got = run_sync(forwarded(v, {"user_id": user, "amount": amount, "device_id": device,
                                    "payee": payee}, event_id))

        def total(since, value):
            return sum(value(e) for e in seen if e[1] == user and e[0] > since)

        low, high = now - window + width, now - window - width
        assert total(low, lambda e: 1) <= got["n"] <= total(high, lambda e: 1)
        assert total(low, lambda e: e[2]) <= Decimal(str(got["s"])) <= total(high, lambda e: e[2])
        last_seen: dict[str, int] = {}
        for t, u, _, d, _ in seen:
            if d == device:
                last_seen[u] = t
        assert got["d"] == sum(1 for t in last_seen.values() if t > now - window)
        first = min(t for t, u, _, _, p in seen if u == user and p == payee)
        assert got["f_age_s"] == (now - first) // 1000


@settings(max_examples=50, deadline=None)
@given(members=st.lists(st.integers(0, 30), max_size=80), cap=st.integers(1, 10))
def test_distinct_saturates_at_the_cap(members, cap):
    clock = MsClock(1_700_000_000_000)
    v = Velocity([spec("d", ["device_id"], "distinct", field="user_id", window_s=60)],
                 MemoryBackend(clock))
    original = memory_executor.DISTINCT_CAP
    memory_executor.DISTINCT_CAP = cap
    try:
        distinct: set[int] = set()
        for i, member in enumerate(members):
            clock.ms += 7
            distinct.add(member)
            got = run_sync(forwarded(v, {"device_id": "d", "user_id": member}, f"e{i}"))
            assert got["d"] == min(len(distinct), cap)
    finally:
        memory_executor.DISTINCT_CAP = original
