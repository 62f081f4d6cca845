"""Soak: mixed traffic against a real gateway for a while, sampling health every few seconds.

    python -m bench.soak [--duration 600] [--interval 5]

Starts an upstream and a `txgate run` (memory backend) like the e2e tests, sends signed
payments (allowed, scored, denied, malformed) and pass-through reads from 4 threads, and every
interval records the gateway's RSS, open file descriptors, /healthz answer time (event-loop
lag) and error counts. Fails (exit 1) on any 5xx or transport error, or when RSS or fds grow
by more than 20% (+10 MiB / +20 fds slack) from the first third of the run to the last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.fixtures.processes import Gateway, Upstream
from tests.fixtures.signing import SignedClient
from tests.hardening.conftest import RULES, pay_route


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _traffic(gw, secret, stop, counts, worker):
    client = SignedClient("soak", secret)
    bodies = [{"user_id": f"s{worker}", "amount": 10, "currency": "EUR"},
              {"user_id": f"s{worker}", "amount": 6000, "currency": "EUR"},
              {"user_id": f"s{worker}", "amount": 200000, "currency": "EUR"},
              {"user_id": f"s{worker}", "amount": "x", "currency": "EUR"}]
    i = 0
    while not stop.is_set():
        try:
            if i % 5 == 4:
                r = client.request("GET", f"{gw.url}/acct/{i}", timeout=10)
            else:
                r = client.request("POST", f"{gw.url}/pay", json=bodies[i % 4], timeout=10)
            key = "5xx" if r.status_code >= 500 else str(r.status_code)
        except requests.RequestException:
            key = "transport_error"
        counts[key] = counts.get(key, 0) + 1
        i += 1


SKEW_S = 60
WARMUP_S = 2 * SKEW_S + 1 + 30   # the replay window fills, plus time to settle


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--interval", type=float, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="txgate-soak-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "main.yaml").write_text(RULES)
    upstream = Upstream()
    # Every accepted signature is remembered for 2*max_skew_s+1 seconds (replay protection) and
    # every request's event for challenge_ttl_s+60 (its step-up repeat), so memory rightly grows
    # that long before it levels off. Short windows let the plateau come early in the run;
    # growth is judged only after it (WARMUP_S).
    gw = Gateway(tmp, {"rules": {"path": str(tmp / "rules"), "reload": "off"},
                       "auth": {"signature": {"max_skew_s": SKEW_S}, "challenge_ttl_s": SKEW_S},
                       "routes": [pay_route(upstream.url),
                                  {"name": "acct", "match": {"path_prefix": "/acct/"},
                                   "upstream": upstream.url}]})
    stop, counts, samples = threading.Event(), {}, []
    try:
        secret = gw.admin_post("/admin/clients", {"id": "soak", "hmac": True}).json()["secret"]
        threads = [threading.Thread(target=_traffic, args=(gw, secret, stop, counts, w))
                   for w in range(4)]
        for t in threads:
            t.start()
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            time.sleep(args.interval)
            requests.delete(f"{upstream.url}/seen", timeout=5)   # the upstream's own memory
            started = time.monotonic()
            requests.get(f"{gw.admin}/healthz", timeout=10)
            lag_ms = (time.monotonic() - started) * 1000
            sample = {"t": round(args.duration - (end - time.monotonic())),
                      "rss_kib": _rss_kib(gw.proc.pid),
                      "fds": len(os.listdir(f"/proc/{gw.proc.pid}/fd")),
                      "healthz_ms": round(lag_ms, 1), **dict(counts)}
            samples.append(sample)
            print(sample, flush=True)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        gw.stop()
        upstream.stop()
    settled = [s for s in samples if s["t"] >= WARMUP_S]
    if len(settled) < 6:
        print(f"FAIL: run longer than {2 * WARMUP_S} s to judge memory after the warm-up")
        return 1
    third = len(settled) // 3
    first, last = settled[:third], settled[-third:]
    rss0, rss1 = (statistics.median(s["rss_kib"] for s in part) for part in (first, last))
    fd0, fd1 = (max(s["fds"] for s in part) for part in (first, last))
    lags = [s["healthz_ms"] for s in samples]
    total = sum(counts.values())
    print(f"requests {total}: {counts}; rss {rss0} -> {rss1} KiB; fds {fd0} -> {fd1}; "
          f"healthz p50 {statistics.median(lags):.1f} ms, max {max(lags):.1f} ms")
    problems = []
    if counts.get("5xx") or counts.get("transport_error"):
        problems.append("errors")
    if rss1 > rss0 * 1.2 + 10240:
        problems.append("memory grew")
    if fd1 > fd0 * 1.2 + 20:
        problems.append("file descriptors grew")
    print("FAIL: " + ", ".join(problems) if problems else "soak passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
