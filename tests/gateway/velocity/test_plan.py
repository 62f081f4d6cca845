"""A rule set's own script (state/velocity_plan.py) against the generic call, on one real Redis.

The same random traffic under the shipped pack's counters goes through a Velocity on the
planned path (database 0) and one on the generic call (database 1): every request must see the
same features and leave the same keys, with the same contents.
"""

from __future__ import annotations

import asyncio
import random

import redis as redis_py

from bench.micro.test_stages import KINDS
from gateway.velocity import Velocity
from rules import load_rules
from state import create_backend
from tests.gateway.velocity.helpers import forwarded, refused

PACK = "rules/default"
# Features that are ages: the two calls run a few ms apart, so a second may tick between them.
AGES = ("_age_s",)


def _request(rng: random.Random) -> dict:
    user = rng.choice(["alice", "bob", "c{arol}", "dä:ve", ""])
    attrs = {"user_id": user, "amount": rng.choice([1, 12.5, "99.99", 2500, 0, "x"]),
             "currency": "EUR", "payee": rng.choice(["DE02A", "DE02B", "FR7630006"]),
             "country": rng.choice(["DE", "FR", None]), "device_id": rng.choice(["d1", "d2", None]),
             "channel": "app", "ip": rng.choice(["10.0.0.1", "10.0.0.2"]), "hour": 14,
             "client_id": rng.choice(["bench", "other"]), "route": "payments", "tier": "client"}
    attrs["amount_base"] = attrs["amount"]
    return {k: v for k, v in attrs.items() if v is not None}


def _contents(client: redis_py.Redis) -> dict:
    out = {}
    for key in client.keys("*"):
        kind = client.type(key).decode()
        if kind == "hash":
            # Buckets are named by the store's time: their sum, not their names, is compared.
            out[key] = ("hash", sum(int(v) for v in client.hvals(key)))
        elif kind == "zset":
            out[key] = ("zset", sorted(client.zrange(key, 0, -1)))
        else:
            value = client.get(key)
            out[key] = ("string", value if value in (b"1",) or b":" not in value
                        and not value.isdigit() else b"<time>")
    return out


def test_the_planned_script_counts_as_the_generic_call(redis_server):
    rng = random.Random(7)

    async def main():
        planned = create_backend("redis", redis_server.url + "/0", False, 2000)
        generic = create_backend("redis", redis_server.url + "/1", False, 2000)
        await planned.start()
        await generic.start()
        generic.plans = False
        assert planned.plans
        with load_rules(PACK, KINDS) as rs:
            a, b = Velocity(rs.counters, planned), Velocity(rs.counters, generic)
            assert a._layout is not None and b._layout is None
            for i in range(300):
                attrs = _request(rng)
                event = f"e{i}" if rng.random() > 0.2 else f"e{max(0, i - 1)}"   # repeats
                step = forwarded if rng.random() > 0.3 else refused
                seen_a, seen_b = await step(a, attrs, event), await step(b, attrs, event)
                assert seen_a.keys() == seen_b.keys(), (i, attrs)
                for name, value in seen_a.items():
                    if name.endswith(AGES):
                        assert abs(value - seen_b[name]) <= 1, (i, name)
                    else:
                        assert value == seen_b[name], (i, name, attrs)
            await asyncio.sleep(1.2)      # the idle confirmations of both have gone out
        await planned.close()
        await generic.close()

    asyncio.run(main())
    base = redis_server.url
    db0, db1 = (redis_py.Redis.from_url(f"{base}/{n}") for n in (0, 1))
    assert _contents(db0) == _contents(db1)
    assert len(_contents(db0)) > 50


def test_names_reach_the_script_exactly_whatever_their_characters(redis_server):
    from state.velocity_plan import _lua

    client = redis_py.Redis.from_url(redis_server.url)
    text = "name 1'\"\\]]--ä9\x01\x7f" + "".join(chr(c) for c in range(32, 127))
    assert client.eval(f"return {_lua(text)}", 0).decode() == text
