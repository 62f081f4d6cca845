"""The stage micro-benchmarks (`make bench-micro`) run: each stage once, untimed. They broke
unnoticed once when the pipeline's exchange grew a field; nothing here asserts on time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_stage_benchmarks_run():
    result = subprocess.run([sys.executable, "-m", "pytest", "bench/micro", "-q", "-p",
                             "no:cacheprovider", "--benchmark-disable"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "6 passed" in result.stdout


def test_the_velocity_call_benchmark_runs():
    result = subprocess.run([sys.executable, "-m", "bench.velocity_cpu", "320"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("velocity call, client side: ")


def test_the_forwarding_client_benchmark_runs():
    result = subprocess.run([sys.executable, "-m", "bench.upstream_cpu", "320"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("aiohttp ClientSession: ") and lines[1].startswith("gateway.upstream: ")
