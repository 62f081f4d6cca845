"""Fixtures every test package may use: real processes (upstream, txgate) and real Redis."""

pytest_plugins = ["tests.fixtures.processes", "tests.fixtures.redis"]
