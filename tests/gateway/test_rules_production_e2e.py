"""Rules in production through a real gateway on a real redis-server: local time (hour and
weekday in rules.timezone) and the decision log saying what set each action."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.processes import wait_until
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
