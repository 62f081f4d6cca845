"""Shared pieces of the hardening suite: a small rule pack, budgets for the fuzzers."""

from __future__ import annotations

import os

import pytest

# Examples per fuzz target: small in `make test`, large in `make fuzz`.
FUZZ_EXAMPLES = int(os.environ.get("TXGATE_FUZZ_EXAMPLES", "60"))

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_amount_1h, key: [user_id], window: 1h, aggregate: sum, field: amount, on: allow}
rules:
  - {id: H-VEL, description: burst, when: user_tx_1h > 1000000, action: deny}
  - {id: H-BIG, description: large amount, when: amount > 100000, action: deny}
  - {id: H-SCORE, description: mid amount, when: amount > 5000, score: 10}
"""


@pytest.fixture
def rules_dir(tmp_path):
    path = tmp_path / "rules"
    path.mkdir(exist_ok=True)
    (path / "main.yaml").write_text(RULES)
    return path


def rules_config(rules_dir) -> dict:
    return {"path": str(rules_dir), "reload": "off"}


def pay_route(upstream_url: str, **extra) -> dict:
    """A payments route whose transaction declares every attribute RULES uses."""
    return {"name": "pay", "match": {"path": "/pay", "methods": ["POST"]},
            "upstream": upstream_url,
            "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                            "currency": "json:$.currency"}, **extra}
