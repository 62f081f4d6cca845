"""The shipped example configuration stays valid and fits the shipped rule pack."""

from pathlib import Path

from gateway.config import load_config
from gateway.routing import Router
from rules import load_rules

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads_and_the_default_pack_fits_its_routes():
    config = load_config(ROOT / "examples" / "txgate.yaml", environ={})
    assert [r.name for r in config.routes] == ["payments", "transfers", "loans", "wealth", "accounts"]
    # Attribute names and literal types of every rule are checked against the routes' fields.
    with load_rules(config.rules.path, Router.of(config).attribute_types()) as rules:
        assert len(rules.rules) >= 50
