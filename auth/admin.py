"""Admin HTTP endpoints for credentials (mounted by the gateway on the admin listener).

    POST   /admin/clients                   {"id", "hmac": true | "public_key": PEM}
                                            -> 201 {"id", "secret"?}  (the secret only here)
    POST   /admin/clients/{client}/keys     {"hmac": true | "public_key": PEM, "key_id"?,
                                             "expires_in_s"?} -> 201 {"client", "key_id", "secret"?}
    POST   /admin/totp/{user}               {"secret"?, "replace"?}
                                            -> 201 {"user", "otpauth_uri", "staged"}
    POST   /admin/totp/{user}/confirm       {"code"} -> {"user", "confirmed"}
    POST   /admin/devices/{user}            {"public_key", "name"?} -> 201 {"user", "id"}
    GET    /admin/credentials               -> {"credentials": [...]}  (never a secret)
    DELETE /admin/credentials/{kind}/{id}   -> {"kind", "id", "revoked"}  (device id: user/device,
                                            key: its keyid; a client: with all its keys)

Errors are ``{"error": code, "message": ...}`` with 400/404/409. Every /admin/ path requires
``Authorization: Bearer <TXGATE_ADMIN_TOKEN>`` (``bearer_middleware``); without a configured
token the admin API is refused altogether rather than left open.
"""

from __future__ import annotations

import hmac

from aiohttp import HttpVersion11, web

from auth.credentials import CredentialStore
from auth.errors import CredentialError
from auth.totp import Totp

# Answers that carry a secret must not be stored by any cache on the way.
_NO_STORE = {"Cache-Control": "no-store"}
_MAX_KEY_LIFETIME_S = 10 * 365 * 86400


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers)


async def _json_object(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise CredentialError("body is not JSON", 400, "invalid_request") from None
    if not isinstance(data, dict):
        raise CredentialError("body must be a JSON object", 400, "invalid_request")
    return data


@web.middleware
async def _credential_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except CredentialError as exc:
        return _error(exc.status, exc.code, str(exc))


def bearer_middleware(token: str | None):
    """Require ``Authorization: Bearer <token>`` on /admin/ paths (constant-time compare)."""
    expected = token.encode() if token else None

    @web.middleware
    async def check(request: web.Request, handler):
        if not request.path.startswith("/admin/"):
            return await handler(request)
        if expected is None:
            return _error(403, "admin_disabled", "no admin token is configured "
                          "(TXGATE_ADMIN_TOKEN)")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            return _error(401, "unauthorized", "admin bearer token required",
                          {"WWW-Authenticate": 'Bearer realm="txgate-admin"'})
        return await handler(request)

    return check


def routes(store: CredentialStore, totp: Totp | None = None,
           issuer: str = "txgate") -> list[web.RouteDef]:
    """The admin credential routes. Wrap them with ``bearer_middleware`` (``setup_admin`` does);
    CredentialError from a handler becomes its JSON error through ``error_middleware``."""
    totp = totp or Totp()

    async def add_client(request: web.Request) -> web.Response:
        data = await _json_object(request)
        client_id, public_key = data.get("id"), data.get("public_key")
        if not isinstance(client_id, str):
            raise CredentialError("id: expected a string")
        # A key present as null is a bad key, not "no key" (as key_id below): with "hmac": true
        # it would otherwise pass as the one choice given.
        if (data.get("hmac") is True) == ("public_key" in data):
            raise CredentialError('give exactly one of "hmac": true or "public_key"')
        if data.get("hmac") is True:
            secret = await store.add_hmac_client(client_id)
            return web.json_response({"id": client_id, "secret": secret}, status=201,
                                     headers=_NO_STORE)
        if not isinstance(public_key, str):
            raise CredentialError("public_key: expected a PEM string")
        await store.add_public_key_client(client_id, public_key)
        return web.json_response({"id": client_id}, status=201)

    async def add_key(request: web.Request) -> web.Response:
        client_id = request.match_info["client"]
        data = await _json_object(request)
        public_key, key_id = data.get("public_key"), data.get("key_id")
        expires_in_s = data.get("expires_in_s")
        if (data.get("hmac") is True) == ("public_key" in data):
            raise CredentialError('give exactly one of "hmac": true or "public_key"')
        if "public_key" in data and not isinstance(public_key, str):
            raise CredentialError("public_key: expected a PEM string")
        if "key_id" in data and not isinstance(key_id, str):   # null is not "no key id"
            raise CredentialError("key_id: expected a string")
        if "expires_in_s" in data and (type(expires_in_s) is not int
                                       or not 1 <= expires_in_s <= _MAX_KEY_LIFETIME_S):
            raise CredentialError(f"expires_in_s: expected an integer from 1 to "
                                  f"{_MAX_KEY_LIFETIME_S} (10 years)")
        key_id, secret = await store.add_key(client_id, hmac_secret=public_key is None,
                                             public_key_pem=public_key, key_id=key_id,
                                             expires_in_s=expires_in_s)
        if secret is None:
            return web.json_response({"client": client_id, "key_id": key_id}, status=201)
        return web.json_response({"client": client_id, "key_id": key_id, "secret": secret},
                                 status=201, headers=_NO_STORE)

    async def enroll_totp(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        data = await _json_object(request)
        secret = data.get("secret")
        if "secret" in data and not isinstance(secret, str):   # null is not "no secret"
            raise CredentialError("secret: expected a base32 string")
        replace = data.get("replace", False)
        if not isinstance(replace, bool):
            raise CredentialError("replace: expected true or false")
        staged = replace and await store.has_totp(user)
        secret = await store.enroll_totp(user, secret, replace=replace)
        return web.json_response(
            {"user": user, "otpauth_uri": totp.provisioning_uri(secret, user, issuer),
             "staged": staged}, status=201, headers=_NO_STORE)

    async def confirm_totp(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        code = (await _json_object(request)).get("code")
        if not isinstance(code, str):
            raise CredentialError("code: expected a string of digits")
        await store.confirm_totp(user, code, totp)
        return web.json_response({"user": user, "confirmed": True})

    async def add_device(request: web.Request) -> web.Response:
        user = request.match_info["user"]
        data = await _json_object(request)
        public_key, name = data.get("public_key"), data.get("name")
        if not isinstance(public_key, str):
            raise CredentialError("public_key: expected a PEM string")
        if "name" in data and not isinstance(name, str):   # null is not "no name"
            raise CredentialError("name: expected a string")
        device_id = await store.add_device(user, public_key, name)
        return web.json_response({"user": user, "id": device_id}, status=201)

    async def list_credentials(request: web.Request) -> web.Response:
        return web.json_response({"credentials": [
            {"kind": c.kind, "id": c.id, "type": c.type, "user": c.user, "client": c.client,
             "created": c.created, "expires": c.expires, "revoked": c.revoked,
             "pending": c.pending} for c in await store.list()]})

    async def revoke(request: web.Request) -> web.Response:
        kind, record_id = request.match_info["kind"], request.match_info["id"]
        await store.revoke(kind, record_id)
        return web.json_response({"kind": kind, "id": record_id, "revoked": True})

    return [
        route("POST", "/admin/clients", add_client),
        route("POST", "/admin/clients/{client}/keys", add_key),
        route("POST", "/admin/totp/{user}", enroll_totp),
        route("POST", "/admin/totp/{user}/confirm", confirm_totp),
        route("POST", "/admin/devices/{user}", add_device),
        route("GET", "/admin/credentials", list_credentials),
        route("DELETE", "/admin/credentials/{kind}/{id:.+}", revoke),
    ]


async def _expect(request: web.Request) -> None:
    # aiohttp's default, except that an expectation other than 100-continue is ignored (RFC
    # 9110 §10.1.1 allows it) instead of answered with a text 417 outside the API's JSON.
    if request.version == HttpVersion11 and \
            request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0   # the answer's own size starts after it


def route(method: str, path: str, handler) -> web.RouteDef:
    """An admin API route: every one answers JSON, whatever the request's Expect says (a GET
    answers HEAD too, as aiohttp's ``add_get`` does)."""
    if method == "GET":
        return web.get(path, handler, expect_handler=_expect)
    return web.route(method, path, handler, expect_handler=_expect)


error_middleware = _credential_errors


def setup_admin(app: web.Application, store: CredentialStore, token: str | None,
                totp: Totp | None = None, issuer: str = "txgate") -> None:
    """Add the routes and both middlewares (bearer check first) to the admin ``app``."""
    app.middlewares.append(bearer_middleware(token))
    app.middlewares.append(error_middleware)
    app.add_routes(routes(store, totp, issuer))
