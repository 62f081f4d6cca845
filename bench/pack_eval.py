"""Pack evaluation: a synthetic month of payments, genuine and fraudulent, decided by a pack.

    python -m bench.pack_eval [--users 2000] [--seed 1] [--rules rules/default]
                              [--config examples/txgate.yaml]

Genuine customers have habits: a rent payment on the first of the month, small everyday
payments to their usual payees (people, and shops many customers share), one or two devices,
now and then a new payee. Attacks are
injected into the second month: account takeover (new device, new payees, large amounts),
card testing (bursts of small amounts), mule fan-in (many accounts paying one payee),
low-value splitting under the PSD2 cap, and currency switching (amounts just under the
limits in several currencies). A first month of genuine traffic gives every customer a past
and is not scored.

Not over HTTP: a month cannot be replayed in real time. Every payment goes through
``gateway.scenario_runner`` instead — the route's extraction (with --config), the velocity
counters on a memory store whose clock is the simulation's, the rules, the step-up sequence
and the settling of ``on: allow`` counters: the code a live gateway runs per request, without
the network. Genuine customers answer every challenge (they have their phone and device);
attackers answer none. An attack payment is *stopped* when it is not forwarded (challenged or
denied); a genuine payment is *stepped up* when it needed a challenge, *denied* when refused.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from gateway.config import load_config
from gateway.scenario_runner import ScenarioRunner
from rules import load_rules
from rules.scenarios import Scenario, Step

DAY = 86400
START = "2026-01-01T00:00:00Z"
RATES = {"GBP": 1.17, "USD": 0.92, "CHF": 1.05, "KWD": 2.99}
ATTACKS = ("account takeover", "card testing", "mule fan-in", "low-value splitting",
           "currency switching")


def _iban(rng: random.Random, country: str = "DE") -> str:
    return f"{country}{rng.randrange(10, 99)}{rng.randrange(10**17, 10**18)}"


class Traffic:
    """Every payment of the two months as (time s, kind, transaction, passed)."""

    def __init__(self, users: int, seed: int):
        self.rng = random.Random(seed)
        self.events: list[tuple[int, str, dict, str | None]] = []
        # Shops and utilities many customers pay: a payee receiving from many users is not
        # suspicious in itself.
        self.merchants = [_iban(self.rng) for _ in range(max(5, users // 40))]
        self.customers = [self._customer(i) for i in range(users)]
        for customer in self.customers:
            self._genuine(customer)
        for day in range(30, 60):
            for _ in range(max(1, users // 200)):
                self._attack(self.rng.choice(ATTACKS), day)
        self.events.sort(key=lambda e: e[0])

    def _customer(self, i: int) -> dict:
        rng = self.rng
        devices = [f"dev-{i}-a"] + ([f"dev-{i}-b"] if rng.random() < 0.3 else [])
        return {"user_id": f"user-{i}", "devices": devices,
                "payees": [_iban(rng) for _ in range(rng.randint(2, 6))]
                + rng.sample(self.merchants, rng.randint(1, 3)),
                "landlord": _iban(rng), "rent": rng.randrange(500, 1600, 10),
                "country": rng.choice(("DE", "DE", "FR", "NL", "AT", "IT", "ES")),
                "per_day": rng.uniform(0.2, 1.5)}

    def _tx(self, c: dict, amount, payee: str, device: str | None = None, **extra) -> dict:
        tx = {"user_id": c["user_id"], "amount": amount, "currency": "EUR", "payee": payee,
              "country": c["country"], "device_id": device or self.rng.choice(c["devices"])}
        return {**tx, **extra}

    def _genuine(self, c: dict) -> None:
        rng = self.rng
        for day in range(60):
            if day in (0, 31):   # rent on the first of each month
                self.events.append((day * DAY + rng.randrange(8, 12) * 3600, "genuine",
                                    self._tx(c, c["rent"], c["landlord"]), "device"))
            for _ in range(int(c["per_day"]) + (rng.random() < c["per_day"] % 1)):
                at = day * DAY + rng.randrange(8 * 3600, 22 * 3600)
                amount = round(rng.choice((rng.uniform(3, 30), rng.uniform(3, 30), rng.uniform(30, 150))), 2)
                payee = rng.choice(c["payees"])
                if rng.random() < 0.03:   # a new payee now and then, which then stays
                    payee = _iban(rng)
                    c["payees"].append(payee)
                self.events.append((at, "genuine", self._tx(c, amount, payee), "device"))

    def _attack(self, kind: str, day: int) -> None:
        rng = self.rng
        at = day * DAY + rng.randrange(0, DAY - 4 * 3600)
        victim = rng.choice(self.customers)
        device = f"atk-{len(self.events)}"
        add = lambda t, tx: self.events.append((t, kind, tx, None))   # noqa: E731
        if kind == "account takeover":
            for n in range(rng.randint(1, 3)):
                add(at + n * 600, self._tx(victim, rng.randrange(500, 4000), _iban(rng, "LT"), device))
        elif kind == "card testing":
            payee = _iban(rng, "GB")
            for n in range(rng.randint(10, 30)):
                add(at + n * 20, self._tx(victim, round(rng.uniform(1, 5), 2), payee, device))
        elif kind == "mule fan-in":
            mule = _iban(rng, "DE")
            for n, mover in enumerate(rng.sample(self.customers, rng.randint(5, 15))):
                add(at + n * 1800, self._tx(mover, rng.randrange(200, 900), mule))
        elif kind == "low-value splitting":
            payee = _iban(rng, "LT")
            for n in range(rng.randint(8, 20)):
                add(at + n * 900, self._tx(victim, rng.randrange(20, 30), payee, device))
        else:   # currency switching: just under the limits, in several currencies
            payee = _iban(rng, "LT")
            for n, currency in enumerate(rng.sample(("GBP", "USD", "CHF", "KWD"), 4)):
                add(at + n * 900, self._tx(victim, 499, payee, currency=currency))


def evaluate(rules_dir, config_path, users: int, seed: int) -> dict:
    config = load_config(config_path) if config_path else None
    runner = ScenarioRunner(config)
    traffic = Traffic(users, seed)
    steps = tuple(Step(f"event {n}", at, tx, passed, 1, 0, None, (), (), None, None, None)
                  for n, (at, _, tx, passed) in enumerate(traffic.events))
    scenario = Scenario("pack evaluation", "bench", "payments", _epoch(START), steps, None, RATES)
    rs = load_rules(rules_dir)
    try:
        started = time.perf_counter()
        results = runner.play(scenario, rs)
        elapsed = time.perf_counter() - started
    finally:
        rs.close()
    table: dict = defaultdict(Counter)
    causes: dict = defaultdict(Counter)   # rules that made genuine payments step up
    for (at, kind, _, _), result in zip(traffic.events, results):
        if kind == "genuine" and at < 30 * DAY:
            continue   # the first month only gives the customers a past
        row = table[kind]
        row["payments"] += 1
        hits = [h.rule for h in result.first.hits if h.mode == "enforce"] if result.first else []
        if kind == "genuine":
            stepped = result.tier != "client" or result.outcome == "step_up"
            row["stepped up"] += stepped
            row["denied"] += result.outcome == "deny"
            if stepped or result.outcome == "deny":
                causes["genuine"].update(hits)
        else:
            stopped = result.outcome in ("step_up", "deny")
            row["stopped"] += stopped
            if not stopped:
                causes[kind]["(missed)"] += 1
        row["error"] += result.outcome == "error"
    return {"table": table, "causes": causes, "events": len(traffic.events), "seconds": elapsed}


def _epoch(text: str) -> float:
    import calendar
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def report(result: dict, out=sys.stdout) -> None:
    table = result["table"]
    print("| traffic | payments | stopped | stepped up | denied |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    g = table["genuine"]
    print(f"| genuine (second month) | {g['payments']} | — | {_pct(g['stepped up'], g['payments'])} "
          f"| {_pct(g['denied'], g['payments'])} |", file=out)
    for kind in ATTACKS:
        row = table[kind]
        print(f"| {kind} | {row['payments']} | {_pct(row['stopped'], row['payments'])} | — | — |",
              file=out)
    top = ", ".join(f"{rule} {n}" for rule, n in result["causes"]["genuine"].most_common(8))
    print(f"\nrules matched by the genuine payments stepped up or denied: {top or 'none'}", file=out)
    errors = sum(row["error"] for row in table.values())
    print(f"\n{result['events']} payments decided in {result['seconds']:.0f} s; {errors} refused as "
          "invalid", file=out)


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "—"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pack_eval")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rules", default="rules/default")
    parser.add_argument("--config", default="examples/txgate.yaml")
    args = parser.parse_args(argv)
    report(evaluate(Path(args.rules), args.config, args.users, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
