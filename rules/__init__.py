"""Rule files: loader, expression compiler, engine, rule tests and replay. Imports nothing from gateway/ or auth/."""
from rules.counters import CounterSpec
from rules.decision import ACTIONS, Decision, Hit
from rules.loader import RuleLoadError, load_rules
from rules.ruleset import Rule, RuleSet

__all__ = ["ACTIONS", "CounterSpec", "Decision", "Hit", "Rule", "RuleLoadError", "RuleSet", "load_rules"]
