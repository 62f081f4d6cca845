"""Failover under load, measured against an exact model of what was answered.

    python -m bench.failover [--store sentinel|cluster|both] [--before 4] [--after 4]
                             [--wait-replicas default|0] [--write docs/reliability.md]

Two gateways share one store: a primary with two replicas watched by three redis-sentinel
(Sentinel), or a 3-master cluster with two replicas per master. Signed traffic runs through
both: payments with counters, OTP step-ups answered with a wrong code (attempts), users
locked out by wrong codes, and step-ups passed with a right code. Mid-run the primary is
killed (SIGKILL; on the cluster first a graceful ``CLUSTER FAILOVER``, then a master killed)
and a replica is promoted. When both gateways answer again, the run checks, against what the
gateways answered:

- every payment accepted (200) is sent again, byte for byte, to the *other* gateway — which
  never saw it, so only the store can refuse it: a 200 there is a **replay accepted**;
- every right TOTP code accepted is answered again to a new challenge at the other gateway:
  a 200 is a **used TOTP step accepted again**;
- every wrong code answered 401 was counted before the answer: the store's attempt count per
  user below the answered ones is **OTP attempts forgotten**;
- every user locked (423) must still be: otherwise a **lockout forgotten**;
- each payer's counters (read through a probe's decision-log features) against the sum of its
  200s: **counter updates lost**, and counts above the model (at most that user's 503s: a
  refused request whose script ran before the primary died) or **doubled** beyond that;
- the 503s: how many, from the first to the last, and when the gateways answered 200 again.

Loopback only, bounded (each wait has a deadline). ``make failover`` runs both stores with
their defaults and writes the table into docs/reliability.md; ``tests/hardening/
test_failover.py`` runs a short Sentinel version in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import redis
import requests

from tests.fixtures.processes import Gateway, Upstream, wait_until
from tests.fixtures.redis import RedisClusterProcesses, RedisSentinelGroup
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_amount_1h, key: [user_id], window: 1h, aggregate: sum, field: amount, on: allow}
rules:
  - {id: F-OTP, description: large amounts need a code, when: amount >= 1000, action: require_otp}
"""
HOST = "pay.test"          # both gateways' clients sign this authority
PATH = "/pay"
STEP_UP_AMOUNT = 5000
MAX_FAILURES = 5           # per user and client: the lock
WRONG_PER_USER = MAX_FAILURES - 2   # attempt users stay below the lock
DEADLINE_S = 90            # the longest any phase may take


@dataclass
class Answer:
    kind: str
    user: str
    gateway: int
    status: int | str
    at: float
    amount: int = 0
    prepared: requests.PreparedRequest | None = None
    code: str = ""


@dataclass
class Report:
    store: str
    wait_replicas: str
    requests: Counter = field(default_factory=Counter)
    replays: int = 0
    replays_accepted: int = 0
    otp_attempts: int = 0
    otp_forgotten: int = 0
    otp_extra: int = 0
    totp_reuses: int = 0
    totp_reuses_accepted: int = 0
    lockouts: int = 0
    lockouts_forgotten: int = 0
    payers: int = 0
    counter_updates: int = 0
    counters_lost: int = 0
    counters_extra: int = 0
    counters_doubled: int = 0
    events: list = field(default_factory=list)     # (name, when)
    outages: list = field(default_factory=list)    # (event, 503s, first to last s, 200 after s)
    errors: list = field(default_factory=list)     # gateway log lines of unexpected failures
    store_errors: Counter = field(default_factory=Counter)   # why the store was down, per kind

    def problems(self) -> list[str]:
        """What must be zero whatever the store does, and what WAIT must make zero."""
        found = ["counters doubled"] if self.counters_doubled else []
        if self.wait_replicas != "0":
            found += [name for name, value in (
                ("replays accepted", self.replays_accepted),
                ("OTP attempts forgotten", self.otp_forgotten),
                ("used TOTP steps accepted again", self.totp_reuses_accepted),
                ("lockouts forgotten", self.lockouts_forgotten)) if value]
        transport = [k for k in self.requests if not isinstance(k, int) or k >= 500 and k != 503]
        if transport:
            found.append(f"unexpected answers {transport}: {self.errors}")
        return found


def _code_other_than(secret: str) -> str:
    """A well-formed code that no step of the valid window accepts."""
    totp, now = pyotp.TOTP(secret), time.time()
    valid = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in (f"{n:06d}" for n in range(123456, 999999, 7919)) if c not in valid)


class Store:
    """The processes behind the gateways, and the events that take a primary away. With
    ``lag_s`` the primary loses its replicas' links (``CLIENT KILL TYPE replica``, the
    replicas stopped with SIGSTOP so that they cannot reconnect) that long before it is killed;
    the replicas resume after. The writes of that time never reach them, as when replication
    lags under load or across a network hiccup: the window WAIT closes. (Stopping the replicas
    alone is not enough on loopback: the writes wait in their socket buffers.)"""

    def __init__(self, kind: str, directory: Path, lag_s: float = 0.0):
        self.kind = kind
        self.lag_s = lag_s
        if kind == "sentinel":
            self.group = RedisSentinelGroup(directory)
        else:
            self.cluster = RedisClusterProcesses(directory, replicas=2)

    def start(self) -> None:
        (self.group if self.kind == "sentinel" else self.cluster).start()

    def stop(self) -> None:
        (self.group if self.kind == "sentinel" else self.cluster).stop()

    def state_config(self, wait_replicas: int | None) -> dict:
        config: dict = {"backend": "redis", "timeout_ms": 500}
        if self.kind == "sentinel":
            config["sentinel"] = {"master": self.group.MASTER,
                                  "nodes": [f"{h}:{p}" for h, p in self.group.nodes]}
        else:
            config.update(url=self.cluster.url, cluster=True)
        if wait_replicas is not None:
            config["wait_replicas"] = wait_replicas
        return config

    def events(self) -> list[tuple[str, Callable[[], None]]]:
        killed = (f"killed {self.lag_s:g} s after losing its replicas" if self.lag_s
                  else "killed (SIGKILL)")
        if self.kind == "sentinel":
            return [(f"primary {killed}", self._kill_sentinel_primary)]
        return [("CLUSTER FAILOVER", self._manual_failover),
                (f"master {killed}", self._kill_cluster_master)]

    def _kill(self, primary, replicas) -> None:
        if not self.lag_s:
            primary.stop()
            return
        for replica in replicas:
            replica.process.send_signal(signal.SIGSTOP)
        try:
            primary.cli("CLIENT", "KILL", "TYPE", "replica")
            time.sleep(self.lag_s)
            primary.stop()
        finally:
            for replica in replicas:
                replica.process.send_signal(signal.SIGCONT)

    def _kill_sentinel_primary(self) -> None:
        primary = self.group.primary()
        self._kill(primary, [s for s in self.group.servers if s is not primary and s.running])

    def _masters(self):
        return [n for n in self.cluster.nodes if n.running and n.cli("ROLE")[0] == "master"]

    def _replica_of(self, master):
        for node in self.cluster.nodes:
            if node.running and node is not master:
                role = node.cli("ROLE")
                if role[0] == "slave" and int(role[2]) == master.port:
                    return node
        raise RuntimeError("no replica")

    def _manual_failover(self) -> None:
        master = self._masters()[0]
        replica = self._replica_of(master)
        replica.cli("CLUSTER", "FAILOVER")
        wait_until(lambda: replica.cli("ROLE")[0] == "master", timeout=30,
                   what="the replica to take over")

    def _kill_cluster_master(self) -> None:
        # Not the node the gateways were seeded with (that one is tested elsewhere).
        seed = self.cluster.nodes[0]
        master = next(m for m in self._masters() if m is not seed)
        replicas = [n for n in self.cluster.nodes if n.running and n is not master
                    and n.cli("ROLE")[0] == "slave" and int(n.cli("ROLE")[2]) == master.port]
        self._kill(master, replicas)

    def client(self) -> redis.Redis:
        """A plain client of the current primary (or of the cluster), to read attempts."""
        if self.kind == "sentinel":
            primary = self.group.primary()
            return redis.Redis(port=primary.port, socket_timeout=5)
        node = next(n for n in self.cluster.nodes if n.running)
        return redis.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=5)


class Run:
    def __init__(self, store: Store, tmp: Path, wait_replicas: int | None, payers: int = 12,
                 attempt_users: int = 200, locked_users: int = 4, totp_users: int = 4):
        self.store = store
        self.tmp = tmp
        self.wait_replicas = wait_replicas
        self.payers = [f"payer-{i}" for i in range(payers)]
        self.attempt_users = [f"guess-{i}" for i in range(attempt_users)]
        self.locked_users = [f"locked-{i}" for i in range(locked_users)]
        self.totp_users = [f"otp-{i}" for i in range(totp_users)]
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.secrets: dict[str, str] = {}

    # -- setup --------------------------------------------------------------------------
    def start(self, upstream: Upstream) -> None:
        rules = self.tmp / "rules"
        rules.mkdir()
        (rules / "main.yaml").write_text(RULES)
        config = {
            "public_host": HOST,
            "state": self.store.state_config(self.wait_replicas),
            "rules": {"path": str(rules), "reload": "off"},
            "auth": {"totp": {"max_failures": MAX_FAILURES, "max_failures_per_user": 1000,
                              "lockout_s": 600},
                     "client_attempts": {"max": 1_000_000, "window_s": 60}},
            "routes": [{"name": "pay", "match": {"path": PATH, "methods": ["POST"]},
                        "upstream": upstream.url, "on_state_error": "fail_closed",
                        "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                                        "currency": "json:$.currency"}}]}
        self.gateways = []
        for name in ("a", "b"):
            (self.tmp / name).mkdir()
            self.gateways.append(Gateway(self.tmp / name, config))
        secret = self.gateways[0].admin_post("/admin/clients", {"id": "app", "hmac": True}
                                             ).json()["secret"]
        self.client_secret = secret
        for user in self.attempt_users + self.locked_users + self.totp_users:
            seed = pyotp.random_base32()
            answer = self.gateways[0].admin_post(f"/admin/totp/{user}", {"secret": seed})
            assert answer.status_code in (200, 201), answer.text
            self.secrets[user] = seed

    def close(self, report: Report) -> None:
        for gateway in getattr(self, "gateways", []):
            gateway.stop()
            # A 5xx other than 503 is a finding: its traceback goes into the report.
            for line in gateway.stderr().splitlines():
                if "Traceback" in line:
                    report.errors.append(line)
                if '"state_store_down"' in line:
                    report.store_errors[json.loads(line)["error"]] += 1

    # -- traffic ------------------------------------------------------------------------
    def _client(self) -> SignedClient:
        return SignedClient("app", self.client_secret)

    def _send(self, client: SignedClient, gateway: int, prepared) -> requests.Response | str:
        copy = prepared.copy()
        copy.url = f"{self.gateways[gateway].url}{PATH}"
        copy.headers["Host"] = HOST
        try:
            return client.send(copy, timeout=30)
        except requests.RequestException as exc:
            return type(exc).__name__

    def _pay(self, client, gateway: int, user: str, amount: int, headers=None):
        prepared = client.prepare("POST", f"http://{HOST}{PATH}", headers=headers or {},
                                  json={"user_id": user, "amount": amount, "currency": "EUR"})
        return prepared, self._send(client, gateway, prepared)

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def payments(self, worker: int, workers: int) -> None:
        client, i = self._client(), 0
        mine = self.payers[worker::workers]
        while not self.stop.is_set():
            user, gateway = mine[i % len(mine)], i % 2
            amount = worker * 100 + i % 97 + 1     # below the step-up, varied
            prepared, response = self._pay(client, gateway, user, amount)
            self._record(Answer("payment", user, gateway, _status(response), time.monotonic(),
                                amount, prepared))
            i += 1

    def _step_up(self, client, user: str, code: str, first: int) -> tuple[int | str, str]:
        """A step-up payment at gateway ``first``, answered with ``code`` at the other one:
        (the answer's status, its error)."""
        _, asked = self._pay(client, first, user, STEP_UP_AMOUNT)
        if isinstance(asked, str) or asked.status_code != 401:
            return _status(asked), _error(asked)
        challenge = asked.json()["challenge"]
        _, answered = self._pay(client, 1 - first, user, STEP_UP_AMOUNT,
                                {"Txgate-Challenge": challenge, "Txgate-OTP": code})
        return _status(answered), _error(answered)

    def wrong_codes(self) -> None:
        """Wrong answers, a few per user (below the lock), round the users."""
        client, i = self._client(), 0
        while not self.stop.is_set() and i < len(self.attempt_users) * WRONG_PER_USER:
            user = self.attempt_users[i % len(self.attempt_users)]
            status, error = self._step_up(client, user, _code_other_than(self.secrets[user]),
                                          i % 2)
            self._record(Answer("wrong code", user, (i + 1) % 2, status, time.monotonic(),
                                code=error))
            i += 1

    def before_the_loss(self) -> None:
        """Lock some users and pass step-ups with right codes: records the loss must keep."""
        client = self._client()
        for k, user in enumerate(self.locked_users):
            for _ in range(MAX_FAILURES):
                status, error = self._step_up(client, user, _code_other_than(self.secrets[user]),
                                              k % 2)
                if status == 423:
                    self._record(Answer("locked", user, (k + 1) % 2, status, time.monotonic()))
                    break
        for k, user in enumerate(self.totp_users):
            code = pyotp.TOTP(self.secrets[user]).now()
            status, _ = self._step_up(client, user, code, k % 2)
            self._record(Answer("right code", user, (k + 1) % 2, status, time.monotonic(),
                                code=code))

    # -- the run ------------------------------------------------------------------------
    def drive(self, before_s: float, after_s: float, report: Report) -> None:
        workers = [threading.Thread(target=self.payments, args=(w, 3)) for w in range(3)]
        workers.append(threading.Thread(target=self.wrong_codes))
        for worker in workers:
            worker.start()
        try:
            self.before_the_loss()
            time.sleep(before_s)
            for name, event in self.store.events():
                at = time.monotonic()
                event()
                report.events.append((name, at))
                self._until_both_answer(at)
                time.sleep(after_s)
        finally:
            self.stop.set()
            for worker in workers:
                worker.join(DEADLINE_S)

    def _until_both_answer(self, since: float) -> None:
        """Until each gateway answered a payment 200 a second after the event and after the
        last 503 (a request sent before the event is answered within the second)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with self._lock:
                last_refused = max((a.at for a in self.answers if a.status == 503), default=0)
                served = {a.gateway for a in self.answers
                          if a.kind == "payment" and a.status == 200
                          and a.at > max(since + 1.0, last_refused)}
            if served == {0, 1}:
                return
            time.sleep(0.1)
        raise RuntimeError("the gateways did not answer again after the failover")

    # -- the checks ---------------------------------------------------------------------
    def check(self, report: Report) -> None:
        client = self._client()
        statuses = Counter(a.status for a in self.answers)
        report.requests = statuses
        # Counters first: an accepted replay would count its payment again.
        self._counters(client, report)
        self._attempts(report)
        self._replays(report)
        self._totp_reuses(client, report)
        self._lockouts(client, report)
        # Per event: the 503s until the next one, and when a 200 came after the last of them.
        ends = [at for _, at in report.events[1:]] + [float("inf")]
        for (name, at), end in zip(report.events, ends):
            refused = sorted(a.at for a in self.answers if a.status == 503 and at <= a.at < end)
            last = refused[-1] if refused else at
            again = min((a.at for a in self.answers if a.status == 200 and a.at > last),
                        default=last)
            report.outages.append((name, len(refused),
                                   refused[-1] - refused[0] if refused else 0.0, again - at))

    def _replays(self, report: Report) -> None:
        accepted = [a for a in self.answers if a.kind == "payment" and a.status == 200]
        report.replays = len(accepted)
        results: list = []

        def replay(part):
            replayer = self._client()
            for a in part:
                # A 503 decided nothing (the store did not answer in time on this loaded
                # machine): the replay is sent again until the store decides it.
                for _ in range(20):
                    status = _status(self._send(replayer, 1 - a.gateway, a.prepared))
                    if status != 503:
                        break
                    time.sleep(0.25)
                results.append(status)
        threads = [threading.Thread(target=replay, args=(accepted[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE_S)
        report.replays_accepted = results.count(200)
        others = Counter(s for s in results if s not in (200, 401))
        if others or len(results) != len(accepted):
            raise RuntimeError(f"replays answered other than 401 or 200: {others}")

    def _totp_reuses(self, client, report: Report) -> None:
        passed = [a for a in self.answers if a.kind == "right code" and a.status == 200]
        report.totp_reuses = len(passed)
        for a in passed:
            status, error = self._step_up(client, a.user, a.code, a.gateway)
            if status == 200:
                report.totp_reuses_accepted += 1
            elif (status, error) != (401, "otp_reused"):
                raise RuntimeError(f"a used code answered {status} {error}")

    def _lockouts(self, client, report: Report) -> None:
        locked = [a for a in self.answers if a.kind == "locked"]
        report.lockouts = len(locked)
        for a in locked:
            _, response = self._pay(client, 1 - a.gateway, a.user, STEP_UP_AMOUNT)
            if _status(response) != 423:
                report.lockouts_forgotten += 1

    def _attempts(self, report: Report) -> None:
        counted = Counter(a.user for a in self.answers if a.kind == "wrong code"
                          and a.status == 401)
        refused = Counter(a.user for a in self.answers if a.kind == "wrong code"
                          and a.status == 503)
        report.otp_attempts = sum(counted.values())
        store = self.store.client()
        try:
            for user in self.attempt_users:
                stored = int(store.get(f"{{u:{user}}}:auth:failures") or 0)
                report.otp_forgotten += max(0, counted[user] - stored)
                extra = max(0, stored - counted[user])
                if extra > refused[user]:
                    raise RuntimeError(f"{user}: {extra} attempts more than answered")
                report.otp_extra += extra
        finally:
            store.close()

    def _counters(self, client, report: Report) -> None:
        report.payers = len(self.payers)
        for user in self.payers:
            mine = [a for a in self.answers if a.kind == "payment" and a.user == user]
            ok = [a for a in mine if a.status == 200]
            refused = [a for a in mine if a.status == 503]
            _, probe = self._pay(client, 0, user, 1)
            if _status(probe) != 200:
                raise RuntimeError(f"probe answered {_status(probe)}")
            features = self.gateways[0].features_of(probe.headers["Txgate-Request-Id"])
            # Two counters per payment. The probe counts itself in the attempts; an on-allow
            # sum leaves its own amount out. Lost and extra are in payments: the sum's
            # difference divided by the payer's typical amount would be a guess, so the sum
            # only counts as lost or extra when it differs at all (one update each).
            report.counter_updates += 2 * len(ok)
            tx = features["user_tx_1h"] - 1
            report.counters_lost += max(0, len(ok) - tx)
            extra = max(0, tx - len(ok))
            report.counters_extra += min(extra, len(refused))
            report.counters_doubled += max(0, extra - len(refused))
            amount, model = features["user_amount_1h"], sum(a.amount for a in ok)
            report.counters_lost += amount < model
            # A refused request's on-allow amount is taken back after its refusal: a primary
            # lost in between keeps it (at most the payer's refused amounts).
            report.counters_extra += amount > model
            report.counters_doubled += amount - model > sum(a.amount for a in refused)


def _status(response) -> int | str:
    return response if isinstance(response, str) else response.status_code


def _error(response) -> str:
    if isinstance(response, str):
        return response
    try:
        return response.json().get("error", "")
    except ValueError:
        return ""


def run(kind: str, before_s: float = 4.0, after_s: float = 4.0,
        wait_replicas: int | None = None, tmp: Path | None = None, lag_s: float = 0.0,
        **sizes) -> Report:
    """One measured failover of ``kind`` ("sentinel" or "cluster"); ``wait_replicas`` None
    is the configuration's default (1 on both); ``lag_s`` as in ``Store``."""
    report = Report(kind, "default (1)" if wait_replicas is None else str(wait_replicas))
    with tempfile.TemporaryDirectory(prefix="txgate-failover-", dir=tmp) as directory:
        directory = Path(directory)
        (directory / "store").mkdir()
        store = Store(kind, directory / "store", lag_s)
        upstream = None
        store.start()
        try:
            upstream = Upstream()
            harness = Run(store, directory, wait_replicas, **sizes)
            try:
                harness.start(upstream)
                harness.drive(before_s, after_s, report)
                harness.check(report)
            finally:
                harness.close(report)
        finally:
            if upstream is not None:
                upstream.stop()
            store.stop()
    return report


COLUMNS = ("store", "WAIT replicas", "requests (200 / 503 / other)", "replays sent / accepted",
           "wrong OTPs answered / forgotten", "used TOTP codes again / accepted",
           "lockouts / forgotten", "counter updates / lost / above the model",
           "per event: 503s (first to last), 200 again after")


def row(report: Report) -> str:
    r = report.requests
    other = sum(v for k, v in r.items() if k not in (200, 503))
    outages = "; ".join(f"{name}: {count} ({span:.1f} s), {again:.1f} s"
                        for name, count, span, again in report.outages)
    cells = (report.store, report.wait_replicas,
             f"{sum(r.values())} ({r[200]} / {r[503]} / {other})",
             f"{report.replays} / **{report.replays_accepted}**",
             f"{report.otp_attempts} / **{report.otp_forgotten}**",
             f"{report.totp_reuses} / **{report.totp_reuses_accepted}**",
             f"{report.lockouts} / **{report.lockouts_forgotten}**",
             f"{report.counter_updates} / {report.counters_lost} / {report.counters_extra}",
             outages)
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(reports: list[Report]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "\n".join(row(r) for r in reports) + "\n"


MARK_START, MARK_END = "<!-- failover table: make failover -->", "<!-- end failover table -->"


def write_table(path: Path, reports: list[Report]) -> None:
    text = path.read_text()
    stamp = time.strftime("%Y-%m-%d")
    block = f"{MARK_START}\nLast `make failover`: {stamp}.\n\n{table(reports)}{MARK_END}"
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no failover table markers")
    path.write_text(pattern.sub(lambda _: block, text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sentinel", "cluster", "both"), default="both")
    parser.add_argument("--before", type=float, default=4.0)
    parser.add_argument("--after", type=float, default=4.0)
    parser.add_argument("--wait-replicas", choices=("default", "0", "both"), default="both")
    parser.add_argument("--lag", type=float, default=0.5,
                        help="seconds the replicas stop before the second kill of each pair")
    parser.add_argument("--write", type=Path, help="put the table into this Markdown file")
    args = parser.parse_args(argv)
    stores = ("sentinel", "cluster") if args.store == "both" else (args.store,)
    waits = {"default": [None], "0": [0], "both": [0, None]}[args.wait_replicas]
    reports, failed = [], []
    for kind in stores:
        for lag, wait in ((lag, wait) for lag in (0.0, args.lag) for wait in waits):
            report = run(kind, args.before, args.after, wait, lag_s=lag)
            reports.append(report)
            print(row(report), flush=True)
            failed += [f"{kind}, WAIT {report.wait_replicas}: {p}" for p in report.problems()]
    print(table(reports))
    if args.write:
        write_table(args.write, reports)
    for problem in failed:
        print("FAILED:", problem, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
