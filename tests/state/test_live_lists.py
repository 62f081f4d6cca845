"""Live lists on memory, a real redis-server and a real 3-master cluster: changes through
``state.lists.LiveLists``, membership through the velocity round trip (``gateway.velocity``)."""

from __future__ import annotations

import time

import pytest

from gateway.velocity import Velocity
from state.lists import ListError, LiveLists

MEMBERSHIPS = (("payee_in_mules", "payee", "mules"), ("ip_in_proxies", "ip", "proxies"))


def _lists(state_backends, backend) -> LiveLists:
    return LiveLists(backend, clock=state_backends.clock if state_backends.kind == "memory"
                     else time.time)


async def _seen(velocity, attrs, event):
    return (await velocity.observe_once(attrs, event, ())).features


def test_members_added_on_one_connection_are_read_by_another_in_the_round_trip(state_backends):
    async def scenario(backend):
        lists = _lists(state_backends, backend)
        # Another gateway's connection to the same store (memory: one process, one store).
        reader = backend if state_backends.kind == "memory" else state_backends.open()
        try:
            v = Velocity((), reader, memberships=MEMBERSHIPS)
            pay = {"payee": "LT60 1010", "ip": "203.0.113.9"}
            assert await _seen(v, pay, "e1") == {"payee_in_mules": False, "ip_in_proxies": False}
            added = await lists.add("mules", ["LT60 1010", "DE00"], actor="cli:ops",
                                    reason="case 4711")
            assert [m.value for m in added] == ["LT60 1010", "DE00"]
            assert await _seen(v, pay, "e2") == {"payee_in_mules": True, "ip_in_proxies": False}
            await lists.add("proxies", ["203.0.113.9"], actor="admin-token")
            assert await _seen(v, pay, "e3") == {"payee_in_mules": True, "ip_in_proxies": True}
            # An absent or non-string attribute is not looked up: its membership is absent.
            assert await _seen(v, {"payee": "DE00"}, "e4") == {"payee_in_mules": True}
            assert await _seen(v, {"payee": 7}, "e5") == {}
            assert await lists.remove("mules", ["LT60 1010", "nope"]) == ["LT60 1010"]
            assert await _seen(v, pay, "e6") == {"payee_in_mules": False, "ip_in_proxies": True}
            shown = await lists.show("mules")
            assert [(m.value, m.reason, m.actor, m.expires_at) for m in shown] == [
                ("DE00", "case 4711", "cli:ops", None)]
        finally:
            if reader is not backend:
                await reader.close()
    state_backends.run(scenario)


def test_a_member_expires_at_its_ttl_and_show_drops_it(state_backends):
    async def scenario(backend):
        lists = _lists(state_backends, backend)
        v = Velocity((), backend, memberships=MEMBERSHIPS)
        await lists.add("mules", ["short"], actor="a", ttl_s=1)
        await lists.add("mules", ["long"], actor="a", ttl_s=3600)
        assert await _seen(v, {"payee": "short"}, "e1") == {"payee_in_mules": True}
        await state_backends.wait(1.2)
        assert await _seen(v, {"payee": "short"}, "e2") == {"payee_in_mules": False}
        assert await _seen(v, {"payee": "long"}, "e3") == {"payee_in_mules": True}
        assert [m.value for m in await lists.show("mules")] == ["long"]
        assert set(await backend.hgetall("txl:{mules}")) == {"long"}
    state_backends.run(scenario)


@pytest.mark.parametrize("values, reason, ttl, message", [
    ([], None, None, "values: expected a non-empty list of strings"),
    (["a", 1], None, None, "values: each is a non-empty string"),
    (["x" * 1025], None, None, "values: each is a non-empty string"),
    (["a\x00b"], None, None, "values: a value may not contain NUL"),
    (["a"] * 1001, None, None, "values: at most 1000 per change"),
    (["a"], "r" * 501, None, "reason: expected a string of at most 500"),
    (["a"], None, 0, "ttl: expected 1 s to 400 days"),
    (["a"], None, 401 * 86400, "ttl: expected 1 s to 400 days"),
])
def test_bad_changes_are_refused_before_anything_is_written(values, reason, ttl, message):
    from state.memory import MemoryBackend, run_sync
    backend = MemoryBackend()
    with pytest.raises(ListError, match=message.replace("(", r"\(")):
        run_sync(LiveLists(backend).add("mules", values, actor="a", reason=reason, ttl_s=ttl))
    assert len(backend) == 0
