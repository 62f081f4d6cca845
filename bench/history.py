"""Give the bench customers a past: first-seen records dated 40 days ago, written to Redis.

Without it every bench user would be brand new, with a never-seen device and payee, and the
shipped pack (rightly) steps up almost every payment: the benchmark would measure the
challenge path instead of the forwarded one. Real traffic is mostly established customers.
Keys come from the gateway's own counter plans, so they are exactly what the velocity script
reads.
"""

from __future__ import annotations

import time

import redis

from bench.signed import customer
from gateway.velocity.counters import CounterPlan
from state.ops import FIRST_SEEN
from rules import load_rules

AGE_S = 40 * 86400


def seed(redis_url: str, rules_dir, run_tag: str, users: int, cluster: bool = False) -> int:
    """Write the first-seen records of ``users`` customers of ``run_tag``; returns keys written."""
    kinds = {"amount": "number", "currency": "string", "user_id": "string", "payee": "string",
             "country": "string", "device_id": "string", "channel": "string"}
    ruleset = load_rules(rules_dir, kinds)
    plans = [CounterPlan.of(spec) for spec in ruleset.counters]
    ruleset.close()
    plans = [p for p in plans if p.kind == FIRST_SEEN]
    then = str(int((time.time() - AGE_S) * 1000))
    client = (redis.RedisCluster if cluster else redis.Redis).from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    written = 0
    for index in range(users):
        attrs = customer(run_tag, index)
        for plan in plans:
            located = plan.tag_and_key(attrs)
            if located is not None:
                pipe.set(located[1], then, px=plan.ttl_ms)
                written += 1
        if index % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()
    return written
