"""Small builders shared by the velocity tests."""

from __future__ import annotations

from rules import CounterSpec


def spec(name, key, aggregate, field=None, window_s=None, reset_on=None, on="attempt"):
    return CounterSpec(name, tuple(key), aggregate, field, window_s, reset_on, on)


def run_now(coro):
    """Drive a coroutine that never suspends (memory backend) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("coroutine suspended: the memory backend must not await")
