"""The curl/openssl examples of docs/clients.md, run as written, pass the verifier."""

import asyncio
import base64
import re
import subprocess
from pathlib import Path

import pytest
from multidict import CIMultiDict

from auth.errors import AuthError
from auth.challenges import request_hash
from auth.stepup import StepUp
from tests.auth.conftest import accepting, need_tool, remember
from tests.auth.keyutil import openssl_key

run = asyncio.run
DOC = Path(__file__).parents[2] / "docs" / "clients.md"
URL = "https://pay.example.com/v1/payments"
BODY = '{"user_id":"alice","amount":20,"currency":"EUR"}'


def snippet(name: str) -> str:
    for block in re.findall(r"```sh[^\n]*\n(.*?)```", DOC.read_text(), re.S):
        if block.startswith(f"# {name}"):
            return block
    raise AssertionError(f"{name} not found in {DOC}")


def run_as_curl(script: str, env: dict, cwd) -> tuple[CIMultiDict, bytes]:
    """Run a doc snippet with `curl` replaced by a function that records its arguments."""
    need_tool("openssl", "openssl")
    recorder = 'curl() { for a in "$@"; do printf "%s\\0" "$a"; done > args.bin; }\n'
    subprocess.run(["bash", "-euc", recorder + script], env={"PATH": "/usr/bin:/bin", **env},
                   cwd=cwd, check=True)
    args = (Path(cwd) / "args.bin").read_bytes().split(b"\0")[:-1]
    headers, body = CIMultiDict(), b""
    for flag, value in zip(args, args[1:]):
        if flag == b"-H":
            name, _, field = value.decode().partition(": ")
            headers.add(name, field)
        elif flag == b"--data-binary":
            body = value
    return headers, body


def test_hmac_curl_example(store, state, clock, tmp_path):
    secret = run(store.add_hmac_client("shop"))
    remember(secret)
    headers, body = run_as_curl(snippet("sign-hmac.sh"), {
        "KEYID": "shop", "SECRET": secret, "URL": URL, "BODY": BODY}, tmp_path)
    assert body == BODY.encode()
    verifier = accepting(store, state, clock=clock)
    assert run(verifier.verify("POST", URL, headers, body)) == "shop"


def test_ed25519_curl_example(store, state, clock, tmp_path):
    private, public = openssl_key(tmp_path, "ed25519")
    run(store.add_public_key_client("shop-ed", public))
    headers, body = run_as_curl(snippet("sign-ed25519.sh"), {
        "KEYID": "shop-ed", "KEY": str(private), "URL": URL, "BODY": BODY}, tmp_path)
    verifier = accepting(store, state, clock=clock)
    assert run(verifier.verify("POST", URL, headers, body)) == "shop-ed"


@pytest.mark.parametrize("kind, line", [("ed25519", 1), ("p256", 2)])
def test_device_signing_commands(store, state, clock, tmp_path, kind, line):
    private, public = openssl_key(tmp_path, kind)
    run(store.add_device("alice", public, "phone"))
    stepup = StepUp(store, state, clock=clock)
    rh = request_hash("POST", "/v1/payments", BODY.encode())
    tx = {"amount": 20, "currency": "EUR", "payee": "DE02"}
    with pytest.raises(AuthError) as info:
        run(stepup.check("device", "client", "alice", rh, tx, {}))
    challenge = info.value.body
    blocks = re.findall(r"```sh device\n(.*?)```", DOC.read_text(), re.S)
    script = blocks[line - 1].replace("phone.pem", str(private))
    signature = subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, text=True,
                               capture_output=True,
                               env={"PATH": "/usr/bin:/bin",
                                    "SIGNING_PAYLOAD": challenge["signing_payload"]}).stdout
    assert base64.b64decode(signature)
    answer = {"Txgate-Challenge": challenge["challenge"], "Txgate-Device-Id": "phone",
              "Txgate-Device-Signature": signature.strip()}
    assert run(stepup.check("device", "client", "alice", rh, tx, answer)) == "device"
