import base64
import hashlib
import subprocess

import pytest

from auth.totp import Totp
from tests.auth.conftest import need_tool

SEEDS = {
    hashlib.sha1: b"12345678901234567890",
    hashlib.sha256: b"12345678901234567890123456789012",
    hashlib.sha512: b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: time -> (SHA1, SHA256, SHA512) 8-digit codes.
VECTORS = {
    59: ("94287082", "46119246", "90693936"),
    1111111109: ("07081804", "68084774", "25091201"),
    1111111111: ("14050471", "67062674", "99943326"),
    1234567890: ("89005924", "91819424", "93441116"),
    2000000000: ("69279037", "90698825", "38618901"),
    20000000000: ("65353130", "77737706", "47863826"),
}


def _b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode().rstrip("=")


@pytest.mark.parametrize("when", sorted(VECTORS))
@pytest.mark.parametrize("column, digest", list(enumerate(SEEDS)))
def test_rfc6238_appendix_b(when, column, digest):
    totp = Totp(digits=8, period=30, valid_window=0, digest=digest)
    secret = _b32(SEEDS[digest])
    expected = VECTORS[when][column]
    assert totp.code(secret, totp.step(when)) == expected
    assert totp.matching_step(secret, expected, when) == when // 30


def test_oathtool_code_matches():
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    now = 1_700_000_000
    code = subprocess.run([need_tool("oathtool", "oathtool"), "--totp", "-b", f"--now=@{now}",
                           secret], capture_output=True, text=True, check=True).stdout.strip()
    assert Totp().matching_step(secret, code, now) == now // 30


def test_window_and_matched_step():
    totp, secret = Totp(valid_window=1), _b32(SEEDS[hashlib.sha1])
    now = 1_700_000_000
    step = totp.step(now)
    assert totp.matching_step(secret, totp.code(secret, step - 1), now) == step - 1
    assert totp.matching_step(secret, totp.code(secret, step + 1), now) == step + 1
    assert totp.matching_step(secret, totp.code(secret, step - 2), now) is None
    assert totp.matching_step(secret, totp.code(secret, step + 2), now) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦"])
def test_malformed_codes_never_match(code):
    assert Totp().matching_step(_b32(SEEDS[hashlib.sha1]), code, 1_700_000_000) is None


def test_provisioning_uri():
    uri = Totp(digits=8, period=60).provisioning_uri("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "alice", "acme")
    assert uri.startswith("otpauth://totp/acme:alice?")
    assert "secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ" in uri and "digits=8" in uri and "period=60" in uri
