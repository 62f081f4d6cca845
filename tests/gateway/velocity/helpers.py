"""Small builders shared by the velocity tests."""

from __future__ import annotations

from rules import CounterSpec
from rules.expressions import parse_when


def spec(name, key, aggregate, field=None, window_s=None, reset_on=None, on="attempt",
         where=None):
    return CounterSpec(name, tuple(key), aggregate, field, window_s, reset_on, on,
                       where=where, where_expr=None if where is None else parse_when(where, {}))


# A request as production runs it: one ``observe_once`` (no claims here), then what
# ``Recorder.settle`` does with its fate. Both return the values the rules saw.

async def forwarded(velocity, attrs: dict, event_id: str) -> dict:
    """A request forwarded upstream: its provisional counts stand, the late kinds are recorded."""
    observation = await velocity.observe_once(attrs, event_id, ())
    velocity.confirm(observation)
    if velocity.allow_after_forward:
        await velocity.record_allowed(attrs, event_id)
    return observation.features


async def refused(velocity, attrs: dict, event_id: str) -> dict:
    """A request not forwarded (denied, challenged, failed upstream): its provisional counts
    are withdrawn; its ``on: attempt`` counts stand."""
    observation = await velocity.observe_once(attrs, event_id, ())
    await velocity.withdraw(observation)
    return observation.features

