"""docs/operations-redis.md shows the Sentinel configuration the tests run, word for word."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.redis import SENTINEL_CONF, RedisSentinelGroup

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations-redis.md"


def test_the_sentinel_recipe_is_the_one_the_tests_run():
    text = DOC.read_text()
    assert f"```text\n{SENTINEL_CONF}```" in text
    assert f"sentinel: {{master: {RedisSentinelGroup.MASTER}," in text
    assert "--repl-diskless-sync-delay 0" in text and "--cluster-replicas 2" in text
