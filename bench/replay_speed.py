"""How fast `txgate rules replay` re-decides a decision log (docs/performance.md, issue 12).

    python -m bench.replay_speed [RECORDS] [--recompute]

Generates a decision log of RECORDS (default 1,000,000) records shaped as the gateway writes
them for the shipped pack (its features: counters, transaction fields, built-ins), 5 % of them
step-ups answered by a repeat record of the same event, then times `rules.commands.replay`
on it under the shipped pack and prints records per second, wall and CPU (the process and its
workers). The baseline, in the same run: reading the log and parsing every line with orjson in
one process, the least any replay must do. The log is made once per size (kept in the system's
temporary directory, TMPDIR: about 900 bytes a record). The load average is printed before and
after: the machine is shared, and wall times are only comparable at a similar load.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

from rules.commands import replay

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "rules" / "default"
ROUTES = ("payments", "payments", "payments", "transfers", "loans", "wealth")
COUNTRIES = ("DE", "DE", "FR", "NL", "ES", "IT", "US", "NG")


def generate(path: Path, records: int, seed: int = 12) -> None:
    """Write ``records`` decision-log lines to ``path``, one second apart per 100 records."""
    rnd = random.Random(seed)
    start = 1_790_000_000.0
    with open(path, "wb") as fh:
        n = 0
        while n < records:
            ts = start + n / 100
            user = f"u{rnd.randrange(100_000)}"
            amount = round(rnd.lognormvariate(4, 1.2), 2)
            features = {
                "route": rnd.choice(ROUTES), "method": "POST", "tier": "client",
                "hour": int(ts // 3600) % 24, "client_id": "shop", "ip": f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}",
                "user_id": user, "amount": amount, "currency": "EUR", "payee": f"P{rnd.randrange(50)}",
                "country": rnd.choice(COUNTRIES), "device_id": f"d{rnd.randrange(200_000)}",
                "channel": rnd.choice(("web", "app")),
                "user_tx_10m": rnd.randrange(1, 4), "user_tx_1h": rnd.randrange(1, 6),
                "user_tx_24h": rnd.randrange(1, 12), "user_tx_30d": rnd.randrange(0, 60),
                "user_amount_24h": round(rnd.random() * 800, 2), "user_amount_30d": round(rnd.random() * 5000, 2),
                "user_payees_24h": rnd.randrange(1, 4), "user_devices_7d": rnd.randrange(1, 3),
                "user_countries_24h": 1, "device_users_24h": 1, "ip_users_1h": rnd.randrange(1, 3),
                "user_payee_age_s": rnd.choice((0, 3_456_000)), "user_device_age_s": 3_456_000,
                "user_age_s": 3_456_000, "user_lowvalue_sum": round(rnd.random() * 80, 2),
                "user_lowvalue_count": rnd.randrange(0, 5),
            }
            step_up = rnd.random() < 0.05
            event = f"e{n}"
            base = {"ts": ts, "request_id": f"r{n}", "event_id": event, "route": features["route"],
                    "client_id": "shop", "user_id": user, "tier": "client",
                    "decision": "step_up" if step_up else "allow",
                    "action": "require_otp" if step_up else "allow", "score": 0.0,
                    "rules": [{"id": "ATO-001", "mode": "enforce", "action": "require_otp"}] if step_up else [],
                    "features": features,
                    "transaction": {k: features[k] for k in ("user_id", "amount", "currency", "payee", "country")},
                    "latency_ms": 1.2, "rules_version": "bench", "status": 401 if step_up else 200}
            fh.write(orjson.dumps(base, option=orjson.OPT_APPEND_NEWLINE))
            n += 1
            if step_up and n < records:
                repeat = {**base, "ts": ts + 0.005, "request_id": f"r{n}", "tier": "otp",
                          "decision": "allow", "action": "allow", "rules": [], "status": 200,
                          "features": {**features, "tier": "otp"}}
                fh.write(orjson.dumps(repeat, option=orjson.OPT_APPEND_NEWLINE))
                n += 1


def _timed(run) -> tuple[object, float, float]:
    """(result, wall s, CPU s of this process and of the children it reaped meanwhile)."""
    before, started = os.times(), time.perf_counter()
    result = run()
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[:4]) - sum(before[:4])
    return result, wall, cpu


def _parse_all(log: Path) -> int:
    with open(log, "rb") as fh:
        return sum(1 for line in fh if orjson.loads(line))


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
        from gateway.backtest import RecomputedCounters
        hook = RecomputedCounters
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    parsed, parse_wall, parse_cpu = _timed(lambda: _parse_all(log))
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
