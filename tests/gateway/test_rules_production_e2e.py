"""Rules in production through a real gateway on a real redis-server: local time (hour and
weekday in rules.timezone) and the decision log saying what set each action."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.processes import TXGATE, wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
thresholds: {review: 50, require_device: 100}
rules:
  - {id: R-DENY, description: over the limit, when: amount > 10000, action: deny}
  - {id: R-BIG, description: large, when: amount >= 500, score: 60}
  - {id: R-BIGGER, description: larger, when: amount >= 700, score: 50}
  - {id: R-OTP, description: round thousands, when: amount == 1000, action: require_otp}
  - id: R-CLOCK
    description: reads the local time (always true, shadow)
    when: 0 <= hour <= 23 and 0 <= weekday <= 6
    score: 0
    mode: shadow
"""
# UTC+5:45 all year: the local hour is never the UTC hour, whatever the time the test runs at.
ZONE = "Asia/Kathmandu"


@pytest.fixture
def gateway(start_gateway, upstream, redis_server, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(tmp_path / "rules"), "reload": "off", "timezone": ZONE},
        "routes": [{"name": "payments", "match": {"path": "/v1/payments", "methods": ["POST"]},
                    "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount"}}]})
    secret = gw.admin_post("/admin/clients", {"id": "app-1", "hmac": True}).json()["secret"]
    gw.client = SignedClient("app-1", secret)
    return gw


def pay(gw, amount: float, user: str = "u1") -> dict:
    """Send one payment; its decision-log record."""
    before = len(gw.decisions()) if gw.decision_log.exists() else 0
    r = gw.client.request("POST", f"{gw.url}/v1/payments", json={"user_id": user, "amount": amount})
    wait_until(lambda: gw.decision_log.exists() and len(gw.decisions()) > before,
               what="the decision log record")
    record = gw.decisions()[-1]
    assert record["request_id"] == r.headers["Txgate-Request-Id"]
    return record


def test_hour_and_weekday_are_the_local_time_of_rules_timezone(gateway):
    zone = ZoneInfo(ZONE)
    started = time.time()
    record = pay(gateway, 10)
    ended = time.time()
    # The local time at either end of the request (the hour may turn while it runs).
    local = {(datetime.fromtimestamp(t, zone).hour, datetime.fromtimestamp(t, zone).weekday())
             for t in (started, ended)}
    assert (record["features"]["hour"], record["features"]["weekday"]) in local
    utc_hours = {time.gmtime(t).tm_hour for t in (started, ended)}
    assert record["features"]["hour"] not in utc_hours
    assert {"id": "R-CLOCK", "mode": "shadow", "score": 0} in record["rules"]


CANDIDATE = RULES.replace("thresholds: {review: 50, require_device: 100}",
                          "thresholds: {review: 50, require_otp: 100, require_device: 200}")


def test_the_decision_log_replay_and_explain_say_what_set_each_action(gateway, tmp_path):
    set_by = {amount: pay(gateway, amount)["set_by"] for amount in (10, 600, 800, 20000)}
    assert set_by == {10: "score 0 < review 50", 600: "score 60 >= review 50",
                      800: "score 110 >= require_device 100", 20000: "rule R-DENY"}
    records = {r["transaction"]["amount"]: r for r in gateway.decisions()}
    assert records[800]["decision"] == "step_up" and records[800]["action"] == "require_device"

    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "r.yaml").write_text(CANDIDATE)
    log = str(gateway.decision_log)
    replay = subprocess.run([TXGATE, "rules", "replay", "--log", log, "--rules", str(candidate),
                             "--changes"], capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    changed = replay.stdout.split("changed transactions\n")[1].splitlines()
    assert changed == [f"  {records[800]['request_id']}  user=u1  amount=800  require_device "
                       "(score 110 >= require_device 100) -> require_otp "
                       "(score 110 >= require_otp 100)"]
    as_json = subprocess.run([TXGATE, "rules", "replay", "--log", log, "--rules", str(candidate),
                              "--changes", "--json"], capture_output=True, text=True, timeout=60)
    [row] = json.loads(as_json.stdout)["changes"]
    assert (row["from"], row["from_set_by"], row["to"], row["to_set_by"]) == (
        "require_device", "score 110 >= require_device 100",
        "require_otp", "score 110 >= require_otp 100")

    explained = subprocess.run([TXGATE, "explain", records[800]["request_id"], "--log", log,
                                "--rules", str(candidate), "--config", str(gateway.config_path)],
                               capture_output=True, text=True, timeout=60)
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert [line for line in lines if line.startswith("  set by: ")] == [
        "  set by: score 110 >= require_device 100",
        "  set by: score 110 >= require_otp 100 (R-BIG +60, R-BIGGER +50)"]
