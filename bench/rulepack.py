"""The packs the benchmark runs: the shipped pack, a 500-rule pack of it plus generated rules
of the same shapes, and a challenger (the shipped pack, 20 generated rules and two counters of
its own); all independent of the time (hour and weekday) the benchmark runs at.

The shipped pack's night-time rules (``hour`` in their condition) step up or score payments
between 00:00 and 06:00 local time, so the decision mix — and with it the CPU per request —
would depend on when ``make bench`` runs; a rule reading ``weekday`` would depend on the day.
In the benchmark's copies every rule reading either is ``mode: shadow``: still evaluated on
every request (the engine's work is the same), never enforced.

The extra rules look like what a fraud team accumulates: per-segment amount limits, velocity
variants and shadow candidates. Most do not fire on ordinary traffic (as in production, where
most rules guard rare cases); the engine's cost grows mostly with rules that fire, which the
rule-stage micro-benchmark measures separately.

    python -m bench.rulepack OUT_DIR [TOTAL]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from rules import DEFAULT_PACK as DEFAULT

_TEMPLATES = (
    ("amount >= {a} and user_tx_24h > {n}", "score", 5),
    ("amount > {a} and currency == \"EUR\" and channel == \"web\"", "action", "review"),
    ("user_tx_1h > {n} and user_payees_24h > {m}", "score", 10),
    ("amount + user_amount_24h > {b} and user_devices_7d > {m}", "action", "require_otp"),
    ("country in [\"BR\", \"MX\", \"AR\"] and amount > {a}", "score", 15),
    ("device_users_24h > {m} and amount >= {a}", "action", "review"),
    ("matches(payee, \"GB%d%d{k}.*\") and amount > {a}", "score", 5),
    ("user_tx_30d < {n} and amount > {a}", "score", 5),
)


def generated(count: int) -> list[dict]:
    out = []
    for i in range(count):
        when, kind, value = _TEMPLATES[i % len(_TEMPLATES)]
        rule = {"id": f"GEN-{i:04d}", "description": f"generated rule {i}",
                "when": when.format(a=1000 + 37 * i, b=20000 + 101 * i, n=3 + i % 30,
                                    m=2 + i % 7, k="NWBK" if i % 2 else "BARC"),
                kind: value, "tags": ["generated"]}
        if i % 5 == 0:
            rule["mode"] = "shadow"
        out.append(rule)
    return out


# The built-ins that change with the clock (gateway.features).
_CLOCK = re.compile(r"\b(?:hour|weekday)\b")


def clock_free(text: str) -> str:
    """``text`` with every rule whose condition reads ``hour`` or ``weekday`` in shadow mode.
    Edited as text: the pack is YAML 1.2 as rules.yamlsrc reads it (``on:``, ``NO``), which a
    PyYAML round trip would turn into booleans."""
    blocks = re.split(r"(?m)^(?=\s*- id: )", text)
    for i, block in enumerate(blocks):
        when = re.search(r"(?m)^(\s+)when: (.*)$", block)
        if when is None or not _CLOCK.search(when.group(2)):
            continue
        mode = re.search(r"(?m)^(\s+)mode: .*$", block)
        if mode:
            blocks[i] = block[:mode.start()] + f"{mode.group(1)}mode: shadow" + block[mode.end():]
        else:
            blocks[i] = block[:when.end()] + f"\n{when.group(1)}mode: shadow" + block[when.end():]
    return "".join(blocks)


def build(out: Path, total: int = 0) -> int:
    """The shipped pack, clock-free, in ``out``; with ``total``, generated rules up to it."""
    out.mkdir(parents=True, exist_ok=True)
    shipped = 0
    for source in sorted(DEFAULT.glob("*.yaml")):
        if source.name.endswith("_test.yaml"):
            continue
        text = clock_free(source.read_text())
        (out / source.name).write_text(text)
        shipped += len(re.findall(r"(?m)^\s*- id: ", text))
    extra = generated(max(0, total - shipped))
    if extra:
        (out / "generated.yaml").write_text(yaml.safe_dump({"version": 1, "rules": extra},
                                                           sort_keys=False))
    return shipped + len(extra)


# What a fraud team's candidate typically adds: a shorter burst window and a filtered counter
# the champion does not keep (kept and read in the same round trip as the champion's).
_CHALLENGER = """\
version: 1
counters:
  - {name: user_tx_5m, key: [user_id], window: 5m, aggregate: count}
  - {name: user_large_24h, key: [user_id], window: 24h, aggregate: count, where: amount_base >= 500}
rules:
  - {id: CAND-001, description: a tighter burst, when: user_tx_5m > 3, action: require_otp}
  - {id: CAND-002, description: repeated large payments, when: user_large_24h > 2, score: 30}
"""


def build_challenger(out: Path) -> int:
    """A challenger for the shipped pack: it, 20 generated rules, and counters of its own."""
    shipped = build(out)
    total = build(out, shipped + 20)
    (out / "challenger.yaml").write_text(_CHALLENGER)
    return total + 2


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 500))
