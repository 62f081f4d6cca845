"""The README's quick start, pasted into bash as a newcomer would: the block runs verbatim, and
ends with a signed payment that passed a TOTP step-up."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def blocks(info: str) -> list[str]:
    return re.findall(rf"^```{info}\n(.*?)^```", README.read_text(), re.S | re.M)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_prerequisites_install_every_tool_the_quick_start_calls():
    [install] = [b for b in blocks("sh") if "apt-get install" in b]
    [quickstart] = blocks("sh quickstart")
    packages = install.split("apt-get install -y", 1)[1].split("\n", 1)[0].split()
    # tool -> the Debian package that brings it
    for tool, package in {"redis-server": "redis-server", "oathtool": "oathtool",
                          "openssl": "openssl", "curl": "curl"}.items():
        assert re.search(rf"(^|[\s($]){tool}\b", quickstart), tool
        assert package in packages, package
    assert "make demo" in install   # creates .venv, which the quick start activates


def test_the_quick_start_runs_verbatim(tmp_path):
    for tool in ("redis-server", "oathtool", "openssl", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is installed by `make test` (system-deps)")
    [script] = blocks("sh quickstart")
    # The repository as the newcomer has it after `make demo`: this .venv, the examples.
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    (repo / "examples").symlink_to(ROOT / "examples")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXGATE_")}
    env.update(TMPDIR=str(scratch), PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    proc = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=repo, env=env, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(script, timeout=90)
        # The script's last line stops its background jobs: let them finish (the gateway
        # flushes its decision log on SIGTERM) before anything is read.
        wait_until(lambda: not _alive(proc.pid), timeout=20, what="the quick start's jobs")
    finally:
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)   # anything the script left running
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("txgate.yaml: OK: 1 routes, ")
    challenge, paid = json.loads(lines[-2]), json.loads(lines[-1])
    assert challenge["error"] == "insufficient_user_authentication"
    assert challenge["acr_values"] == "otp"
    assert paid["status"] == "accepted" and paid["amount"] == 300
    assert paid["txgate"] == {"decision": "allow", "tier": "otp", "risk_score": paid["txgate"]["risk_score"]}
    [workdir] = [d for d in scratch.iterdir() if (d / "txgate.yaml").exists()]
    records = [json.loads(line) for line in (workdir / "decisions.jsonl").read_text().splitlines()]
    decided = [r for r in records if r.get("type") != "audit"]   # credential changes too
    assert [(d["decision"], d["tier"]) for d in decided] == [("step_up", "client"), ("allow", "otp")]
    assert "Traceback" not in (workdir / "txgate.log").read_text()
