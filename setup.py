"""What pyproject.toml cannot say: the C extensions (the rule engine, a transaction's fact as the
engine reads it, and the replay's counters).

durable-rules 2.0.28 is built from the sources in vendor/ (patched to build and load on
Python 3.13) instead of from its PyPI sdist; docs/durable-rules.md says why and how to drop it.
"""
from pathlib import Path

from setuptools import Extension, setup

SRC = Path("vendor/durable-rules-2.0.28/src")

setup(ext_modules=[Extension(
    # The last name component must stay durable_rules_engine: rules.c's init function is
    # PyInit_durable_rules_engine.
    "rules.durable_rules_engine",
    sources=[str(SRC / "rulespy/rules.c")]
    + [str(SRC / "rules" / f"{name}.c") for name in ("json", "rete", "state", "events", "regex")],
    depends=sorted(str(p) for p in (SRC / "rules").glob("*.h")),
    include_dirs=[str(SRC / "rules")],
    define_macros=[("_GNU_SOURCE", None)],
    extra_compile_args=["-std=c99"],   # upstream's setup.py flags
), Extension(
    # A transaction's fact, written as the engine reads it (rules/ruleset.py, RuleSet.decide).
    "rules._fact", sources=["rules/fact.c"],
), Extension(
    # `rules replay --recompute`'s counters (gateway/backtest.py says why they are C).
    "gateway._backtest_counters", sources=["gateway/backtest_counters.c"],
)])
