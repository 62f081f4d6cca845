"""Every example of docs/ runs, as written, against a real gateway.

A fenced block says how it runs in its info string (`` ```sh signed ``): the runner gives it
what its first comment says "comes from you" and checks the gateway's own decision log, not
the block's output. Kinds:

- ``signed`` (sh, python): KEYID and SECRET (HMAC client) or KEY (Ed25519 private key file),
  URL and BODY; the gateway must log an ``allow`` from KEYID.
- ``stepup`` (sh): a request got a TOTP challenge; CHALLENGE and CODE answer it.
- ``device`` (sh): a request got a device challenge; SIGNING_PAYLOAD is signed with phone.pem.
- ``shell`` (sh): the doc's shell blocks in order, in one directory holding a txgate.yaml on
  Redis, with the master key in the environment; every command must succeed.
- ``script`` (python): runs alone from the repository's root.
- ``config`` (yaml): ``txgate config check`` passes on it (routes against the shipped pack).
- ``reference`` (yaml): the keys and values of a txgate.yaml (or a part of one) validate.
- ``rules`` (yaml): a rule file, or a list of rules, loads next to the shipped pack's counters
  and lists (those the block does not define itself), against the routes of configuration.md.
- ``when`` (yaml): each ``when:`` line compiles as a rule in that same context.
- ``ruletest`` (yaml): a ``*_test.yaml`` case list passes against the shipped pack.
- ``prometheus`` (yaml): ``promtool check config`` accepts it beside the shipped alerts.
- ``rates`` (yaml): an exchange-rates file that ``gateway.rates.load_rates`` loads.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.config import ConfigError, parse_config
from rules.yamlsrc import load_yaml
from tests.fixtures.processes import TXGATE, wait_until
from tests.fixtures.signing import SignedClient

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
KINDS = {"sh": {"signed", "stepup", "device", "shell"}, "python": {"signed", "script"},
         "yaml": {"config", "reference", "rules", "when", "ruletest", "prometheus", "rates"}}
BIN = str(Path(sys.executable).parent)
RULES = """
version: 1
rules:
  - {id: D-OTP, description: mid-size payments need a code, when: amount >= 100 and amount < 1000, action: require_otp}
  - {id: D-DEV, description: large payments need the device, when: amount >= 1000, action: require_device}
"""


def examples() -> list[tuple[str, str, str, str]]:
    """(doc name, language, kind, code) of every fenced block with a language."""
    found = []
    for doc in DOCS:
        for lang, kind, code in re.findall(r"^```(\w+)[ ]?(\w*)\n(.*?)^```", doc.read_text(),
                                           re.S | re.M):
            found.append((doc.name, lang, kind, code))
    return found


def of_kind(kind: str) -> list:
    return [pytest.param(lang, code, id=f"{doc}-{lang}-{i}")
            for i, (doc, lang, k, code) in enumerate(examples()) if k == kind]


def test_every_shell_and_python_example_says_how_it_runs():
    for doc, lang, kind, code in examples():
        if lang in KINDS:
            assert kind in KINDS[lang], f"{doc}: a {lang} block without a runner kind:\n{code}"
        if lang in KINDS and kind:
            assert kind in KINDS[lang], f"{doc}: unknown kind {lang} {kind}"


def test_the_hmac_signer_script_is_the_documented_snippet():
    [snippet] = [code for _, lang, kind, code in examples()
                 if kind == "signed" and lang == "sh" and "HMAC" in code.upper() and "$SECRET" in code]
    script = (ROOT / "examples" / "sign-hmac.sh").read_text()
    for line in snippet.splitlines():
        if not line.startswith("#"):
            assert line.rstrip(" \\") in script, line


# -- a gateway the examples talk to ---------------------------------------------------------

class DocGateway:
    def __init__(self, gw, tmp: Path):
        self.gw = gw
        self.url = f"{gw.url}/v1/payments"
        self.hmac_secret = gw.admin_post("/admin/clients", {"id": "shop", "hmac": True}).json()["secret"]
        client_key = ed25519.Ed25519PrivateKey.generate()
        self.client_pem = tmp / "client.pem"
        self.client_pem.write_bytes(_private_pem(client_key))
        assert gw.admin_post("/admin/clients", {"id": "shop-ed", "public_key": _public_pem(client_key)}).status_code == 201
        uri = gw.admin_post("/admin/totp/alice").json()["otpauth_uri"]
        self.totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
        self.client = SignedClient("shop", self.hmac_secret)

    def body(self, amount) -> str:
        return json.dumps({"user_id": "alice", "amount": amount, "currency": "EUR",
                           "payee": {"iban": "DE89370400440532013000", "country": "DE"}},
                          separators=(",", ":"))

    def entries(self) -> list[dict]:
        return self.gw.decisions() if self.gw.decision_log.exists() else []

    def wait_for_entry(self, count: int) -> dict:
        wait_until(lambda: len(self.entries()) >= count, timeout=10, what="the decision log")
        return self.entries()[count - 1]

    def challenge(self, amount) -> dict:
        answer = self.client.request("POST", self.url, data=self.body(amount),
                                     headers={"Content-Type": "application/json"})
        assert answer.status_code == 401, answer.text
        return answer.json()


def _private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _route_example() -> dict:
    [code] = [code for doc, _, kind, code in examples() if kind == "config" and doc == "configuration.md"]
    return yaml.safe_load(code)["routes"][0]


@pytest.fixture
def docs_gateway(start_gateway, upstream, tmp_path) -> DocGateway:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    route = {**_route_example(), "upstream": upstream.url}   # the route configuration.md shows
    gw = start_gateway({"rules": {"path": str(tmp_path / "rules"), "reload": "off"},
                        "routes": [route]})
    return DocGateway(gw, tmp_path)


def _run(lang: str, code: str, env: dict, cwd) -> str:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), **env}
    if lang == "python":
        # The block's "comes from you" names, as globals.
        prelude = "".join(f"{k} = {v!r}\n" for k, v in env.items() if k.isupper() and k not in ("PATH", "HOME"))
        command = [sys.executable, "-c", prelude + code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- the kinds ------------------------------------------------------------------------------

@pytest.mark.parametrize("lang, code", of_kind("signed"))
def test_signed_examples_are_accepted(lang, code, docs_gateway, tmp_path):
    gw = docs_gateway
    hmac = "SECRET" in code
    env = {"KEYID": "shop" if hmac else "shop-ed", "URL": gw.url, "BODY": gw.body(12.5)}
    env.update({"SECRET": gw.hmac_secret} if hmac else {"KEY": str(gw.client_pem)})
    _run(lang, code, env, tmp_path)
    entry = gw.wait_for_entry(1)
    assert (entry["client_id"], entry["decision"]) == (env["KEYID"], "allow"), entry


@pytest.mark.parametrize("lang, code", of_kind("stepup"))
def test_step_up_examples_pass_the_challenge(lang, code, docs_gateway):
    gw = docs_gateway
    challenge = gw.challenge(150)
    assert challenge["acr_values"] == "otp"
    _run(lang, code, {"KEYID": "shop", "SECRET": gw.hmac_secret, "URL": gw.url,
                      "BODY": gw.body(150), "CHALLENGE": challenge["challenge"],
                      "CODE": gw.totp.now()}, ROOT)
    entry = gw.wait_for_entry(2)
    assert (entry["decision"], entry["tier"]) == ("allow", "otp"), entry


@pytest.mark.parametrize("lang, code", of_kind("device"))
def test_device_examples_sign_the_payload(lang, code, docs_gateway, tmp_path):
    gw = docs_gateway
    key = (ed25519.Ed25519PrivateKey.generate() if "pkeyutl" in code
           else ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "phone.pem").write_bytes(_private_pem(key))
    assert gw.gw.admin_post("/admin/devices/alice", {"public_key": _public_pem(key),
                                                     "name": "phone"}).status_code == 201
    challenge = gw.challenge(1500)
    assert challenge["acr_values"] == "device"
    signature = _run(lang, code, {"SIGNING_PAYLOAD": challenge["signing_payload"]}, tmp_path)
    answer = gw.client.request("POST", gw.url, data=gw.body(1500), headers={
        "Content-Type": "application/json", "Txgate-Challenge": challenge["challenge"],
        "Txgate-Device-Id": "phone", "Txgate-Device-Signature": signature.strip()})
    assert answer.status_code == 200, answer.text
    assert gw.wait_for_entry(2)["tier"] == "device"


@pytest.mark.parametrize("doc", sorted({doc for doc, _, kind, _ in examples() if kind == "shell"}))
def test_shell_examples_run_in_order(doc, redis_server, tmp_path):
    (tmp_path / "txgate.yaml").write_text(yaml.safe_dump(
        {"state": {"backend": "redis", "url": redis_server.url}}))
    env = {"TXGATE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    for _, lang, kind, code in examples():
        if kind == "shell" and _ == doc:
            _run(lang, code, env, tmp_path)


@pytest.mark.parametrize("lang, code", of_kind("script"))
def test_scripts_run(lang, code):
    assert _run(lang, code, {}, ROOT)


@pytest.mark.parametrize("lang, code", of_kind("config"))
def test_config_examples_pass_config_check(lang, code, tmp_path):
    (tmp_path / "txgate.yaml").write_text(code)
    result = subprocess.run([TXGATE, "config", "check"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "TXGATE_MASTER_KEY":
                                            base64.b64encode(os.urandom(32)).decode()})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("lang, code", of_kind("reference"))
def test_reference_examples_validate(lang, code):
    try:
        parse_config(_yaml(code), environ={})
    except ConfigError as exc:
        # Files named under /etc/ stand for the reader's own: only their absence is allowed.
        problems = [line for line in str(exc).splitlines() if ": no such file: /etc/" not in line]
        assert problems == [], problems


@pytest.mark.parametrize("lang, code", of_kind("rates"))
def test_rates_examples_load(lang, code, tmp_path):
    from gateway.rates import load_rates
    (tmp_path / "rates.yaml").write_text(code)
    assert set(load_rates(tmp_path / "rates.yaml", "EUR").rates) == set(load_yaml(code)[0])


# -- rule files -----------------------------------------------------------------------------

PACK = ROOT / "rules" / "default"


def _yaml(text: str):
    """YAML as txgate reads it (`on:` is a key, not true), as plain dicts and lists."""
    data, problems = load_yaml(text)
    assert problems == [], problems
    return json.loads(json.dumps(data))


def _context(block: dict) -> dict:
    """The shipped pack's counters and lists that the block does not define itself."""
    counters = _yaml((PACK / "counters.yaml").read_text())["counters"]
    lists = _yaml((PACK / "geo.yaml").read_text())["lists"]
    own_counters = {c["name"] for c in block.get("counters", [])}
    return {"counters": [c for c in counters if c["name"] not in own_counters],
            "lists": {k: v for k, v in lists.items() if k not in block.get("lists", {})}}


def _load_rule_file(block: dict, tmp_path):
    from gateway.routing import Router
    from rules import load_rules
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "context.yaml").write_text(yaml.safe_dump(_context(block)))
    (tmp_path / "rules" / "doc.yaml").write_text(yaml.safe_dump(block))
    routes = parse_config({"routes": [{**_route_example(), "name": "payments"}]}, {}).routes
    return load_rules(tmp_path / "rules", Router(routes, max_amount=1e10).attribute_types())


@pytest.mark.parametrize("lang, code", of_kind("rules"))
def test_rule_examples_load(lang, code, tmp_path):
    block = _yaml(code)
    if isinstance(block, list):
        block = {"rules": block}
    with _load_rule_file(block, tmp_path) as rules:
        assert {r.id for r in rules.rules} == {r["id"] for r in block.get("rules", [])}


@pytest.mark.parametrize("lang, code", of_kind("when"))
def test_condition_examples_compile(lang, code, tmp_path):
    conditions = [line.split("#")[0].removeprefix("when:").strip()
                  for line in code.splitlines() if line.startswith("when:")]
    assert conditions
    block = {"rules": [{"id": f"DOC-{i}", "description": "doc example", "when": when,
                        "action": "review"} for i, when in enumerate(conditions)]}
    with _load_rule_file(block, tmp_path) as rules:
        assert len(rules.rules) == len(conditions)


@pytest.mark.parametrize("lang, code", of_kind("ruletest"))
def test_rule_test_examples_pass_against_the_shipped_pack(lang, code, tmp_path):
    # The pack's rule files with the doc's cases (or scenarios) as their only test file, run by
    # the command a security team runs: cases and scenarios alike.
    for rule_file in PACK.glob("*.yaml"):
        if not rule_file.name.endswith("_test.yaml"):
            shutil.copy(rule_file, tmp_path / rule_file.name)
    (tmp_path / "doc_test.yaml").write_text(code)
    result = subprocess.run([TXGATE, "rules", "test", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


@pytest.mark.parametrize("lang, code", of_kind("prometheus"))
def test_prometheus_examples_pass_promtool(lang, code, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make test` (Debian package prometheus)"
    shutil.copy(ROOT / "metrics" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(code)
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
