"""Rule files: loader, expression compiler, engine, rule tests and replay. Imports nothing from gateway/ or auth/."""
from rules.counters import CounterSpec
from rules.decision import ACTIONS, Decision, Hit
from rules.engine import MAX_NUMBER
from rules.kinds import TYPE_KIND
from rules.loader import RuleLoadError, load_rules
from rules.ruleset import MAX_STRING, Rule, RuleSet

__all__ = ["ACTIONS", "MAX_NUMBER", "MAX_STRING", "TYPE_KIND", "CounterSpec", "Decision", "Hit",
           "Rule", "RuleLoadError", "RuleSet", "load_rules"]
