"""The deploy pieces: the systemd unit passes `systemd-analyze verify`; the Containerfile runs
as a non-root user with a health check, and its build context installs txgate with its rule
pack (the image itself is built only where a container engine answers)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "txgate.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
TXGATE = Path(sys.executable).with_name("txgate")


def test_the_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that the commands exist: point them at this checkout's txgate.
    text = UNIT.read_text()
    assert "/opt/txgate/.venv/bin/txgate run --config /etc/txgate/txgate.yaml" in text
    unit = tmp_path / "txgate.service"
    unit.write_text(text.replace("/opt/txgate/.venv/bin/txgate", str(TXGATE)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values, printing them: any line about the unit fails.
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if str(unit) in line or "txgate.service" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


def test_the_unit_reloads_with_sighup_and_stops_within_the_grace():
    fields = dict(re.findall(r"^(\w+)=(.*)$", UNIT.read_text(), re.M))
    assert fields["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(fields["TimeoutStopSec"]) > 30          # limits.shutdown_grace_s defaults to 30
    assert fields["User"] == "txgate" and fields["LogsDirectory"] == "txgate"
    assert fields["ExecStartPre"].endswith("config check --config /etc/txgate/txgate.yaml")


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def test_the_containerfile_runs_unprivileged_with_a_health_check():
    steps = _instructions()
    names = [name for name, _ in steps]
    users = [arg for name, arg in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert names.index("USER") < names.index("ENTRYPOINT")
    [health] = [arg for name, arg in steps if name == "HEALTHCHECK"]
    assert "/healthz" in health
    for name, arg in steps:
        if name == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_build_context_installs_txgate_with_its_rule_pack(tmp_path):
    # What the image's `pip install .` sees: exactly the COPY sources.
    context = tmp_path / "context"
    context.mkdir()
    for name, arg in _instructions():
        if name == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, target)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(context)], check=True, capture_output=True, timeout=300)
    probe = ("from gateway.config import DEFAULT_RULES\nfrom rules import load_rules\n"
             "import gateway\nassert gateway.__file__.startswith(%r)\n"
             "with load_rules(DEFAULT_RULES) as rs: print(len(rs.rules))\n" % str(site))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 50


def test_the_image_builds_where_an_engine_answers():
    for engine in ("podman", "docker"):
        path = shutil.which(engine)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            break
    else:
        pytest.skip("no container engine answers here: deploy/Containerfile is documented as unbuilt")
    result = subprocess.run([path, "build", "-f", str(CONTAINERFILE), "-t", "txgate-test", str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
