"""Fuzzing the parsers that see attacker-controlled bytes, in process (fast, many inputs):
the RFC 9421 verifier, transaction extraction, and the rule loader and expression compiler.

Each property is "a clear refusal or a valid result": AuthError 401, InvalidRequest 400,
RuleLoadError; never another exception, never a hang (hypothesis' deadline is the bound).
The number of inputs each target tried is printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth.credentials import CredentialStore
from auth.errors import AuthError
from auth.keys import MasterKey
from auth.signatures import content_digest
from gateway.config import parse_config
from gateway.currencies import ISO_4217
from gateway.errors import InvalidRequest
from gateway.transaction import TransactionExtractor
from rules import Decision, RuleLoadError, load_rules
from state.memory import MemoryBackend
from tests.auth.conftest import accepting
from tests.hardening.conftest import FUZZ_EXAMPLES

TRIED = {"signatures": 0, "transactions": 0, "rule files": 0, "expressions": 0}
FUZZ = settings(max_examples=FUZZ_EXAMPLES * 5, deadline=5000,   # 5 s: "does not hang"
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nin-process fuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in TRIED.items()))


# ---------------------------------------------------------------- RFC 9421 verifier

SECRET = "fuzz-secret-" + "s" * 32
URL = "https://gw.example:8443/v1/payments?x=1"
COMPONENTS = ["@method", "@target-uri", "@authority", "@path", "@query", "@scheme",
              "@request-target", "@status", "@signature-params", "content-digest",
              "content-type", "x-Upper", "host", "signature", "@query-param"]
sf_token = st.from_regex(r"[a-z*][a-z0-9_\-.:/*]{0,12}", fullmatch=True)
sf_string = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
param_value = st.one_of(
    st.integers(-2**63, 2**63), st.just(int(time.time())), sf_string.map(lambda s: '"%s"' % (
        s.replace("\\", "\\\\").replace('"', '\\"'))),
    sf_token, st.sampled_from(["?0", "?1", "1.5", ":AAAA:", "hmac-sha256", '"hmac-sha256"',
                               '"ed25519"', '"rsa-pss-sha512"', '"app"', "-0", "1e400"]))
param = st.tuples(st.sampled_from(["keyid", "created", "expires", "alg", "nonce", "tag",
                                   "sf", "key", "bs", "req"]), param_value)


@st.composite
def signature_input(draw):
    items = draw(st.lists(st.one_of(st.sampled_from(COMPONENTS).map(lambda c: f'"{c}"'),
                                    sf_string.map(lambda s: '"%s"' % s.replace('"', "")),
                                    sf_token), max_size=6))
    inner = "(" + " ".join(items) + ")"
    params = "".join(f";{k}={v}" for k, v in draw(st.lists(param, max_size=6)))
    return f"{draw(sf_token)}={inner}{params}"


raw_header = st.one_of(st.text(max_size=80), st.binary(max_size=60).map(
    lambda b: b.decode("latin-1")))


def _sign(method, url, headers, label="sig1"):
    created = int(time.time())
    components = '("@method" "@target-uri" "content-digest")'
    # A fresh nonce: two examples in the same second with the same body are distinct requests.
    params = f';created={created};keyid="app";alg="hmac-sha256";nonce="{uuid.uuid4().hex}"'
    base = "\n".join([f'"@method": {method}', f'"@target-uri": {url}',
                      f'"content-digest": {headers["Content-Digest"]}',
                      f'"@signature-params": {components}{params}'])
    sig = base64.b64encode(hmac.new(SECRET.encode(), base.encode(), hashlib.sha256).digest())
    return {**headers, "Signature-Input": f"{label}={components}{params}",
            "Signature": f"{label}=:{sig.decode()}:"}


@pytest.fixture(scope="module")
def verifier():
    loop = asyncio.new_event_loop()
    state = MemoryBackend()
    store = CredentialStore(state, MasterKey.ephemeral())
    loop.run_until_complete(store.add_hmac_client("app", SECRET))
    yield loop, accepting(store, state, max_skew_s=300)
    loop.close()


def _verify(verifier, method, url, headers, body):
    loop, v = verifier
    return loop.run_until_complete(v.verify(method, url, headers, body))


@FUZZ
@given(inp=st.one_of(signature_input(), raw_header), sig=st.one_of(
    raw_header, st.binary(max_size=40).map(lambda b: "sig1=:%s:" % base64.b64encode(b).decode())),
    extra=st.dictionaries(st.sampled_from(["Content-Digest", "Content-Type", "x-upper"]),
                          raw_header, max_size=3), body=st.binary(max_size=64))
def test_random_signature_headers_are_refused_with_401(verifier, inp, sig, extra, body):
    TRIED["signatures"] += 1
    headers = {**extra, "Signature-Input": inp, "Signature": sig}
    with pytest.raises(AuthError) as refused:
        _verify(verifier, "POST", URL, headers, body)
    assert refused.value.status == 401 and refused.value.code == "invalid_signature"


@FUZZ
@given(body=st.binary(max_size=64), field=st.sampled_from(["method", "url", "body", "digest",
                                                          "input", "signature", "none"]),
       noise=st.text(min_size=1, max_size=8))
def test_any_change_to_a_validly_signed_request_is_refused(verifier, body, field, noise):
    TRIED["signatures"] += 1
    method, url = "POST", URL
    headers = _sign(method, url, {"Content-Digest": content_digest(body)})
    if field == "method":
        method = "PUT"
    elif field == "url":
        url = URL + noise.replace(" ", "%20").replace("#", "%23")
    elif field == "body":
        body = body + noise.encode()
    elif field == "digest":
        headers["Content-Digest"] = content_digest(body + noise.encode())
    elif field == "input":
        headers["Signature-Input"] = headers["Signature-Input"].replace('"app"', '"app2"')
    elif field == "signature":
        headers["Signature"] = headers["Signature"][:-6] + "AAAA=:"
    if field == "none":
        assert _verify(verifier, method, url, headers, body) == "app"
        with pytest.raises(AuthError):              # and exactly once (replay)
            _verify(verifier, method, url, headers, body)
        return
    with pytest.raises(AuthError) as refused:
        _verify(verifier, method, url, headers, body)
    assert refused.value.status == 401


# ---------------------------------------------------------------- transaction extraction

ROUTE = parse_config({"routes": [{
    "name": "pay", "match": {"path": "/pay"}, "upstream": "http://127.0.0.1:1",
    "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                    "currency": "json:$.currency", "payee": "json:$.payee.iban",
                    "first": "json:$.items[0]",
                    "n": {"from": "json:$.n", "type": "integer", "required": False},
                    "flag": {"from": "header:X-Flag", "type": "boolean", "required": False},
                    "score": {"from": "header:X-Score", "type": "number", "required": False},
                    "client": "principal"}}]}).routes[0]
EXTRACTOR = TransactionExtractor(ROUTE, max_amount=1e10)
NUMBER_TEXT = ["1e400", "-1e400", "-0", "-0.0", "0", "NaN", "Infinity", "-Infinity", "1e-400",
               "12.345", "10.10", "99999999999999999999999", "0.1e1", "1E2", "0x10", "1_000",
               "00012", ".5", "5.", "+1", "9007199254740993", "1.7976931348623157e309"]
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                        allow_infinity=False), st.text(max_size=12),
                        st.sampled_from(["EUR", "JPY", "BHD", "XXX", "eur", "€"]))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


def _text(value) -> str:
    import json
    return json.dumps(value)


@st.composite
def transaction_body(draw):
    kind = draw(st.sampled_from(["document", "number", "raw", "deep", "huge"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return ('{"user_id": "u", "amount": ' + "[" * depth + "1" + "]" * depth + "}").encode()
    if kind == "huge":
        n = draw(st.integers(1, 20000))
        return ('{"user_id": "u", "amount": 1, "currency": "EUR", "payee": {"iban": "x"}, '
                '"items": [' + ",".join(["1"] * n) + "]}").encode()
    doc = {"user_id": draw(st.one_of(st.text(max_size=10), json_value)),
           "currency": draw(json_scalar), "payee": {"iban": draw(json_value)},
           "items": draw(st.lists(json_value, max_size=3)), "n": draw(json_value)}
    doc = {k: v for k, v in doc.items() if draw(st.booleans()) or k == "user_id"}
    if kind == "number":
        number = draw(st.sampled_from(NUMBER_TEXT))
        return (_text(doc)[:-1] + (", " if doc else "") + f'"amount": {number}}}').encode()
    doc["amount"] = draw(json_value)
    return _text(doc).encode()


@FUZZ
@given(body=transaction_body(), headers=st.dictionaries(
    st.sampled_from(["X-Flag", "X-Score", "x-flag"]), st.text(max_size=12), max_size=2),
    principal=st.one_of(st.none(), st.just("app")))
def test_extraction_gives_typed_attributes_or_a_400(body, headers, principal):
    TRIED["transactions"] += 1
    try:
        attrs = EXTRACTOR.extract(body, {**headers, "Content-Type": "application/json"},
                                  principal)
    except InvalidRequest as exc:
        assert exc.status == 400 and str(exc)
        return
    amount = attrs["amount"]
    assert not isinstance(amount, bool) and isinstance(amount, (int, float))
    assert math.isfinite(amount) and amount >= 0
    assert attrs["currency"] in ISO_4217 and isinstance(attrs["user_id"], str)
    assert isinstance(attrs["payee"], str) and isinstance(attrs["first"], str)
    assert attrs["client"] == principal
    assert "n" not in attrs or (type(attrs["n"]) is int)
    assert "flag" not in attrs or type(attrs["flag"]) is bool
    assert "score" not in attrs or math.isfinite(attrs["score"])


# ---------------------------------------------------------------- rule loader and compiler

TYPES = {"user_id": "string", "amount": "number", "currency": "string", "n": "integer",
         "flag": "boolean", "country": "string"}
ATOMS = ["amount", "n", "flag", "country", "user_id", "hour", "tier", "route", "method",
         "user_tx_1h", "lists.bad", "lists.hr", "unknown", "id", "sid", "tx_id", "1000", "-0",
         "1e400", "NaN", "'EU'", '"x"', "true", "None", "[]", "[1, 'a']", "['KP', 'IR']",
         "exists(amount)", "matches(user_id, '.*')", "matches(user_id, '(')",
         "matches(country, '[a-z]{4}')", "__import__('os')", "amount.real", "f(amount)",
         "amount[0]", "lambda: 1", "'a' * 10", "{}", "...", "x if y else z"]
OPS = ["and", "or", "not", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "+", "-", "*",
       "/", "(", ")", ",", "**", "%", "//", "is", "&", "|", ":", ";", "\\"]
expression = st.lists(st.one_of(st.sampled_from(ATOMS), st.sampled_from(OPS)),
                      min_size=1, max_size=12).map(" ".join)
VALID = {"version": 1, "lists": {"hr": ["KP", "IR"]},
         "counters": [{"name": "user_tx_1h", "key": ["user_id"], "window": "1h",
                       "aggregate": "count"}],
         "thresholds": {"review": 50, "require_otp": 70, "deny": 100},
         "rules": [{"id": "F-1", "description": "d", "when": "amount > 10", "action": "deny"}]}
yaml_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                        expression, st.sampled_from(["1h", "24h", "0s", "-1h", "count", "sum",
                                                     "distinct", "first_seen", "allow", "deny",
                                                     "shadow", "enforce", "strong_auth"]))
yaml_value = st.recursive(yaml_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["id", "when", "action", "score", "mode", "name", "key", "window", "aggregate", "field",
         "on", "reset_on", "routes", "tags", "description", "x"]), inner, max_size=5)),
    max_leaves=12)


def _attrs(draw_values) -> dict:
    return {k: v for k, v in draw_values.items() if v is not None}


attr_values = st.fixed_dictionaries({
    "amount": st.one_of(st.none(), st.floats(0, 1e12)), "n": st.one_of(st.none(), st.integers(
        -2**40, 2**40)), "flag": st.one_of(st.none(), st.booleans()),
    "country": st.one_of(st.none(), st.sampled_from(["KP", "DE", ""])),
    "user_id": st.one_of(st.none(), st.text(max_size=8)), "user_tx_1h": st.integers(0, 99)})


def _load_and_use(path, attrs):
    try:
        rules = load_rules(path, TYPES)
    except RuleLoadError as exc:
        assert exc.errors and all(isinstance(e, str) and ":" in e for e in exc.errors)
        return None
    try:
        decision = rules.decide(attrs, "pay")
        assert isinstance(decision, Decision)
        return decision
    finally:
        rules.close()


@FUZZ
@given(data=st.data(), attrs=attr_values.map(_attrs))
def test_random_rule_documents_load_or_fail_with_rule_load_error(tmp_path, data, attrs):
    import yaml
    TRIED["rule files"] += 1
    kind = data.draw(st.sampled_from(["mutated", "random", "text"]))
    if kind == "text":
        text = data.draw(st.text(max_size=300))
    else:
        doc = data.draw(yaml_value) if kind == "random" else _mutate(VALID, data)
        text = yaml.safe_dump(doc, allow_unicode=True)
    (tmp_path / "fuzz.yaml").write_text(text, encoding="utf-8")
    _load_and_use(tmp_path, attrs)


def _mutate(document, data):
    import copy
    doc = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3))):
        # Only parts still shaped as in VALID can be walked into (an earlier step may have
        # replaced or deleted a section).
        parts = {"top": doc}
        for name, section in (("counter", doc.get("counters")), ("rule", doc.get("rules"))):
            if isinstance(section, list) and section and isinstance(section[0], dict):
                parts[name] = section[0]
        if isinstance(doc.get("thresholds"), dict):
            parts["thresholds"] = doc["thresholds"]
        target = parts[data.draw(st.sampled_from(sorted(parts)))]
        names = sorted(map(str, target))
        key = data.draw(st.one_of(st.sampled_from(names), st.text(max_size=6)) if names
                        else st.text(max_size=6))
        if data.draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = data.draw(yaml_value)
    return doc


@FUZZ
@given(when=st.one_of(expression, st.text(max_size=60)), attrs=attr_values.map(_attrs),
       action=st.sampled_from(["deny", "review", "require_otp", None]))
def test_random_expressions_compile_or_fail_with_rule_load_error(tmp_path, when, attrs, action):
    import yaml
    TRIED["expressions"] += 1
    rule = {"id": "E-1", "description": "fuzz", "when": when}
    rule.update({"action": action} if action else {"score": 5})
    doc = {"version": 1, "lists": {"hr": ["KP", "IR"]},
           "counters": [{"name": "user_tx_1h", "key": ["user_id"], "window": "1h",
                         "aggregate": "count"}], "rules": [rule]}
    (tmp_path / "fuzz.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    _load_and_use(tmp_path, attrs)


def test_a_control_character_in_a_rule_file_is_a_load_error_not_a_crash(tmp_path):
    # Found by the fuzzer above: PyYAML refuses control characters while constructing its
    # reader, which used to happen outside the loader's error handling (a traceback from
    # `txgate rules check`, a 500 from an admin reload).
    (tmp_path / "r.yaml").write_text("version: 1\nrules:\n  - {id: A\x08, when: x}\n")
    with pytest.raises(RuleLoadError) as failed:
        load_rules(tmp_path, TYPES)
    assert failed.value.errors[0].startswith(f"{tmp_path / 'r.yaml'}:1: YAML syntax error")
