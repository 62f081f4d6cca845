"""Redis refusing writes: ``maxmemory`` reached under ``noeviction``, and a connection closed at
its ``client-output-buffer-limit``. A ``fail_closed`` route answers a clear 503, the failure is
counted (the TxgateStateStoreErrors alert) and logged with its kind, and nothing acknowledged
before is lost: replays stay refused and counters hold exactly the accepted payments."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from state import StateError, create_backend
from tests.fixtures.signing import SignedClient
from tests.hardening.conftest import RULES, pay_route


def _errors(gw) -> float:
    found = re.search(r'^txgate_state_errors_total\{operation="velocity"\} (\S+)$', gw.metrics(),
                      re.M)
    return float(found.group(1)) if found else 0.0


def test_maxmemory_with_noeviction_is_a_503_and_loses_nothing_acknowledged(
        start_gateway, redis_server, upstream, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "main.yaml").write_text(RULES)
    gw = start_gateway({"state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 500},
                        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
                        "routes": [pay_route(upstream.url, on_state_error="fail_closed")]})
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}
                                               ).json()["secret"])

    def pay(amount):
        prepared = client.prepare("POST", f"{gw.url}/pay", json={
            "user_id": "full", "amount": amount, "currency": "EUR"})
        return prepared, client.send(prepared)

    accepted = [pay(amount) for amount in (10, 20, 30)]
    assert [r.status_code for _, r in accepted] == [200, 200, 200]
    redis_server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.cli("CONFIG", "SET", "maxmemory", "1")    # always over: every write refused
    try:
        _, refused = pay(40)
        assert refused.status_code == 503 and refused.json()["error"] == "state_unavailable"
        assert _errors(gw) >= 1
        logged = [json.loads(line) for line in gw.stderr().splitlines() if "state_store_down" in line]
        assert logged and logged[0]["error"] == "OutOfMemoryError"
        # A replay only reads: still refused while the store is full.
        assert client.send(accepted[0][0]).status_code == 401
    finally:
        redis_server.cli("CONFIG", "SET", "maxmemory", "0")
    _, after = pay(50)
    assert after.status_code == 200
    features = gw.features_of(after.headers["Txgate-Request-Id"])
    # Exactly the accepted payments: the refused one wrote nothing, nothing was lost.
    assert features["user_tx_1h"] == 4 and features["user_amount_1h"] == 60
    assert [client.send(p).status_code for p, _ in accepted] == [401, 401, 401]


def test_a_connection_closed_at_the_output_buffer_limit_fails_the_call_then_recovers(
        redis_server):
    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 1000)
        try:
            for i in range(64):
                await backend.hset("{cfg}:big", f"f{i}", b"v" * 1024)
            assert await backend.claim("{c:a}:sig:1", 60)
            # Redis closes a normal client whose pending output passes 1 KB at once.
            redis_server.cli("CONFIG", "SET", "client-output-buffer-limit", "normal 1kb 1kb 0")
            try:
                with pytest.raises(StateError) as raised:
                    await backend.hgetall("{cfg}:big")
                assert raised.value.operation == "hgetall"
                assert not await backend.claim("{c:a}:sig:1", 60)   # small answers still pass
            finally:
                redis_server.cli("CONFIG", "SET", "client-output-buffer-limit", "normal 0 0 0")
            assert len(await backend.hgetall("{cfg}:big")) == 64     # a fresh connection
        finally:
            await backend.close()
    asyncio.run(scenario())
