"""Rule files: loader, expression compiler, engine, rule tests and replay. Imports nothing from gateway/ or auth/."""
from pathlib import Path

from rules.counters import CounterSpec
from rules.decision import ACTIONS, Decision, Hit
from rules.engine import MAX_NUMBER
from rules.kinds import TYPE_KIND
from rules.loader import RuleLoadError, load_rules
from rules.ruleset import MAX_STRING, Rule, RuleSet

# The pack shipped inside the package: found wherever txgate is installed or run from.
DEFAULT_PACK = Path(__file__).resolve().parent / "default"

__all__ = ["ACTIONS", "DEFAULT_PACK", "MAX_NUMBER", "MAX_STRING", "TYPE_KIND", "CounterSpec", "Decision", "Hit",
           "Rule", "RuleLoadError", "RuleSet", "load_rules"]
