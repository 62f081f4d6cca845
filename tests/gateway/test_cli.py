"""The `txgate` command as a user runs it: one clear line per mistake, never a traceback."""

from __future__ import annotations

import base64
import importlib.metadata
import os
import re
import subprocess
from pathlib import Path

import redis
import yaml

from tests.fixtures.processes import ROOT, TXGATE

KEY = base64.b64encode(b"m" * 32).decode()


def txgate(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TXGATE_MASTER_KEY", None) if env is None or "TXGATE_MASTER_KEY" not in env else None
    return subprocess.run([TXGATE, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=120)


def write_config(tmp_path, data: dict) -> str:
    path = tmp_path / "txgate.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def assert_clean_error(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("txgate: ") for line in lines)
    return lines


def test_config_errors_name_the_file_and_key_path(tmp_path):
    config = write_config(tmp_path, {"routes": [{"name": "p", "match": {"path": "/p"}, "upstream": "nope"}]})
    lines = assert_clean_error(txgate("run", "--config", config, env={"TXGATE_MASTER_KEY": KEY}))
    assert lines == [f"txgate: {config}:5: routes[0].upstream: not a URL (expected http://host:port)"]


def test_config_check_reports_every_problem_with_its_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("version: 1\nrules:\n  - id: X-1\n    when: amount > 10 and colour == 'red'\n"
                                  "    action: deny\n")
    config = tmp_path / "txgate.yaml"
    config.write_text("rules: {path: rules}\n"
                      "decision_log: {path: logs/decisions.jsonl}\n"
                      "routes:\n"
                      "  - name: pay\n"
                      "    match: {path: /pay}\n"
                      "    upstream: http://127.0.0.1:9000\n"
                      "    transaction: {amount: json:$.amount}\n")
    lines = assert_clean_error(txgate("config", "check", "--config", str(config)))
    assert lines[0] == f"txgate: {rules / 'r.yaml'}:4: unknown attribute 'colour': not a transaction field, built-in or counter"
    assert lines[1].startswith(f"txgate: {config}:1: no master key: set TXGATE_MASTER_KEY")
    assert lines[2] == (f"txgate: {config}:2: decision_log.path: directory {tmp_path / 'logs'} "
                        "does not exist (txgate does not create it)")
    assert len(lines) == 3
    # Fixed, it says so and exits 0; the running server is not needed.
    (rules / "r.yaml").write_text("version: 1\nrules:\n  - id: X-1\n    when: amount > 10\n    action: deny\n")
    (tmp_path / "logs").mkdir()
    ok = txgate("config", "check", "--config", str(config), env={"TXGATE_MASTER_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith(f"{config}: OK: 1 routes, 1 rules (version ")
    # Bad keys and values stop at the file: every one of them, each with its line.
    config.write_text("routes:\n  - name: pay\n    match: {path: /pay, methods: [GTE]}\n"
                      "    upstream: http://h:port\n    colour: red\n")
    lines = assert_clean_error(txgate("config", "check", "--config", str(config)))
    assert [line.split(": ")[1] for line in lines] == [f"{config}:3", f"{config}:4", f"{config}:5"]


def test_the_decision_log_directory_is_never_created(tmp_path):
    config = write_config(tmp_path, {"decision_log": {"path": "nowhere/decisions.jsonl"},
                                     "routes": [], "listen": "127.0.0.1:0",
                                     "admin_listen": "127.0.0.1:0"})
    lines = assert_clean_error(txgate("run", "--config", config, env={"TXGATE_MASTER_KEY": KEY}))
    assert lines == [f"txgate: cannot open {tmp_path / 'nowhere' / 'decisions.jsonl'}: "
                     "No such file or directory"]
    assert not (tmp_path / "nowhere").exists()


def test_version():
    result = txgate("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"txgate {importlib.metadata.version('txgate')} (Python ")


def test_workers_need_the_redis_backend(tmp_path):
    config = write_config(tmp_path, {})
    lines = assert_clean_error(txgate("run", "--config", config, "--workers", "2",
                                      env={"TXGATE_MASTER_KEY": KEY}))
    assert "needs state.backend: redis" in lines[0]


def test_missing_master_key_is_one_clear_line(tmp_path):
    config = write_config(tmp_path, {})
    lines = assert_clean_error(txgate("run", "--config", config))
    assert "no master key" in lines[0] and "TXGATE_MASTER_KEY" in lines[0]


def test_rules_that_do_not_load_stop_the_start(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text("version: 1\nrules:\n  - id: X-1\n    when: amount >\n    action: deny\n")
    config = write_config(tmp_path, {"rules": {"path": str(rules)}, "listen": "127.0.0.1:0",
                                     "admin_listen": "127.0.0.1:0"})
    lines = assert_clean_error(txgate("run", "--config", config, env={"TXGATE_MASTER_KEY": KEY}))
    assert any(f"{rules / 'bad.yaml'}:4:" in line for line in lines)


def test_rates_that_do_not_load_stop_the_start_and_the_rule_tests(tmp_path):
    rates = tmp_path / "rates.yaml"
    rates.write_text("USD: {rate: 0.9, date: 2026-01-02}\nGBP: {rate: 0, date: 2026-01-02}\n")
    config = write_config(tmp_path, {"currencies": {"rates": str(rates)}, "listen": "127.0.0.1:0",
                                     "admin_listen": "127.0.0.1:0"})
    lines = assert_clean_error(txgate("run", "--config", config, env={"TXGATE_MASTER_KEY": KEY}))
    assert f"txgate: {rates}:2: GBP: rate must be a positive number" in lines
    lines = assert_clean_error(txgate("rules", "test", "rules/default", "--config", config))
    assert lines == [f"txgate: {rates}:2: GBP: rate must be a positive number"]


def test_rules_check_and_test_on_the_shipped_pack():
    check = txgate("rules", "check", "rules/default", "--config", "examples/txgate.yaml")
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[-1] == ("attribute names checked against the transaction "
                                             "fields of examples/txgate.yaml")
    # Scenarios run too, and with a config through the routes' own extraction (min_tier included);
    # every rule has a case or a scenario step where it matches.
    for extra in ((), ("--config", "examples/txgate.yaml")):
        test = txgate("rules", "test", "rules/default", "--require-coverage", *extra)
        assert test.returncode == 0, test.stdout + test.stderr
        coverage, kinds, last = test.stdout.strip().splitlines()[-3:]
        assert re.fullmatch(r"coverage: every rule \(\d{2}\) has a positive case", coverage)
        passed, failed = last.split(", ")
        assert failed == "0 failed" and int(passed.split()[0]) >= 150
        assert re.fullmatch(r"cases: \d{3} passed, 0 failed; scenarios: \d{2} passed, 0 failed, .*", kinds)


TYPO = """\
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
rules:
  - {id: T-1, description: burst, when: user_tx_1hh > 10, action: deny}
  - {id: T-2, description: large, when: amount > 1000 and hour < 5, score: 30}
"""


def test_rules_check_without_a_config_names_what_it_could_not_check(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(TYPO)
    alone = txgate("rules", "check", "rules", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines()[-1] == (
        "not checked (no config: give --config FILE, or run where the gateway's txgate.yaml is): "
        "amount, user_id, user_tx_1hh (did you mean user_tx_1h?)")
    # A config without transaction fields checks nothing either, and says so.
    (tmp_path / "txgate.yaml").write_text("routes: []\n")
    empty = txgate("rules", "check", "rules", cwd=tmp_path)
    assert empty.stdout.splitlines()[-1].startswith(
        "not checked (txgate.yaml declares no transaction fields): amount, user_id, user_tx_1hh")
    # The gateway's config where it would find it (./txgate.yaml): the typo is an error.
    (tmp_path / "txgate.yaml").write_text(yaml.safe_dump({"routes": [{
        "name": "pay", "match": {"path": "/pay"}, "upstream": "http://127.0.0.1:9000",
        "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount"}}]}))
    found = txgate("rules", "check", "rules", cwd=tmp_path)
    assert found.returncode == 1
    assert found.stderr.splitlines() == [f"{Path('rules') / 'r.yaml'}:5: unknown attribute "
                                         "'user_tx_1hh': not a transaction field, built-in or counter"]
    (rules / "r.yaml").write_text(TYPO.replace("user_tx_1hh", "user_tx_1h"))
    fixed = txgate("rules", "check", "rules", cwd=tmp_path)
    assert fixed.returncode == 0 and fixed.stdout.splitlines()[-1] == (
        "attribute names checked against the transaction fields of txgate.yaml")


def test_rules_test_prints_coverage_and_can_require_it(tmp_path):
    (tmp_path / "r.yaml").write_text(TYPO.replace("user_tx_1hh", "user_tx_1h"))
    (tmp_path / "r_test.yaml").write_text(
        "- {name: burst, features: {user_tx_1h: 11}, expect: {rules: [T-1]}}\n"
        "- {name: not large, transaction: {amount: 10, hour: 3}, expect: {not_rules: [T-2]}}\n"
        "- name: large at night, shown by a scenario only while it is pending\n"
        "  pending: not written yet\n"
        "  start: '2026-01-05T03:00:00Z'\n"
        "  steps: [{transaction: {user_id: u1, amount: 10}, expect: {rules: [T-2]}}]\n")
    plain = txgate("rules", "test", str(tmp_path))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert plain.stdout.splitlines()[-3] == (
        "coverage: 1 of 2 rules have a positive case; without one: T-2")
    required = txgate("rules", "test", str(tmp_path), "--require-coverage")
    assert required.returncode == 1
    assert required.stdout.splitlines()[-3:] == [
        "FAIL coverage: 1 of 2 rules have a positive case; without one: T-2",
        "cases: 2 passed, 0 failed; scenarios: 0 passed, 0 failed, 1 pending",
        "2 passed, 1 failed"]
    with (tmp_path / "r_test.yaml").open("a") as f:
        f.write("- {name: large at night, transaction: {amount: 1001, hour: 3}, expect: {rules: [T-2]}}\n")
    covered = txgate("rules", "test", str(tmp_path), "--require-coverage")
    assert covered.returncode == 0, covered.stdout
    assert covered.stdout.splitlines()[-3] == "coverage: every rule (2) has a positive case"


def test_auth_commands_manage_credentials_on_redis(tmp_path, redis_server):
    config = write_config(tmp_path, {"state": {"backend": "redis", "url": redis_server.url}})
    env = {"TXGATE_MASTER_KEY": KEY}
    added = txgate("auth", "add-client", "shop-1", "--hmac", "--config", config, env=env)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert len(secret) >= 32 and " " not in secret
    raw = redis.Redis(port=redis_server.port)
    dump = b"".join(raw.dump(k) or b"" for k in raw.keys("*"))
    assert dump and secret.encode() not in dump   # encrypted at rest
    enrolled = txgate("auth", "enroll-totp", "alice", "--config", config, env=env)
    assert enrolled.returncode == 0 and "otpauth://totp/" in enrolled.stdout
    again = txgate("auth", "enroll-totp", "alice", "--config", config, env=env)
    assert "already enrolled" in assert_clean_error(again)[0] and "--force" in again.stderr
    forced = txgate("auth", "enroll-totp", "alice", "--force", "--config", config, env=env)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split("secret=")[1][:32] != enrolled.stdout.split("secret=")[1][:32]
    listed = txgate("auth", "list", "--config", config, env=env)
    assert "shop-1" in listed.stdout and "alice" in listed.stdout and secret not in listed.stdout
    revoked = txgate("auth", "revoke", "client", "shop-1", "--config", config, env=env)
    assert revoked.returncode == 0
    again = txgate("auth", "revoke", "client", "nobody", "--config", config, env=env)
    assert_clean_error(again)


def test_auth_commands_refuse_the_memory_backend(tmp_path):
    config = write_config(tmp_path, {})
    lines = assert_clean_error(txgate("auth", "list", "--config", config, env={"TXGATE_MASTER_KEY": KEY}))
    assert "state.backend: redis" in lines[0]


def test_demo_once_prints_its_table_and_leaves_nothing_unless_kept(tmp_path):
    result = txgate("demo", "--once", env={"COLUMNS": "200", "TMPDIR": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
    kept = txgate("demo", "--once", "--keep", env={"COLUMNS": "300", "TMPDIR": str(tmp_path)})
    assert kept.returncode == 0, kept.stderr
    [workdir] = tmp_path.iterdir()
    log = workdir / "decisions.jsonl"
    assert f"kept: decision log {log}" in kept.stdout.replace("\n", "")
    assert len(log.read_text().splitlines()) >= 8
    assert result.returncode == 0, result.stderr
    assert "txgate decisions" in result.stdout
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 5}
    assert " 201 " in rows["normal payment"] and "allow" in rows["normal payment"]
    assert "step_up → otp" in rows["300 EUR to a new payee"]
    assert " 201 " in rows["answered with TOTP"] and " otp " in rows["answered with TOTP"]
    assert "step_up → device" in rows["1800 EUR transfer"]
    assert " 201 " in rows["device-signed"] and " device " in rows["device-signed"]
    assert " 403 " in rows["sanctioned country"] and "deny" in rows["sanctioned country"]
    assert " 400 " in rows["malformed amount"]
    assert " 403 " in rows["burst 12/12"]


def test_replay_a_real_decision_log_under_a_candidate_pack(tmp_path):
    demo = txgate("demo", "--once", "--keep", env={"COLUMNS": "300", "TMPDIR": str(tmp_path)})
    log = next(line.split()[3] for line in demo.stdout.splitlines()
               if line.startswith("kept: decision log "))
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    for source in (ROOT / "rules" / "default").glob("*.yaml"):
        text = source.read_text()
        if source.name == "velocity.yaml":   # a stricter burst limit
            text = text.replace("when: user_tx_1h > 10\n", "when: user_tx_1h > 8\n")
        (candidate / source.name).write_text(text)
    result = txgate("rules", "replay", "--log", log, "--rules", str(candidate), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "2 decisions change" in result.stdout
    # The demo's enrolments are audit lines in the same log: not decisions, not "skipped".
    audit = [n for n, line in enumerate(Path(log).read_text().splitlines(), 1)
             if '"type":"audit"' in line]
    assert audit and not any(f"skipped line {n}:" in result.stdout for n in audit)
    assert any(line.split() == ["require_otp", "deny", "2"] for line in result.stdout.splitlines())
    assert any(line.split()[:4] == ["VEL-001", "2", "4", "+2"] for line in result.stdout.splitlines())


def test_rules_check_with_a_config_checks_attribute_names(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("version: 1\nrules:\n  - {id: T-1, description: d, when: amuont > 5, action: deny}\n")
    config = write_config(tmp_path, {"rules": {"path": str(rules)}, "routes": [
        {"name": "p", "match": {"path": "/p"}, "upstream": "http://127.0.0.1:1",
         "transaction": {"amount": "json:$.amount"}}]})
    result = txgate("rules", "check", "--config", config)
    assert result.returncode == 1
    assert f"{rules / 'r.yaml'}:3: unknown attribute 'amuont'" in result.stderr


def test_config_check_loads_the_challenger_too(tmp_path):
    for name, when in (("rules", "amount > 10"), ("candidate", "amount > ")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "r.yaml").write_text(f"version: 1\nrules:\n  - id: X-1\n    when: {when}\n"
                                                "    action: deny\n")
    config = tmp_path / "txgate.yaml"
    config.write_text("rules: {path: rules, challenger: candidate}\n"
                      "decision_log: {path: null}\n"
                      "routes:\n"
                      "  - name: pay\n"
                      "    match: {path: /pay}\n"
                      "    upstream: http://127.0.0.1:9000\n"
                      "    transaction: {amount: json:$.amount}\n")
    env = {"TXGATE_MASTER_KEY": KEY}
    lines = assert_clean_error(txgate("config", "check", "--config", str(config), env=env))
    assert len(lines) == 1 and lines[0].startswith(
        f"txgate: {tmp_path / 'candidate' / 'r.yaml'}:4: bad when: syntax error")
    (tmp_path / "candidate" / "r.yaml").write_text(
        "version: 1\nrules:\n  - {id: X-1, when: amount > 5, action: review}\n")
    ok = txgate("config", "check", "--config", str(config), env=env)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"OK: 1 routes, 1 rules \(version \w+\), challenger 1 rules \(version \w+\)$",
                     ok.stdout.strip())
