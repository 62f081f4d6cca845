"""Locating the Prometheus binaries that the metrics tests run for real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "metrics" / "prometheus"
DASHBOARD = ROOT / "metrics" / "grafana" / "txgate.json"


def require_binary(name: str) -> str:
    """The path of ``name``; skip when it is missing on a developer machine, fail in CI.

    `make test` installs the Debian package `prometheus` (system-deps) before running pytest,
    so in CI a missing binary is a broken setup, never a reason to skip these checks.
    """
    path = shutil.which(name)
    if path:
        return path
    message = (f"`{name}` not found: install the Debian package `prometheus` "
               "(`make system-deps` does it)")
    if os.environ.get("CI"):
        pytest.fail(message + "; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(message)
