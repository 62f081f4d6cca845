"""The admin credential endpoints through a real aiohttp server and client."""

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.admin import setup_admin
from tests.auth.conftest import remember

TOKEN = "admin-token-for-tests-0123456789"
remember(TOKEN)


def _pem() -> str:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def with_client(store, scenario, token=TOKEN):
    async def main():
        app = web.Application()
        setup_admin(app, store, token)
        async with TestClient(TestServer(app)) as client:
            await scenario(client)
    asyncio.run(main())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_bearer_token_is_required(store):
    async def scenario(client):
        assert (await client.get("/admin/credentials")).status == 401
        wrong = await client.get("/admin/credentials", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401 and (await wrong.json())["error"] == "unauthorized"
        assert (await client.get("/admin/credentials", headers=AUTH)).status == 200
    with_client(store, scenario)


def test_no_token_configured_disables_the_admin_api(store):
    async def scenario(client):
        response = await client.get("/admin/credentials", headers={"Authorization": "Bearer "})
        assert response.status == 403
    with_client(store, scenario, token=None)


def test_credential_lifecycle(store):
    async def scenario(client):
        response = await client.post("/admin/clients", json={"id": "shop", "hmac": True},
                                     headers=AUTH)
        assert response.status == 201 and response.headers["Cache-Control"] == "no-store"
        created = await response.json()
        remember(created["secret"])
        assert created["id"] == "shop" and len(created["secret"]) >= 32

        response = await client.post("/admin/clients", json={"id": "shop-ed",
                                                             "public_key": _pem()}, headers=AUTH)
        assert response.status == 201 and "secret" not in await response.json()

        response = await client.post("/admin/totp/alice", headers=AUTH)
        uri = (await response.json())["otpauth_uri"]
        assert response.status == 201 and uri.startswith("otpauth://totp/txgate:alice?secret=")
        remember(uri.split("secret=")[1].split("&")[0])
        response = await client.post("/admin/totp/alice", headers=AUTH)
        assert (response.status, (await response.json())["error"]) == (409, "already_exists")
        response = await client.post("/admin/totp/alice", json={"replace": "yes"}, headers=AUTH)
        assert response.status == 400
        response = await client.post("/admin/totp/alice", json={"replace": True}, headers=AUTH)
        replaced = (await response.json())["otpauth_uri"]
        assert response.status == 201 and replaced != uri
        remember(replaced.split("secret=")[1].split("&")[0])

        response = await client.post("/admin/devices/alice", json={"public_key": _pem(),
                                                                    "name": "phone"},
                                     headers=AUTH)
        assert (response.status, await response.json()) == (201, {"user": "alice",
                                                                   "id": "phone"})

        listing = await (await client.get("/admin/credentials", headers=AUTH)).text()
        assert created["secret"] not in listing and "secret" not in listing
        ids = {(c["kind"], c["id"]) for c in
               (await (await client.get("/admin/credentials", headers=AUTH)).json())
               ["credentials"]}
        assert ids == {("client", "shop"), ("client", "shop-ed"), ("key", "shop"),
                       ("key", "shop-ed"), ("totp", "alice"), ("device", "alice/phone")}

        response = await client.delete("/admin/credentials/device/alice/phone", headers=AUTH)
        assert response.status == 200
        assert await store.device_key("alice", "phone") is None
        response = await client.delete("/admin/credentials/device/alice/phone", headers=AUTH)
        assert response.status == 409
    with_client(store, scenario)


def test_errors_are_json_with_codes(store):
    async def scenario(client):
        cases = [
            (client.post("/admin/clients", data="{", headers=AUTH), 400),
            (client.post("/admin/clients", json={"id": "x"}, headers=AUTH), 400),
            (client.post("/admin/clients", json={"id": "x", "hmac": True,
                                                 "public_key": _pem()}, headers=AUTH), 400),
            # A key given as null is not "no key": found by the admin API fuzz test.
            (client.post("/admin/clients", json={"id": "x", "hmac": True, "public_key": None},
                         headers=AUTH), 400),
            (client.post("/admin/clients/x/keys", json={"hmac": True, "public_key": None},
                         headers=AUTH), 400),
            (client.post("/admin/devices/alice", json={"public_key": "junk"}, headers=AUTH),
             400),
            (client.delete("/admin/credentials/client/nobody", headers=AUTH), 404),
            (client.delete("/admin/credentials/gadget/x", headers=AUTH), 400),
        ]
        for request, status in cases:
            response = await request
            body = await response.json()
            assert response.status == status and set(body) == {"error", "message"}
        await client.post("/admin/clients", json={"id": "dup", "hmac": True}, headers=AUTH)
        response = await client.post("/admin/clients", json={"id": "dup", "hmac": True},
                                     headers=AUTH)
        assert response.status == 409 and (await response.json())["error"] == "already_exists"
    with_client(store, scenario)


def test_key_roll_and_staged_totp_through_the_admin_api(store, clock):
    from auth.totp import Totp

    async def scenario(client):
        await client.post("/admin/clients", json={"id": "shop", "hmac": True}, headers=AUTH)
        added = await client.post("/admin/clients/shop/keys", headers=AUTH,
                                  json={"hmac": True, "key_id": "shop-2", "expires_in_s": 86400})
        body = await added.json()
        remember(body["secret"])
        assert added.status == 201 and added.headers["Cache-Control"] == "no-store"
        assert (body["client"], body["key_id"]) == ("shop", "shop-2")
        ed = await client.post("/admin/clients/shop/keys", json={"public_key": _pem()},
                               headers=AUTH)
        assert ed.status == 201 and "secret" not in await ed.json()
        for bad, status in (({"hmac": True, "expires_in_s": 0}, 400),
                            ({"hmac": True, "expires_in_s": 10 ** 30}, 400),
                            ({"hmac": True, "key_id": None}, 400),
                            ({"hmac": True, "key_id": "shop-2"}, 409),
                            ({}, 400)):
            r = await client.post("/admin/clients/shop/keys", json=bad, headers=AUTH)
            assert r.status == status, (bad, await r.text())
        r = await client.post("/admin/clients/nobody/keys", json={"hmac": True}, headers=AUTH)
        assert r.status == 404

        listing = (await (await client.get("/admin/credentials", headers=AUTH)).json())
        keys = {c["id"]: c for c in listing["credentials"] if c["kind"] == "key"}
        assert keys["shop-2"]["client"] == "shop" and keys["shop-2"]["expires"] == \
            clock.now + 86400
        revoked = await client.delete("/admin/credentials/key/shop-2", headers=AUTH)
        assert (await revoked.json()) == {"kind": "key", "id": "shop-2", "revoked": True}
        again = await client.delete("/admin/credentials/key/shop-2", headers=AUTH)
        assert again.status == 409

        totp = Totp()
        first = await client.post("/admin/totp/alice", json={}, headers=AUTH)
        assert (await first.json())["staged"] is False
        refused = await client.post("/admin/totp/alice", json={}, headers=AUTH)
        assert refused.status == 409
        staged = await client.post("/admin/totp/alice", json={"replace": True}, headers=AUTH)
        body = await staged.json()
        assert staged.status == 201 and body["staged"] is True
        secret = body["otpauth_uri"].split("secret=")[1].split("&")[0]
        remember(secret)
        wrong = await client.post("/admin/totp/alice/confirm", json={"code": "000000x"},
                                  headers=AUTH)
        assert wrong.status == 400 and (await wrong.json())["error"] == "invalid_code"
        code = totp.code(secret, totp.step(clock.now))
        remember(code)
        ok = await client.post("/admin/totp/alice/confirm", json={"code": code}, headers=AUTH)
        assert (ok.status, await ok.json()) == (200, {"user": "alice", "confirmed": True})
        assert await store.totp_secret("alice") == secret
        none = await client.post("/admin/totp/bob/confirm", json={"code": code}, headers=AUTH)
        assert none.status == 404
    with_client(store, scenario)
