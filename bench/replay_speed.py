"""How fast `txgate rules replay` re-decides a decision log (docs/performance.md, issue 12).

    python -m bench.replay_speed [RECORDS] [--recompute]

Generates a decision log of RECORDS (default 1,000,000) records as a gateway running the
shipped pack would have written it over two months of traffic: the customers, habits and
attacks of ``bench.pack_eval.Traffic`` (rent, everyday payments to usual payees on one or two
devices, now and then a new payee; account takeover, card testing, mule fan-in, low-value
splitting, currency switching), the counter values and decisions of the pack, and a step-up
answered by a repeat record of the same event when a genuine customer was challenged. Then
times `rules.commands.replay` on it under the shipped pack and prints records per second,
wall and CPU (the process and its workers), and the decision mix. The baseline, in the same
run: reading the log and parsing every line with orjson in one process, the least any replay
must do. The log is made once per size (kept in the system's temporary directory, TMPDIR:
about 700 bytes a record). The load average is printed before and after: wall times are only
comparable at a similar load.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson

from rules.commands import replay

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "rules" / "default"
START = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
EVENTS_PER_USER = 53   # what Traffic makes a customer pay in its two months, on average


def generate(path: Path, records: int, seed: int = 12) -> Counter:
    """Write ``records`` decision-log lines to ``path``; returns the logged decision mix."""
    from auth.tiers import tier_rank
    from bench.pack_eval import RATES, Traffic
    from gateway.backtest import RecomputedCounters
    from gateway.config import UPSTREAM_TIMEOUT_S
    from gateway.velocity import settle_window_s
    from rules import load_rules

    # At least 20 customers: a mule fan-in attack pays from up to 15 of them.
    traffic = Traffic(max(20, records // EVENTS_PER_USER), seed)
    rnd = random.Random(seed)
    ips: dict[str, str] = {}
    mix: Counter = Counter()
    rs = load_rules(PACK)
    # The counters the gateway would have logged: the replay's own (tests show they count as
    # the gateway's Velocity does).
    counters = RecomputedCounters(rs, 300, settle_s=settle_window_s(UPSTREAM_TIMEOUT_S))
    written = 0
    with rs, open(path, "wb") as fh:
        for n, (at, kind, tx, passed) in enumerate(traffic.events):
            if written >= records:
                break
            ts = START + at + rnd.random()
            user = tx["user_id"]
            ip = ips.setdefault(user, f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}")
            if kind != "genuine":
                ip = f"198.51.100.{rnd.randrange(256)}"
            amount_base = round(tx["amount"] * RATES.get(tx.get("currency", "EUR"), 1.0), 2)
            features = {"route": "payments", "method": "POST", "tier": "client",
                        "hour": int(ts // 3600) % 24, "weekday": int(ts // 86400 + 3) % 7,
                        "client_id": "shop", "ip": ip, "channel": "app", **tx,
                        "amount_base": amount_base}
            event = f"e{n}"
            record = {"ts": ts, "request_id": f"r{written}", "event_id": event, "route": "payments",
                      "client_id": "shop", "user_id": user, "tier": "client", "features": features,
                      "transaction": tx, "latency_ms": 1.2, "rules_version": "bench"}
            answer = None
            for tier in ("client", "answer"):
                if tier == "answer":
                    if answer is None or written >= records:
                        break
                    record = {**record, "ts": ts + 2.0, "request_id": f"r{written}", "tier": answer,
                              "features": {**record["features"], "tier": answer}}
                record["features"] = counters.features(record)
                decision = rs.decide(record["features"], "payments")
                wanted = decision.required_tier
                stepped = wanted is not None and tier_rank(wanted) > tier_rank(record["tier"])
                outcome = ("deny" if decision.action == "deny" else "step_up" if stepped
                           else decision.action if decision.action == "review" else "allow")
                record.update(decision=outcome, action=decision.action, score=decision.score,
                              set_by=decision.set_by, status={"allow": 200, "review": 200,
                                                              "deny": 403}.get(outcome, 401),
                              rules=[{"id": h.rule, "mode": "enforce", "action": h.action}
                                     for h in decision.hits])
                counters.settle(record, decision)
                fh.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                written += 1
                mix[outcome] += 1
                answer = wanted if stepped and passed else None
    return mix


def _timed(run) -> tuple[object, float, float]:
    """(result, wall s, CPU s of this process and of the children it reaped meanwhile)."""
    before, started = os.times(), time.perf_counter()
    result = run()
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[:4]) - sum(before[:4])
    return result, wall, cpu


def _parse_all(log: Path) -> Counter:
    """The logged decisions, by kind: parsing every line is the baseline."""
    with open(log, "rb") as fh:
        return Counter(orjson.loads(line)["decision"] for line in fh)


def main(argv: list[str]) -> int:
    records = int(argv[0]) if argv and argv[0].isdigit() else 1_000_000
    recompute = "--recompute" in argv
    log = Path(tempfile.gettempdir()) / f"txgate-bench-decisions-{records}.jsonl"
    if not log.exists():
        partial = log.with_suffix(".partial")   # an interrupted generation is never reused
        generate(partial, records)
        partial.rename(log)
    hook = None
    if recompute:
        import functools

        from gateway.backtest import RecomputedCounters
        from gateway.config import UPSTREAM_TIMEOUT_S
        from gateway.velocity import settle_window_s
        # As `txgate rules replay --recompute` builds it, with the default upstream timeout.
        hook = functools.partial(RecomputedCounters,
                                 settle_s=settle_window_s(UPSTREAM_TIMEOUT_S))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    mix, parse_wall, parse_cpu = _timed(lambda: _parse_all(log))
    parsed = sum(mix.values())
    print("logged decisions: " + ", ".join(f"{kind} {n / parsed:.2%}" for kind, n in mix.most_common()))
    out, err = io.StringIO(), io.StringIO()
    code, wall, cpu = _timed(lambda: replay(log, PACK, out=out, err=err, recompute=hook))
    if code != 0:
        print(err.getvalue(), file=sys.stderr)
        return code
    print(out.getvalue().splitlines()[0])
    print(f"baseline, parse alone (one process): {parsed} records in {parse_wall:.1f} s: "
          f"{parsed / parse_wall:,.0f} records/s, {parse_cpu / parsed * 1e6:.0f} µs CPU a record")
    print(f"replay{' --recompute' if recompute else ''}: {records} records in {wall:.1f} s: "
          f"{records / wall:,.0f} records/s ({parse_wall / wall:.2f} × the baseline), "
          f"{cpu / records * 1e6:.0f} µs CPU a record ({cpu:.1f} s)")
    print(f"load average afterwards {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
