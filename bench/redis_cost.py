"""CPU per payment of the state call, one redis-server against a 3-master cluster: Redis's
side and the gateway's side of the capacity model in docs/operations-redis.md. A third store
is the same redis-server with each payment waiting for its replica (``wait_replicas: 1``):
what WAIT costs, in CPU and in payments per second with 64 in flight.

Runs the shipped pack's counters the way a gateway does (one ``observe_once`` with the
signature's two claims per payment, 64 in flight, a timeout generous enough that no call
fails) and reads the servers' own CPU counters (``INFO cpu``, main thread and I/O together)
and this process's CPU time before and after. The two stores are measured alternately,
``--reps`` times each.

    python -m bench.redis_cost [--payments 4000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import types
from decimal import Decimal

import redis

from bench import rulepack
from bench.run import Bench
from bench.signed import customer
from gateway.velocity import Velocity
from rules import load_rules
from state import create_backend

KINDS = {"amount": "number", "currency": "string", "user_id": "string", "payee": "string",
         "country": "string", "device_id": "string", "channel": "string"}


def memory(ports: list[int]) -> int:
    return sum(redis.Redis(port=port).info("memory")["used_memory"] for port in ports)


def cpu_s(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        total += info["used_cpu_user"] + info["used_cpu_sys"]
    return total


async def payments(url: str, cluster: bool, count: int, tag: str, wait_replicas: int = 0
                   ) -> None:
    ruleset = load_rules(rulepack.DEFAULT, KINDS)
    backend = create_backend("redis", url, cluster, 2000, wait_replicas=wait_replicas)
    velocity = Velocity(ruleset.counters, backend)
    rng = random.Random(7)
    users = max(1, count // 10)
    in_flight = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        index = rng.randrange(users)
        attrs = {**customer(tag, index), "amount": Decimal("42.10"), "currency": "EUR",
                 "country": "DE", "channel": "app", "client_id": "bench",
                 "ip": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"}
        async with in_flight:
            await velocity.observe_once(attrs, f"{tag}-e{i}", [
                (f"{{c:bench}}:sig:{tag}:{i}", 300_000), (f"{{c:bench}}:nonce:{tag}:{i}", 300_000)])

    await asyncio.gather(*(one(i) for i in range(count)))
    await backend.close()
    ruleset.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    bench = Bench(types.SimpleNamespace())
    try:
        single = bench.start_redis()
        clustered = bench.start_cluster()
        primary = next(p.port for p in bench.procs if p.name == "redis")
        masters = [p.port for p in bench.procs if p.name.startswith("cluster-")]
        stores = {"one redis-server": (single, False, [primary], 0),
                  "3-master cluster": (clustered, True, masters, 0),
                  "one redis-server, WAIT 1 replica": (single, False, [primary], 1)}
        per_payment: dict[str, list[float]] = {name: [] for name in stores}
        client: dict[str, list[float]] = {name: [] for name in stores}
        rate: dict[str, list[float]] = {name: [] for name in stores}
        empty = {name: memory(ports) for name, (_, _, ports, _) in stores.items()}
        for rep in range(args.reps + 1):           # the first round warms the script caches
            for k, (name, (url, cluster, ports, wait)) in enumerate(stores.items()):
                before, ours, started = cpu_s(ports), time.process_time(), time.perf_counter()
                asyncio.run(payments(url, cluster, args.payments, f"r{rep}s{k}", wait))
                if rep:
                    rate[name].append(args.payments / (time.perf_counter() - started))
                    client[name].append((time.process_time() - ours) * 1e6 / args.payments)
                    per_payment[name].append((cpu_s(ports) - before) * 1e6 / args.payments)
        users = (args.reps + 1) * max(1, args.payments // 10)
        for name, values in per_payment.items():
            # The two single-server stores share one server: its growth is theirs together.
            sharing = sum(1 for other in stores.values() if other[2] == stores[name][2])
            grown = (memory(stores[name][2]) - empty[name]) / sharing
            print(f"{name}: Redis CPU {statistics.median(values):.0f} µs per payment "
                  f"(runs: {', '.join(f'{v:.0f}' for v in values)}); client CPU "
                  f"{statistics.median(client[name]):.0f} µs (runs: "
                  f"{', '.join(f'{v:.0f}' for v in client[name])}); "
                  f"{statistics.median(rate[name]):.0f} payments/s with 64 in flight; memory "
                  f"{grown / users:.0f} bytes per user with 10 payments each, claims and "
                  "markers included")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
