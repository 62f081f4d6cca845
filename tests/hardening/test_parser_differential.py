"""What txgate decides on is what the upstream executes: a parser-differential test.

One real `txgate run` in front of three real upstream stacks (tests/fixtures/stacks.py): an
aiohttp app, a Flask app on the standard library's WSGI server and a Starlette app on uvicorn,
one route each. Families of signed request variants (charsets, content encodings, duplicate
JSON keys, JSON syntax, repeated and underscore-spelled headers, method and URL overrides,
gateway and identity headers, path encodings) go to every stack, and each variant must end in
one of two ways:

- refused: the gateway answered 4xx and the upstream saw nothing;
- forwarded: the upstream saw it once, and through its framework's own API
  * read the body as JSON (not as a form) and found the very transaction the gateway logged
    (every field of the route's transaction block: JSON paths and the header field);
  * got a body with no name twice in any object, not even ignoring case, so that first-wins
    parsers and case-insensitive binders (Go's encoding/json, Jackson with
    ACCEPT_CASE_INSENSITIVE_PROPERTIES) read the same transaction as the three stacks here;
  * routes on the gateway's method and path, also after the method and URL overrides common
    middlewares apply (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override,
    X-Original-URL, X-Rewrite-URL);
  * sees every Txgate-* field with the gateway's value only, and no client-chosen X-Real-IP,
    True-Client-IP or X-Forwarded-Host.

The variants are an explicit list, the same on every run; one test per family and stack, whose
failure lists every variant that disagreed and how.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.processes import Gateway, wait_until
from tests.fixtures.signing import SignedClient
from tests.fixtures.stacks import StackUpstream

pytestmark = pytest.mark.slow

STACKS = ("aiohttp", "wsgi", "asgi")
ROUTE_PATH = "/v1/pay/{stack}"
RULES = """
version: 1
rules:
  - {id: D-BIG, description: large amounts are refused, when: amount > 50000, action: deny}
  - {id: D-MID, description: mid amounts get a score, when: amount > 5000, score: 10}
"""
JSON_FIELDS = {"user_id": ("user_id",), "amount": ("amount",), "currency": ("currency",),
               "payee_iban": ("payee", "iban"), "payee_country": ("payee", "country")}
DEVICE_HEADER = "X-Device-Id"
TRANSACTION = {**{name: "json:$." + ".".join(path) for name, path in JSON_FIELDS.items()},
               "device_id": {"from": f"header:{DEVICE_HEADER}", "required": False}}

# Client-chosen values that must never reach an upstream under the names they target.
SPOOFED_IP = "203.0.113.66"
EVIL_HOST = "evil.example"
FORGED = "forged"
METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")
URL_OVERRIDES = ("x-original-url", "x-rewrite-url")
IDENTITY_HEADERS = ("x-real-ip", "true-client-ip")


@dataclass(frozen=True)
class Variant:
    family: str
    name: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    target: str = ROUTE_PATH     # the request target; {stack} is the stack's name
    host: str | None = None      # the Host to sign and send; default: the gateway's address
    plain: bool = False          # an ordinary payment: it must be forwarded (no vacuous pass)

    def has(self, name: str) -> bool:
        return any(n.lower() == name.lower() for n, _ in self.headers)


# --- the variants ------------------------------------------------------------------------------

PAYEE = '"payee":{"iban":"DE89370400440532013000","country":"DE"}'
REST = '"user_id":"u-diff","currency":"EUR",' + PAYEE   # every field but the amount


def doc(*members: str) -> bytes:
    """A payment object whose members are spelled exactly as given (duplicates kept)."""
    return ("{" + ",".join(members) + "}").encode()


BASE = doc(REST, '"amount":1')
# The bodies of issue 16, verbatim: the UTF-7 memo hides "amount":99999 from a UTF-8 reader.
UTF7_ATTACK = (b'{"user_id":"u","amount":1,"currency":"EUR",'
               b'"payee":{"iban":"DE89370400440532013000","country":"DE"},'
               b'"memo":"+ACIALAAiAGEAbQBvAHUAbgB0ACIAOgA5ADkAOQA5ADkALAAiAHgAIgA6ACI-"}')
# Valid JSON, and as a form it carries amount=99999.
FORM_ATTACK = doc(REST, '"amount":1', '"memo":"&amount=99999&"')
NON_ASCII = doc('"user_id":"zoë"', '"currency":"EUR"', PAYEE, '"amount":1')


JSON = (("Content-Type", "application/json"),)


def family(name: str, cases: list[tuple]) -> list[Variant]:
    """A family of variants: first a plain payment, then ``(name, body, headers)`` cases."""
    return [Variant(name, "plain", BASE, JSON, plain=True)] + [
        Variant(name, case, body, headers) for case, body, headers in cases]


def with_headers(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return JSON + pairs


def _charsets() -> list[Variant]:
    def typed(content_type):
        return (("Content-Type", content_type),)
    return family("charset", [
        ("non-ASCII, no charset", NON_ASCII, JSON),
        ("charset=utf-8", NON_ASCII, typed("application/json; charset=utf-8")),
        ("charset=UTF-8", NON_ASCII, typed("application/json; charset=UTF-8")),
        ('charset="utf-8"', NON_ASCII, typed('application/json;charset="utf-8"')),
        ("uppercase type", BASE, typed("APPLICATION/JSON")),
        ("issue: utf-7 memo", UTF7_ATTACK, typed("application/json; charset=utf-7")),
        ("utf-8 then utf-7", UTF7_ATTACK, typed("application/json; charset=utf-8; charset=utf-7")),
        ("latin-1", NON_ASCII, typed("application/json; charset=latin-1")),
        ("iso-8859-1", NON_ASCII, typed("application/json; charset=iso-8859-1")),
        ("utf-16 label, utf-8 body", BASE, typed("application/json; charset=utf-16")),
        ("utf-16 body", BASE.decode().encode("utf-16"), typed("application/json; charset=utf-16")),
        ("unknown charset", BASE, typed("application/json; charset=x-unknown")),
        ("text/plain", BASE, typed("text/plain")),
        ("text/plain utf-7", UTF7_ATTACK, typed("text/plain; charset=utf-7")),
        ("+json suffix", BASE, typed("application/vnd.api+json")),
        ("issue: form-urlencoded", BASE, typed("application/x-www-form-urlencoded")),
        ("form-urlencoded, amount in memo", FORM_ATTACK,
         typed("application/x-www-form-urlencoded")),
        ("multipart", BASE, typed("multipart/form-data; boundary=x")),
        ("empty type", BASE, typed("")),
        ("no Content-Type", BASE, ()),
    ])


def _encodings() -> list[Variant]:
    def encoded(*encodings):
        return with_headers(*(("Content-Encoding", e) for e in encodings))
    return family("content-encoding", [
        ("identity", BASE, encoded("identity")),
        ("IDENTITY", BASE, encoded("IDENTITY")),
        ("issue: identity then gzip", BASE, encoded("identity", "gzip")),
        ("gzip then identity", BASE, encoded("gzip", "identity")),
        ("identity, gzip in one field", BASE, encoded("identity, gzip")),
        ("identity twice", BASE, encoded("identity", "identity")),
        ("gzip, plain body", BASE, encoded("gzip")),
        ("gzip, gzipped body", gzip.compress(BASE, mtime=0), encoded("gzip")),
        ("deflate, deflated body", zlib.compress(BASE), encoded("deflate")),
        ("br", BASE, encoded("br")),
    ])


def _duplicate_keys() -> list[Variant]:
    payer = '"user_id":"u-diff","currency":"EUR","amount":1'
    return family("duplicate-keys", [(name, body, JSON) for name, body in [
        ("issue: amount 1 then 9999", doc(REST, '"amount":1', '"amount":9999')),
        ("amount 9999 then 1", doc(REST, '"amount":9999', '"amount":1')),
        ("issue: AMOUNT", doc(REST, '"amount":1', '"AMOUNT":9999')),
        ("AMOUNT first", doc(REST, '"AMOUNT":9999', '"amount":1')),
        ("Amount", doc(REST, '"amount":1', '"Amount":9999')),
        (r"\u escape: \u0061mount", doc(REST, '"amount":1', r'"\u0061mount":9999')),
        (r"\u escape: \u0041MOUNT", doc(REST, '"amount":1', r'"\u0041MOUNT":9999')),
        (r"\u escape alone", doc(REST, r'"\u0061mount":1')),
        ("user_id twice", doc(REST, '"amount":1', '"user_id":"victim"')),
        ("long s: uſer_id", doc(REST, '"amount":1', '"uſer_id":"victim"')),
        ("payee.iban twice", doc(payer, '"payee":{"iban":"DE89370400440532013000",'
                                        '"country":"DE","iban":"GB33BUKB20201555555555"}')),
        ("payee.IBAN", doc(payer, '"payee":{"iban":"DE89370400440532013000",'
                                  '"country":"DE","IBAN":"GB33BUKB20201555555555"}')),
        ("payee object twice", doc(REST, '"amount":1',
                                   '"payee":{"iban":"GB33BUKB20201555555555","country":"GB"}')),
        ("twice in an unread field", doc(REST, '"amount":1', '"meta":{"x":1,"x":2}')),
        ("twice in an array item", doc(REST, '"amount":1', '"items":[{"q":1,"Q":2}]')),
    ]])


def _json_syntax() -> list[Variant]:
    return family("json-syntax", [(name, body, JSON) for name, body in [
        ("trailing newline", BASE + b"\n"),
        ("exponent amount", doc(REST, '"amount":1E2')),
        ("BOM", b"\xef\xbb\xbf" + BASE),
        ("lone surrogate in memo", doc(REST, '"amount":1', r'"memo":"\ud800"')),
        ("lone surrogate in user_id",
         doc(r'"user_id":"u\udc00"', '"currency":"EUR"', PAYEE, '"amount":1')),
        ("trailing document", BASE + b' {"amount":99999}'),
        ("trailing garbage", BASE + b"x"),
        ("trailing NUL", BASE + b"\x00"),
        ("invalid UTF-8 in memo", BASE[:-1] + b',"memo":"\xff"}'),
        ("utf-16 without label", BASE.decode().encode("utf-16-le")),
        ("NaN amount", doc(REST, '"amount":NaN')),
    ]])


def _header_duplicates() -> list[Variant]:
    utf7, form = "application/json; charset=utf-7", "application/x-www-form-urlencoded"
    return family("header-duplicates", [
        ("device id once", BASE, with_headers((DEVICE_HEADER, "dev-a"))),
        ("device id with a comma", BASE, with_headers((DEVICE_HEADER, "dev-a, dev-b"))),
        ("device id twice", BASE,
         with_headers((DEVICE_HEADER, "dev-a"), (DEVICE_HEADER, "dev-b"))),
        ("device id and X_Device_Id", BASE,
         with_headers((DEVICE_HEADER, "dev-a"), ("X_Device_Id", "dev-b"))),
        ("X_Device_Id only", BASE, with_headers(("X_Device_Id", "dev-b"))),
        ("Content-Type json then utf-7", UTF7_ATTACK, with_headers(("Content-Type", utf7))),
        ("Content-Type utf-7 then json", UTF7_ATTACK, (("Content-Type", utf7),) + JSON),
        ("Content-Type json then form", FORM_ATTACK, with_headers(("Content-Type", form))),
        ("Content_Type form", FORM_ATTACK, with_headers(("Content_Type", form))),
        ("Content-Length twice", BASE, with_headers(*[("Content-Length", str(len(BASE)))] * 2)),
        ("Host twice", BASE, with_headers(("Host", "{gateway}"), ("Host", EVIL_HOST))),
    ])


def _overrides() -> list[Variant]:
    return family("overrides", [(f"{name}: {value}", BASE, with_headers((name, value)))
                                for name, value in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method-Override", "POST"),
        ("X-HTTP-Method", "PUT"),
        ("X-Method-Override", "PATCH"),
        ("x-http-method-override", "GET"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X_HTTP_METHOD", "PUT"),
        ("X-Original-URL", "/v1/admin/users"),
        ("X-Rewrite-URL", "/v1/admin/users"),
        ("X_Original_URL", "/v1/admin/users"),
        ("X_Rewrite_URL", "/v1/admin/users"),
    ]])


def _gateway_headers() -> list[Variant]:
    return family("gateway-headers", [(f"{name}: {value}", BASE, with_headers((name, value)))
                                      for name, value in [
        ("Txgate-Tier", "device"),
        ("Txgate-Decision", "allow"),
        ("Txgate_Tier", "device"),
        ("txgate_tier", "device"),
        ("Txgate_Decision", "allow"),
        ("TXGATE_RISK_SCORE", "0"),
        ("Txgate_Request_Id", FORGED),
        ("Txgate_Challenge", FORGED),
        ("X-Real-IP", SPOOFED_IP),
        ("True-Client-IP", SPOOFED_IP),
        ("X_Real_IP", SPOOFED_IP),
        ("True_Client_IP", SPOOFED_IP),
        ("X-Forwarded-Host", EVIL_HOST),
        ("X_Forwarded_Host", EVIL_HOST),
    ]]) + [Variant("gateway-headers", f"issue: signed Host {EVIL_HOST}", BASE, JSON,
                   host=EVIL_HOST)]


def _paths() -> list[Variant]:
    return [Variant("paths", "plain", BASE, JSON, plain=True)] + [
        Variant("paths", target, BASE, JSON, target=target) for target in [
            "/v1/p%61y/{stack}",
            "/v1/%70ay/{stack}",
            "/v1/pay/{stack}?amount=99999&_method=DELETE",
            "/v1/pay/{stack}/",
            "/v1/pay/{stack}%2F",
            "/v1/pay/{stack}%2f..%2fadmin",
            "/v1/pay/{stack}%20",
            "/v1/pay/{stack}%00",
            "/v1/pay/{stack};x=1",
            "/v1/pay/{stack}%3Bx=1",
            "/v1/pay/./{stack}",
            "/v1/pay/%2e/{stack}",
            "/v1/admin/../pay/{stack}",
            "/v1/admin/%2e%2e/pay/{stack}",
            "/v1//pay/{stack}",
            "//v1/pay/{stack}",
            "/V1/PAY/{stack}",
            "/v1/pay/{stack}#fragment",
            "http://{gateway}/v1/pay/{stack}",   # absolute form
        ]]


FAMILIES = {variants[0].family: variants for variants in (
    _charsets(), _encodings(), _duplicate_keys(), _json_syntax(), _header_duplicates(),
    _overrides(), _gateway_headers(), _paths())}


# --- the processes -----------------------------------------------------------------------------

class DecisionLog:
    """The gateway's decision log, read as it grows, by request id."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._entries: dict[str, dict] = {}

    def entry(self, request_id: str) -> dict | None:
        def logged() -> bool:
            self._read()
            return request_id in self._entries
        try:
            wait_until(logged, timeout=10, what=f"the decision log entry of {request_id}")
        except TimeoutError:
            return None
        return self._entries[request_id]

    def _read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]   # a line being written waits for next time
        self._offset += len(complete)
        for line in complete.splitlines():
            entry = json.loads(line)
            if entry.get("type") != "audit":       # credential changes share the log
                self._entries[entry["request_id"]] = entry


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("differential")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "main.yaml").write_text(RULES)
    stacks: dict[str, StackUpstream] = {}
    gateway = None
    try:
        for stack in STACKS:
            stacks[stack] = StackUpstream(stack)
        gateway = Gateway(tmp, {
            "rules": {"path": str(tmp / "rules"), "reload": "off"},
            "routes": [{"name": f"pay-{stack}",
                        "match": {"path": ROUTE_PATH.format(stack=stack), "methods": ["POST"]},
                        "upstream": upstream.url, "transaction": TRANSACTION}
                       for stack, upstream in stacks.items()]})
        secret = gateway.admin_post("/admin/clients", {"id": "diff", "hmac": True}).json()["secret"]
        gateway.client = SignedClient("diff", secret)
        gateway.log = DecisionLog(gateway.decision_log)
        gateway.stacks = stacks
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        for upstream in stacks.values():
            upstream.stop()


# --- sending and judging -----------------------------------------------------------------------

@dataclass
class Outcome:
    status: int | None
    request_id: str | None
    records: list[dict]


def send(gw: Gateway, stack: str, variant: Variant) -> Outcome:
    """Sign the variant for exactly its target and Host, send it as spelled, and collect what
    the stack's upstream received."""
    address = f"127.0.0.1:{gw.port}"
    fill = {"stack": stack, "gateway": address}
    target = variant.target.format(**fill)
    host = variant.host or address
    url = target if target.startswith("http://") else f"http://{host}{target}"
    headers = [(n, v.format(**fill)) for n, v in variant.headers]
    if not variant.has("Host"):
        headers.insert(0, ("Host", host))
    if not variant.has("Content-Length"):
        headers.append(("Content-Length", str(len(variant.body))))
    headers += gw.client.sign_exact("POST", url, variant.body).items()
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        connection.putrequest("POST", target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(variant.body)
        response = connection.getresponse()
        response.read()
        status, request_id = response.status, response.getheader("Txgate-Request-Id")
    except (http.client.HTTPException, OSError):
        status = request_id = None   # the connection was closed without an answer
    finally:
        connection.close()
    return Outcome(status, request_id, gw.stacks[stack].drain())


def exposed_headers(record: dict) -> dict[str, list[str]]:
    """Header values by lower-case name, as an application on that stack looks them up: on WSGI
    through the environ, as Werkzeug's EnvironHeaders does (HTTP_X_DEVICE_ID is X-Device-Id)."""
    exposed: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        if record["stack"] == "wsgi":
            name = name.removeprefix("HTTP_").replace("_", "-")
        exposed.setdefault(name.lower(), []).append(value)
    return exposed


def ambiguous_names(body: bytes) -> list[str]:
    """Names that appear twice in one JSON object, compared case-insensitively (casefold)."""
    found: list[str] = []

    def check(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name.casefold() in seen:
                found.append(name)
            seen.add(name.casefold())
        return dict(pairs)
    try:
        json.loads(body, object_pairs_hook=check)
    except ValueError:
        pass   # a body the stacks cannot read is reported by the framework's own reading
    return found


_MISSING = "<missing>"


def _lookup(document, path: tuple[str, ...]):
    for step in path:
        if not isinstance(document, dict) or step not in document:
            return _MISSING
        document = document[step]
    return document


def disagreements(gw: Gateway, stack: str, outcome: Outcome) -> list[str]:
    """Why this outcome is neither a clean refusal nor an agreeing forward (empty: it is one)."""
    if not outcome.records:
        if outcome.status is not None and 400 <= outcome.status < 500:
            return []
        return [f"not forwarded, yet answered {outcome.status} instead of a 4xx"]
    problems = []
    if len(outcome.records) > 1:
        problems.append(f"the upstream received it {len(outcome.records)} times")
    record = outcome.records[0]
    entry = gw.log.entry(outcome.request_id) if outcome.request_id else None
    if entry is None:
        return problems + ["forwarded without a decision log entry to compare with"]
    transaction = entry["transaction"]
    exposed = exposed_headers(record)
    problems += _body_problems(record, transaction)
    device = exposed.get(DEVICE_HEADER.lower(), [])
    logged = [transaction["device_id"]] if "device_id" in transaction else []
    if device != logged:
        problems.append(f"device_id: txgate decided on {logged}, the app reads {device}")
    problems += _routing_problems(stack, record, exposed)
    problems += _header_problems(entry, exposed)
    return problems


def _body_problems(record: dict, transaction: dict) -> list[str]:
    if "body_error" in record:
        return [f"the framework could not read the body: {record['body_error']}"]
    problems = []
    if "json_error" in record:
        problems.append(f"the framework refused the JSON txgate decided on: {record['json_error']}")
    else:
        for name, path in JSON_FIELDS.items():
            ours, theirs = transaction.get(name, _MISSING), _lookup(record["json"], path)
            if ours != theirs or type(ours) is bool or type(theirs) is bool:
                problems.append(f"{name}: txgate decided on {ours!r}, "
                                f"the framework read {theirs!r}")
    if "form" in record or "form_error" in record:
        problems.append(f"the framework reads the body as a form: "
                        f"{record.get('form', record.get('form_error'))!r}")
    names = ambiguous_names(base64.b64decode(record["body"]))
    if names:
        problems.append(f"names that first-wins or case-insensitive readers take differently: "
                        f"{names}")
    return problems


def _routing_problems(stack: str, record: dict, exposed: dict[str, list[str]]) -> list[str]:
    path = ROUTE_PATH.format(stack=stack)
    methods = [record["method"]] + [v for n in METHOD_OVERRIDES for v in exposed.get(n, [])]
    paths = [record["path"]] + [v.partition("?")[0] for n in URL_OVERRIDES
                                for v in exposed.get(n, [])]
    problems = []
    if any(m.upper() != "POST" for m in methods):
        problems.append(f"txgate routed POST, the upstream's method (with overrides) is {methods}")
    if any(p != path for p in paths):
        problems.append(f"txgate routed {path}, the upstream's path (with overrides) is {paths}")
    return problems


def _header_problems(entry: dict, exposed: dict[str, list[str]]) -> list[str]:
    ours = {"txgate-request-id": entry["request_id"], "txgate-tier": entry["tier"],
            "txgate-decision": entry["action"]}
    problems = []
    for name, values in exposed.items():
        if not name.startswith("txgate-"):
            continue
        if name in ours:
            if values != [ours[name]]:
                problems.append(f"{name}: the gateway set {ours[name]!r}, the app reads {values}")
        elif name == "txgate-risk-score":
            if len(values) != 1 or _number(values[0]) != round(entry["score"], 2):
                problems.append(f"{name}: the gateway set {entry['score']}, "
                                f"the app reads {values}")
        elif any(FORGED in v for v in values):
            problems.append(f"{name}: the client's value reached the app: {values}")
    for name in IDENTITY_HEADERS:
        if any(SPOOFED_IP in v for v in exposed.get(name, [])):
            problems.append(f"{name}: the client's {SPOOFED_IP} reached the app: {exposed[name]}")
    if any(EVIL_HOST in v for v in exposed.get("x-forwarded-host", [])):
        problems.append(f"x-forwarded-host: the client's {EVIL_HOST} reached the app: "
                        f"{exposed['x-forwarded-host']}")
    return problems


def _number(text: str) -> float | None:
    try:
        return round(float(text), 2)
    except ValueError:
        return None


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_upstream_executes_what_txgate_decided_or_nothing(front, family, stack):
    failures = []
    for variant in FAMILIES[family]:
        outcome = send(front, stack, variant)
        problems = disagreements(front, stack, outcome)
        if variant.plain and not outcome.records:
            problems.append("an ordinary payment was not forwarded")
        if problems:
            failures.append(f"[{variant.name}] answered {outcome.status}: " + "; ".join(problems))
    strays = {name: records for name, upstream in front.stacks.items()
              if (records := upstream.drain())}
    assert not strays, f"requests reached another stack's upstream: {strays}"
    assert not failures, (f"{len(failures)} of {len(FAMILIES[family])} {family} variants "
                          f"disagree at {stack}:\n" + "\n".join(failures))
