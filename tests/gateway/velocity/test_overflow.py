"""No counter can overflow: sums at the boundaries of what a transaction may carry.

Found by an attack: an amount near 2**53 passed extraction and overflowed the scaled sum in
Redis (an error, so 503 on fail_closed routes). Amounts are now bounded by
``limits.max_amount`` and, below that, every number the store keeps saturates at
``NUMBER_CAP``: the property is that any sequence of amounts, on memory, one redis-server and a
cluster, reads back exactly ``min(exact sum, cap)`` and never fails.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import MAX_AMOUNT_LIMIT as MAX_AMOUNT
from gateway.velocity import Velocity
from state.window import NUMBER_CAP, SUM_SCALE, scaled_amount
from tests.gateway.velocity.helpers import spec

BOUNDARY = [0, 0.0001, 1, 10_000_000_000, MAX_AMOUNT, MAX_AMOUNT - 0.0001, NUMBER_CAP / SUM_SCALE,
            2.0 ** 53, 2.0 ** 63, 1e300]
COUNTERS = [spec("sum_1h", ["user_id"], "sum", field="amount", window_s=3600),
            spec("sum_total", ["user_id"], "sum", field="amount", reset_on="strong_auth"),
            spec("sum_allow", ["user_id"], "sum", field="amount", window_s=3600, on="allow")]
_USERS = itertools.count()


def _expected(amounts) -> float:
    return min(NUMBER_CAP, sum(scaled_amount(a) for a in amounts)) / SUM_SCALE


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.sampled_from(BOUNDARY), min_size=1, max_size=12))
def test_sums_saturate_and_never_fail(state_backends, amounts):
    user = f"u{next(_USERS)}"

    async def scenario(backend):
        velocity = Velocity(COUNTERS, backend)
        features = {}
        for i, amount in enumerate(amounts):
            observation = await velocity.observe_once({"user_id": user, "amount": amount},
                                                      f"{user}-{i}", ())
            features = observation.features
            # The provisional on-allow sum leaves out this request's own increment.
            assert features["sum_allow"] == _expected(amounts[:i])
        assert features["sum_1h"] == features["sum_total"] == _expected(amounts)
    state_backends.run(scenario)


def test_a_saturated_sum_still_takes_back_a_withdrawn_request(state_backends):
    async def scenario(backend):
        velocity = Velocity(COUNTERS, backend)
        attrs = {"user_id": "withdrawn", "amount": NUMBER_CAP / SUM_SCALE}
        first = await velocity.observe_once(attrs, "w1", ())
        second = await velocity.observe_once(attrs, "w2", ())
        assert second.features["sum_allow"] == NUMBER_CAP / SUM_SCALE
        await velocity.withdraw(second)
        await velocity.withdraw(first)
        # Saturation forgot how far past the cap the sum went: a withdrawal below it is
        # bounded at zero, never negative or an error.
        third = await velocity.observe_once({**attrs, "amount": 1}, "w3", ())
        assert 0 <= third.features["sum_allow"] <= NUMBER_CAP / SUM_SCALE
    state_backends.run(scenario)
