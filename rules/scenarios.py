"""Scenario tests: a sequence of transactions over time, checked step by step.

A `*_test.yaml` item with `steps:` is a scenario. Unlike a case, it gives no feature values:
the counters produce them, because the gateway runs the steps through its real velocity code
(``gateway.scenario_runner``). This module only reads the format; it needs no gateway.
"""
from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from rules.decision import ACTIONS
from rules.yamlsrc import LineDict, line_of

SCENARIO_KEYS = {"name", "route", "start", "transaction", "steps", "pending", "rates",
                 "currency_without_rate", "config_only"}
STEP_KEYS = {"at", "transaction", "passed", "repeat", "every", "expect"}
STEP_EXPECT_KEYS = {"action", "rules", "not_rules", "score", "set_by", "outcome", "tier"}
# What the gateway did in the end, as the decision log's `decision` says it.
OUTCOMES = ("allow", "review", "step_up", "deny", "error")
TIERS = ("client", "otp", "device")
# A Monday at noon UTC: daytime, so the night rules stay quiet unless a scenario asks.
DEFAULT_START = "2026-01-05T12:00:00Z"
MAX_REPEAT = 1000
_OFFSET = re.compile(r"^\+((?:[0-9]+[smhd])+)$")
_PART = re.compile(r"([0-9]+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Step:
    where: str                       # FILE:LINE
    at_s: int                        # seconds after the scenario's start
    transaction: dict
    passed: str | None               # the highest tier the user can prove when challenged
    repeat: int
    every_s: int
    action: str | None
    rules: tuple[str, ...]
    not_rules: tuple[str, ...]
    score: float | None
    outcome: str | None
    tier: str | None                 # the tier the request ended with
    set_by: str | None = None        # the first decision's set_by, exactly


@dataclass(frozen=True)
class Scenario:
    name: str
    where: str
    route: str | None
    start: float                     # epoch seconds of `at: +0s`
    steps: tuple[Step, ...]
    pending: str | None              # why it is expected to fail for now
    rates: dict | None = None        # currency -> rate to the base: replaces the rates file
    currency_without_rate: str | None = None   # replaces the route's policy
    config_only: bool = False        # means something only through a config's routes


def is_scenario(item) -> bool:
    return isinstance(item, LineDict) and "steps" in item


def parse_offset(text) -> int:
    """`+5m` -> 300, `+1d2h` -> 93600; ValueError otherwise."""
    m = _OFFSET.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"at {text!r} is not + then numbers with s, m, h or d (e.g. +5m, +1d2h)")
    return sum(int(n) * _UNIT[unit] for n, unit in _PART.findall(m.group(1)))


def _start(text) -> float:
    try:
        return calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise ValueError(f"start {text!r} is not a UTC time like {DEFAULT_START}") from None


def _ids(value) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return tuple(value)
    return None


def read_scenario(file, item: LineDict, ln: int) -> tuple[Scenario | None, list[str]]:
    """One scenario from its YAML mapping, or its errors as FILE:LINE: message."""
    where = f"{file}:{ln}"
    errors = [f"{file}:{line_of(item, k)}: unknown scenario key {k!r}" for k in item
              if k not in SCENARIO_KEYS]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        errors.append(f"{where}: scenario needs a name")
    start = 0.0
    try:
        start = _start(item.get("start", DEFAULT_START))
    except ValueError as e:
        errors.append(f"{file}:{line_of(item, 'start')}: {e}")
    common = item.get("transaction", {})
    if not isinstance(common, dict):
        errors.append(f"{file}:{line_of(item, 'transaction')}: transaction must be a mapping")
        common = {}
    pending = item.get("pending")
    if pending is not None and (not isinstance(pending, str) or not pending):
        errors.append(f"{file}:{line_of(item, 'pending')}: pending is the reason, as text")
    rates = item.get("rates")
    if rates is not None and (not isinstance(rates, dict) or not all(
            isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
            for k, v in rates.items())):
        errors.append(f"{file}:{line_of(item, 'rates')}: rates maps currency codes to positive numbers")
    unrated = item.get("currency_without_rate")
    if unrated is not None and unrated not in ("refuse", "high_risk"):
        errors.append(f"{file}:{line_of(item, 'currency_without_rate')}: currency_without_rate must be refuse or high_risk")
    config_only = item.get("config_only", False)
    if not isinstance(config_only, bool):
        errors.append(f"{file}:{line_of(item, 'config_only')}: config_only is true or false")
    raw = item.get("steps")
    if not isinstance(raw, list) or not raw:
        errors.append(f"{file}:{line_of(item, 'steps')}: steps must be a non-empty list")
        raw = []
    steps, previous = [], 0
    for step_item, step_ln in zip(raw, getattr(raw, "item_lines", [ln] * len(raw))):
        step, problems = _read_step(file, step_item, step_ln, common, previous)
        errors += problems
        if step is not None:
            steps.append(step)
            previous = step.at_s + (step.repeat - 1) * step.every_s
    if errors:
        return None, errors
    return Scenario(name, where, item.get("route"), start, tuple(steps), pending, rates,
                    unrated, config_only), []


def _read_step(file, item, ln: int, common: dict, previous: int) -> tuple[Step | None, list[str]]:
    where = f"{file}:{ln}"
    if not isinstance(item, LineDict):
        return None, [f"{where}: a step is a mapping with at, transaction, expect"]
    errors = [f"{file}:{line_of(item, k)}: unknown step key {k!r}" for k in item if k not in STEP_KEYS]
    at_s = previous
    if "at" in item:
        try:
            at_s = parse_offset(item["at"])
        except ValueError as e:
            errors.append(f"{file}:{line_of(item, 'at')}: {e}")
        if at_s < previous:
            errors.append(f"{file}:{line_of(item, 'at')}: at {item['at']} is before the previous step")
    transaction = item.get("transaction", {})
    if not isinstance(transaction, dict):
        errors.append(f"{file}:{line_of(item, 'transaction')}: transaction must be a mapping")
        transaction = {}
    passed = item.get("passed")
    if passed is not None and passed not in TIERS[1:]:
        errors.append(f"{file}:{line_of(item, 'passed')}: passed must be otp or device")
    repeat = item.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
        errors.append(f"{file}:{line_of(item, 'repeat')}: repeat must be a whole number from 1 to {MAX_REPEAT}")
        repeat = 1
    every_s = 0
    if "every" in item:
        try:
            every_s = parse_offset(f"+{item['every']}")
        except ValueError:
            errors.append(f"{file}:{line_of(item, 'every')}: every {item['every']!r} is not numbers with s, m, h or d (e.g. 1m)")
    expect = item.get("expect", LineDict())
    if not isinstance(expect, LineDict):
        errors.append(f"{file}:{line_of(item, 'expect')}: expect must be a mapping")
        expect = LineDict()
    errors += [f"{file}:{line_of(expect, k)}: unknown expect key {k!r}" for k in expect
               if k not in STEP_EXPECT_KEYS]
    if "action" in expect and expect["action"] not in ACTIONS:
        errors.append(f"{file}:{line_of(expect, 'action')}: action {expect['action']!r} is not one of {', '.join(ACTIONS)}")
    if "outcome" in expect and expect["outcome"] not in OUTCOMES:
        errors.append(f"{file}:{line_of(expect, 'outcome')}: outcome {expect['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    if "tier" in expect and expect["tier"] not in TIERS:
        errors.append(f"{file}:{line_of(expect, 'tier')}: tier {expect['tier']!r} is not one of {', '.join(TIERS)}")
    lists = {}
    for k in ("rules", "not_rules"):
        lists[k] = _ids(expect.get(k, []))
        if lists[k] is None:
            errors.append(f"{file}:{line_of(expect, k)}: expect.{k} must be a list of rule ids")
    score = expect.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        errors.append(f"{file}:{line_of(expect, 'score')}: expect.score must be a number")
    set_by = expect.get("set_by")
    if set_by is not None and (not isinstance(set_by, str) or not set_by):
        errors.append(f"{file}:{line_of(expect, 'set_by')}: expect.set_by is text, as the "
                      "decision log writes it (\"rule ATO-004\", \"score 130 >= deny 100\")")
    if errors:
        return None, errors
    return Step(where, at_s, {**common, **transaction}, passed, repeat, every_s,
                expect.get("action"), lists["rules"], lists["not_rules"], score,
                expect.get("outcome"), expect.get("tier"), set_by), []
