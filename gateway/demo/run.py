"""The scripted demo: realistic traffic through a real gateway, printed as a table of decisions.

Everything is real: the gateway runs its full pipeline on the memory backend with the shipped
rule pack; the client signs with RFC 9421; the step-up is answered with a TOTP code computed
from the enrolled secret and with an Ed25519 device signature over the signing payload.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pyotp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from auth.keys import MasterKey
from gateway.config import DEFAULT_RULES, parse_config
from gateway.demo.signer import HmacSigner
from gateway.demo.upstream import demo_upstream
from gateway.server import GatewayServer

# As examples/txgate.yaml: user ids compared case-insensitively, codes upper-cased.
_TX = {"user_id": {"from": "json:$.user_id", "normalize": ["nfkc", "casefold", "strip", "ascii"]},
       "amount": "json:$.amount",
       "currency": {"from": "json:$.currency", "normalize": ["strip", "upper"]},
       "payee": "json:$.payee.iban",
       "country": {"from": "json:$.payee.country", "required": False,
                   "normalize": ["strip", "upper"]},
       "device_id": {"from": "header:X-Device-Id", "required": False},
       "channel": {"from": "header:X-Channel", "required": False}}


def demo_config(upstream: str, decision_log: str) -> dict:
    def route(name, path, methods=("POST",), transaction=True, **extra):
        r = {"name": name, "match": {"path": path, "methods": list(methods)}, "upstream": upstream, **extra}
        if transaction:
            r["transaction"] = _TX
        return r

    return {
        "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0",
        "rules": {"path": DEFAULT_RULES, "reload": "off"},
        "decision_log": {"path": decision_log},
        "routes": [
            route("payments", "/v1/payments"),
            route("transfers", "/v1/transfers"),
            route("loans", "/v1/loans/applications"),
            route("wealth", "/v1/wealth/orders"),
            {"name": "accounts", "match": {"path_prefix": "/v1/accounts/", "methods": ["GET"]},
             "upstream": upstream},
        ],
    }


@dataclass
class Row:
    step: str
    request: str
    status: int
    decision: str
    tier: str
    score: str
    rules: str


class DemoClient:
    def __init__(self, base: str, signer: HmacSigner, session: aiohttp.ClientSession):
        self.base, self.signer, self.session = base, signer, session

    async def call(self, method: str, path: str, doc: dict | None = None, headers: dict | None = None,
                   raw: bytes | None = None):
        body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else b"")
        url = self.base + path
        all_headers = {**self.signer.headers(method, url, body), **(headers or {})}
        if body:
            all_headers["Content-Type"] = "application/json"
        async with self.session.request(method, url, data=body or None, headers=all_headers) as resp:
            return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def _scenario(client: DemoClient, totp_secret: str, device_key: Ed25519PrivateKey,
                    decision_log: Path) -> list[Row]:
    calls: list[tuple] = []

    def payment(user, amount, iban, country="DE", **extra):
        return {"user_id": user, "amount": amount, "currency": "EUR",
                "payee": {"iban": iban, "country": country}, **extra}

    async def step(name: str, method: str, path: str, doc=None, headers=None, raw=None):
        status, resp_headers, answer = await client.call(method, path, doc, headers, raw)
        calls.append((name, method, path, doc, status, resp_headers, answer))
        return status, answer

    # Above 250 EUR to a payee she never paid: PSD2 Art. 18 gives no exemption -> TOTP.
    rent = payment("alice", 300, "FR7630006000011234567890189")
    status, answer = await step("300 EUR to a new payee", "POST", "/v1/payments", rent)
    if status == 401 and answer.get("acr_values") == "otp":
        await step("  answered with TOTP", "POST", "/v1/payments", rent,
                   headers={"Txgate-Challenge": answer["challenge"],
                            "Txgate-OTP": pyotp.TOTP(totp_secret).now()})

    # Alice pays that payee a small amount: inside the PSD2 low-value exemption since her
    # strong authentication, to a payee she has paid: nothing is risky.
    await step("normal payment", "POST", "/v1/payments",
               payment("alice", 24.90, "FR7630006000011234567890189"))
    await step("account lookup", "GET", "/v1/accounts/acc-1001")
    await step("malformed amount", "POST", "/v1/payments", raw=b'{"user_id": "alice", "amount": "12.00"}')

    # A large transfer to a new payee needs the device to sign the exact amount and payee.
    transfer = payment("alice", 1800, "NL91ABNA0417164300")
    status, answer = await step("1800 EUR transfer", "POST", "/v1/transfers", transfer,
                                headers={"X-Device-Id": "alice-phone"})
    if status == 401 and answer.get("acr_values") == "device":
        signature = device_key.sign(base64.b64decode(answer["signing_payload"]))
        await step("  device-signed", "POST", "/v1/transfers", transfer,
                   headers={"X-Device-Id": "alice-phone", "Txgate-Challenge": answer["challenge"],
                            "Txgate-Device-Id": "alice-phone",
                            "Txgate-Device-Signature": base64.b64encode(signature).decode()})

    await step("sanctioned country", "POST", "/v1/payments", payment("carol", 120, "KP0000000001", "KP"))
    # A burst of small payments to ever new payees: the velocity rules step in.
    for i in range(12):
        shown = f"burst {i + 1}/12" if i in (0, 5, 10, 11) else None
        await step(shown, "POST", "/v1/payments", payment("mallory", 9.99, f"DE{i:020d}"))
    await asyncio.sleep(0.2)   # the decision log is written off the request path
    return [_row(*call, decision_log) for call in calls if call[0] is not None]


def _row(name, method, path, doc, status, headers, answer, decision_log: Path) -> Row:
    request_id = headers.get("Txgate-Request-Id", "")
    entry = _log_entry(decision_log, request_id)
    amount = f" {doc['amount']} {doc['currency']}" if doc and "amount" in doc else ""
    decision = entry.get("decision") if entry else ("allow" if status < 400 else answer.get("error", ""))
    if status == 401 and answer.get("acr_values"):
        decision = f"step_up → {answer['acr_values']}"
    elif answer.get("error") in ("enrollment_required", "user_locked"):
        decision = f"step_up ({answer['error']})"
    hits = ", ".join(f"{h['id']}{'(shadow)' if h['mode'] == 'shadow' else ''}"
                     for h in (entry or {}).get("rules", []))
    score = (entry or {}).get("score") or 0
    return Row(name, f"{method} {path}{amount}", status, str(decision),
               str((entry or {}).get("tier") or "client"), f"{score:g}", hits)


def _log_entry(path: Path, request_id: str) -> dict | None:
    # The demo reads the gateway's own decision log, so the table shows what was recorded.
    if not request_id or not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        entry = json.loads(line)
        if entry.get("request_id") == request_id:   # audit lines have none
            return entry
    return None


async def _demo(once: bool, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="txgate-demo-"))
    try:
        return await _run(workdir, once)
    finally:
        # The demo leaves nothing behind unless asked: it runs on every `make demo`.
        if keep:
            Console().print(f"kept: decision log {workdir / 'decisions.jsonl'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(workdir: Path, once: bool) -> int:
    decision_log = workdir / "decisions.jsonl"
    upstream_runner = web.AppRunner(demo_upstream(), access_log=None)
    await upstream_runner.setup()
    site = web.TCPSite(upstream_runner, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{upstream_runner.addresses[0][1]}"

    config = parse_config(demo_config(upstream, str(decision_log)), environ={})
    server = GatewayServer(config, MasterKey.ephemeral(), admin_token=None)
    await server.start()
    store = server.services.credentials
    secret = await store.add_hmac_client("demo-app")
    totp_secret = await store.enroll_totp("alice")
    device_key = Ed25519PrivateKey.generate()
    pem = device_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    await store.add_device("alice", pem, "alice-phone")

    base = f"http://127.0.0.1:{server.ports['listen']}"
    console = Console()
    console.print(f"[bold]txgate demo[/]: gateway {base} → demo platform {upstream}, "
                  f"rules {server.services.rulebook.current.version} "
                  f"({len(server.services.rulebook.current.rules)} rules), memory backend")
    async with aiohttp.ClientSession() as session:
        client = DemoClient(base, HmacSigner("demo-app", secret), session)
        rows = await _scenario(client, totp_secret, device_key, decision_log)

    table = Table(title="txgate decisions")
    for column in ("step", "request", "status", "decision", "tier", "score", "rules matched"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.step, row.request, str(row.status), row.decision, row.tier, row.score, row.rules)
    console.print(table)
    if not once:
        console.print(f"decision log: {decision_log}   "
                      f"metrics: http://127.0.0.1:{server.ports['admin']}/metrics")
        console.print("serving until Ctrl-C")
        server.install_signals()
        await server.serve()
    else:
        await server.shutdown()
    await upstream_runner.cleanup()
    return 0


def run_demo(once: bool = False, keep: bool = False) -> int:
    """The scripted run (then serve until Ctrl-C unless ``once``); its temporary directory,
    decision log included, is removed at the end unless ``keep``."""
    return asyncio.run(_demo(once, keep))
