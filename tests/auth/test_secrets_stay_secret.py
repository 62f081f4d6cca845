"""Nothing a client or operator sees in a failure carries a secret: reasons are fixed labels,
messages and reprs name ids only."""

import asyncio
import base64
import re

import pytest
from multidict import CIMultiDict

from auth.errors import AuthError, CredentialError
from auth.challenges import request_hash
from auth.stepup import StepUp
from tests.auth.conftest import accepting, remember

run = asyncio.run
REASON = re.compile(r"[a-z_]{3,32}")


def test_failures_expose_only_fixed_labels(store, state, clock):
    secret = run(store.add_hmac_client("shop"))
    totp_secret = run(store.enroll_totp("alice"))
    remember(secret, totp_secret)
    verifier = accepting(store, state, clock=clock)
    stepup = StepUp(store, state, clock=clock)
    code = stepup.totp.code(totp_secret, stepup.totp.step(clock.now))
    remember(code)

    errors: list[AuthError] = []
    headers = CIMultiDict({"Signature-Input": f'sig=("@method");keyid="shop";created={int(clock.now)}',
                           "Signature": "sig=:" + base64.b64encode(secret.encode()).decode() + ":"})
    for h in (headers, CIMultiDict({"Signature-Input": secret, "Signature": secret})):
        with pytest.raises(AuthError) as info:
            run(verifier.verify("POST", "https://x/y", h, b""))
        errors.append(info.value)
    rh = request_hash("POST", "/y", b"")
    with pytest.raises(AuthError) as info:
        run(stepup.check("otp", "client", "alice", rh, {}, {}))
    errors.append(info.value)
    wrong = "000000" if code != "000000" else "111111"
    with pytest.raises(AuthError) as info:
        run(stepup.check("otp", "client", "alice", rh, {},
                         {"Txgate-Challenge": errors[-1].body["challenge"],
                          "Txgate-OTP": wrong}))
    errors.append(info.value)

    for error in errors:
        assert REASON.fullmatch(error.reason)
        text = " ".join([str(error), repr(error), str(error.headers), str(error.body)])
        for value in (secret, totp_secret, code, wrong):
            assert value not in text

    for call in (lambda: store.add_hmac_client("short", "too-short-secret"),
                 lambda: store.enroll_totp("bob", "ABCDEFGH")):
        with pytest.raises(CredentialError) as info:
            run(call())
        assert "too-short-secret" not in str(info.value) and "ABCDEFGH" not in str(info.value)
