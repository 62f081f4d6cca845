"""Pre-generated request files for wrk (``replay.lua``) and the fixed-rate generator.

Signed requests carry a fresh nonce and are accepted once, so every request of a run is
generated before the run and sent exactly once. One raw HTTP/1.1 request per line, CRLF
written as 0x1E (``SEP``).

The traffic spreads over many users so that the velocity rules of the shipped pack see
ordinary customers (a few payments each) rather than one user hammering the API; a small
share of larger amounts and new payees exercises the step-up and review paths.
"""

from __future__ import annotations

import random

import orjson

from gateway.demo.signer import HmacSigner

SEP = b"\x1e"
PAYMENTS = "/v1/payments"
ACCOUNTS = "/v1/accounts/"
# Three payments per user stay under every per-user velocity rule of the shipped pack, even
# the night-time ones (TIM-004: 4 an hour before 06:00 in rules.timezone).
PAYMENTS_PER_USER = 3


def _raw(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = "\r\n".join(lines).encode() + b"\r\n\r\n"
    return (head + body).replace(b"\r\n", SEP)


def customer(run_tag: str, index: int) -> dict[str, str]:
    """The attributes of bench customer ``index``: one device and one usual payee each."""
    user = f"{run_tag}-u{index}"
    return {"user_id": user, "device_id": f"{user}-phone", "payee": f"DE89{index:018d}"}


def payment_body(rng: random.Random, who: dict[str, str]) -> bytes:
    amount = rng.choice((4.5, 9.99, 12.0, 25.0, 42.1, 80.0, 120.0, 180.0, 240.0))
    payee = who["payee"]
    if rng.random() < 0.05:
        amount = rng.choice((650.0, 1500.0))          # the occasional larger payment
    if rng.random() < 0.05:
        payee = f"FR76{rng.randrange(10**18):018d}"   # ... or a payee never seen before
    return orjson.dumps({"user_id": who["user_id"], "amount": amount, "currency": "EUR",
                         "payee": {"iban": payee, "country": rng.choice(("DE", "FR", "NL"))}})


def users_for(count: int) -> int:
    return max(1, count // PAYMENTS_PER_USER)


def write(path, *, kind: str, count: int, host: str, signer: HmacSigner | None,
          run_tag: str, seed: int = 7) -> int:
    """Write ``count`` requests of ``kind`` ("payments" POSTs or "accounts" GETs); returns count.

    Without a signer the requests are unsigned (for the floor and the peer, which ignore them
    but must carry the same bytes).
    """
    rng = random.Random(f"{seed}:{run_tag}")
    users = users_for(count)
    with open(path, "wb") as out:
        for i in range(count):
            if kind == "payments":
                who = customer(run_tag, i % users)
                method, target, body = "POST", PAYMENTS, payment_body(rng, who)
                extra = {"X-Device-Id": who["device_id"], "X-Channel": "app"}
            else:
                method, target, body = "GET", f"{ACCOUNTS}{i % 5000}", b""
                extra = {}
            headers = dict(extra)
            if signer is not None:
                headers.update(signer.headers(method, f"http://{host}{target}", body))
            out.write(_raw(method, host, target, headers, body) + b"\n")
    return count
