"""RFC 9421 HTTP Message Signatures: who signed this request?

Policy (docs/protocol.md, client signatures): the covered components must include ``"@method"``, the target
(``"@target-uri"``, or ``"@authority"`` with ``"@path"`` or ``"@request-target"``) and, when
the request has a body, ``"content-digest"`` (RFC 9530 ``sha-256``/``sha-512``, checked against
the body). We are stricter than the contract in one place: when the target has a query string
and only ``"@path"`` is covered, ``"@query"`` must be covered too, or the query could be changed
under a valid signature. ``keyid`` and ``created`` are required; ``created`` must lie within
``max_skew_s`` of our clock in both directions and ``expires``, when present, must not have
passed. ``alg`` is ``hmac-sha256`` or ``ed25519``; when absent the key's registered type decides,
and when present it must match that type (no algorithm confusion).

Labels: the client picks any label. Signatures are examined in ``Signature-Input`` order and the
first one whose parameters satisfy the policy is verified; its result is the answer (we do not
fall through to another label after a cryptographic failure). When none satisfies the policy,
the first one's policy failure is reported.

Single use: ``check`` does the pure work (parsing, digest, cryptography) and reads the key; it
returns the claims — a hash of the signature bytes and the nonce, when there is one, each to be
kept for twice the skew window, the longest a signature can stay acceptable — which the
pipeline sends in the request's one state round trip, only after the cryptography passed (so
forged requests cannot burn a client's nonces).

TLS: with ``tls.client_ca_file``, a request without ``Signature-Input`` on a connection whose
verified certificate names an active registered client proves the client tier that way; the
gateway passes that client id to ``check`` (docs/security.md, "Mutual TLS").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

import http_sfv

from auth import sfv
from auth.credentials import CredentialStore
from auth.signing_keys import ClientKey
from auth.errors import AuthError, invalid_signature

log = logging.getLogger("txgate.signatures")
_ALGS = {"hmac-sha256": "hmac", "ed25519": "ed25519"}
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_SUPPORTED_DERIVED = frozenset({"@method", "@target-uri", "@authority", "@scheme",
                                "@request-target", "@path", "@query"})
_TARGET_FULL = frozenset({"@target-uri"})
_FIELD_PARAMS = frozenset({"key", "sf"})
# host (a bracketed IPv6 literal may contain ":") and an optional port
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:]*)(?::(\d*))?")


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A signature that passed every stateless check; ``claims`` are (state key, ttl ms) pairs
    that must all be claimed for the first time before the request is accepted (the pipeline
    sends them in the request's one state round trip)."""

    client_id: str
    label: str
    claims: tuple[tuple[str, int], ...]
    key_id: str | None = None          # the RFC 9421 keyid (None for a TLS certificate)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Repeated field lines are one field whose values join with ", " (RFC 9110 §5.3).
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values = getall(name, None)
        return ", ".join(v.strip() for v in values) if values else None
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate.strip()
        return None
    return value.strip()


def _component_id(item) -> str:
    """The serialized component identifier; the common parameterless case without the
    generic (slow) serializer. A parsed sf-string holds no control characters."""
    value = item.value
    if not item.params and isinstance(value, str) and "\\" not in value and '"' not in value:
        return f'"{value}"'
    return str(item)


def _parse_dictionary(text: str) -> http_sfv.Dictionary | sfv.Dictionary:
    fast = sfv.parse_dictionary(text)
    if fast is not None:
        return fast
    # Not in the canonical subset: the general parser accepts or refuses it.
    parsed = http_sfv.Dictionary()
    try:
        parsed.parse(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise invalid_signature("malformed") from None
    return parsed


class _Request:
    """Component values of one request, computed on first use."""

    __slots__ = ("method", "url", "headers", "_parts")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]):
        self.method, self.url, self.headers = method, url, headers
        self._parts = None

    @property
    def parts(self):
        if self._parts is None:
            parts = urlsplit(self.url)
            if not parts.scheme or not parts.netloc:
                raise invalid_signature("malformed")
            self._parts = parts
        return self._parts

    def has_query(self) -> bool:
        return bool(self.parts.query)

    def derived(self, name: str) -> str:
        parts = self.parts
        if name == "@method":
            return self.method
        if name == "@target-uri":
            return self.url
        if name == "@scheme":
            return parts.scheme.lower()
        if name == "@authority":
            host, port = _HOST_PORT.fullmatch(parts.netloc.rpartition("@")[2].lower()).groups()
            if port and port.lstrip("0") == _DEFAULT_PORTS.get(parts.scheme.lower()):
                port = None
            return f"{host}:{port}" if port else host
        path = parts.path or "/"
        if name == "@path":
            return path
        if name == "@query":
            return "?" + parts.query
        # "@request-target": the origin form the client sent.
        return path + ("?" + parts.query if parts.query else "")

    def field(self, item: http_sfv.Item) -> str:
        name = item.value
        if name != name.lower():
            raise invalid_signature("malformed")
        params = item.params
        if set(params) - _FIELD_PARAMS:
            raise invalid_signature("unsupported_component")      # bs, tr, req
        value = _header(self.headers, name)
        if value is None:
            raise invalid_signature("missing_component")
        if "key" in params:
            member = _parse_dictionary(value).get(params["key"])
            if member is None:
                raise invalid_signature("missing_component")
            return str(member)
        if "sf" in params:
            # Only Content-Digest has a type we know here (a Dictionary, RFC 9530).
            if name != "content-digest":
                raise invalid_signature("unsupported_component")
            return str(_parse_dictionary(value))
        return value


def _check_digest(headers: Mapping[str, str], body: bytes) -> None:
    """Content-Digest must name at least one of sha-256/sha-512 and every one named must match."""
    value = _header(headers, "content-digest")
    if value is None:
        raise invalid_signature("missing_component")
    known = 0
    for algorithm, member in _parse_dictionary(value).items():
        digest = _DIGESTS.get(algorithm)
        if digest is None:
            continue            # RFC 9530: unknown algorithms are ignored
        if not isinstance(member.value, bytes) or not hmac.compare_digest(
                digest(body).digest(), member.value):
            raise invalid_signature("bad_digest")
        known += 1
    if not known:
        raise invalid_signature("bad_digest")


class SignatureVerifier:
    """Who is calling: an RFC 9421 signature of a registered client, or else a verified TLS
    client certificate naming one (``tls.client_ca_file``)."""

    def __init__(self, store: CredentialStore, max_skew_s: int = 300, clock=time.time):
        self._store = store
        self._skew = max_skew_s
        self._clock = clock
        # A signature is acceptable while |now - created| <= skew: at most 2*skew seconds.
        self._claim_ttl_ms = (2 * max_skew_s + 1) * 1000

    async def check(self, method: str, url: str, headers: Mapping[str, str], body: bytes,
                    tls_client: str | None = None) -> VerifiedSignature:
        """Every check that needs no state write: parameters, digest, signature; raises
        AuthError(401, invalid_signature). ``tls_client`` is the client a verified certificate
        of the connection names (``client_id_from_certificate``), None without one."""
        sig_input = _header(headers, "signature-input")
        if tls_client is not None and sig_input is None:
            # RFC 9421 wins whenever it is present. A certificate alone proves the client tier
            # only for an active registered client (revoking the client revokes it); TLS binds
            # the request to the connection, so there is nothing to claim.
            if not await self._store.client_active(tls_client):
                raise invalid_signature("unknown_certificate_client")
            return VerifiedSignature(tls_client, "tls", ())
        sig_header = _header(headers, "signature")
        if not sig_input or not sig_header:
            raise invalid_signature("missing_signature")
        inputs = _parse_dictionary(sig_input)
        signatures = _parse_dictionary(sig_header)
        request = _Request(method, url, headers)

        first_error = None
        for label, member in inputs.items():
            try:
                names, keyid, alg, nonce = self._policy(member, request, body)
                signature = signatures.get(label)
                if signature is None or not isinstance(signature.value, bytes):
                    raise invalid_signature("missing_signature")
            except AuthError as exc:
                first_error = first_error or exc
                continue
            try:
                return await self._verify_one(label, member, names, keyid, alg, nonce,
                                              signature.value, request, headers, body)
            except AuthError as exc:
                exc.client_id = keyid
                raise
        raise first_error or invalid_signature("missing_signature")

    def _policy(self, member, request: _Request, body: bytes):
        """The label's parameters and covered components against the policy (no crypto)."""
        if not isinstance(member, (http_sfv.InnerList, sfv.InnerList)):
            raise invalid_signature("malformed")
        params = member.params
        keyid, created = params.get("keyid"), params.get("created")
        alg, nonce, expires = params.get("alg"), params.get("nonce"), params.get("expires")
        if not isinstance(keyid, str) or type(created) is not int:
            raise invalid_signature("malformed")
        if (alg is not None and not isinstance(alg, str)) or \
                (nonce is not None and not isinstance(nonce, str)) or \
                (expires is not None and type(expires) is not int):
            raise invalid_signature("malformed")
        now = self._clock()
        if now - created > self._skew or (expires is not None and now > expires):
            raise invalid_signature("expired")
        if created - now > self._skew:
            raise invalid_signature("future")
        if alg is not None and alg not in _ALGS:
            raise invalid_signature("unsupported_alg")

        names = set()
        if len({_component_id(item) for item in member}) != len(member):
            raise invalid_signature("malformed")          # RFC 9421 §2.5: no duplicates
        for item in member:
            if not isinstance(item.value, str):
                raise invalid_signature("malformed")
            if item.value.startswith("@"):
                if item.value not in _SUPPORTED_DERIVED or item.params:
                    raise invalid_signature("unsupported_component")
            names.add(item.value)
        target = "@target-uri" in names or (
            "@authority" in names and ("@path" in names or "@request-target" in names))
        query = not ("@path" in names and "@target-uri" not in names
                     and "@request-target" not in names and "@query" not in names
                     and request.has_query())
        if "@method" not in names or not target or not query:
            raise invalid_signature("missing_component")
        if body and "content-digest" not in names:
            raise invalid_signature("missing_component")
        return names, keyid, alg, nonce

    async def _verify_one(self, label, member, names, keyid, alg, nonce, signature: bytes,
                          request: _Request, headers, body: bytes) -> VerifiedSignature:
        key: ClientKey | None = await self._store.client_key(keyid)
        if key is None:
            raise invalid_signature("unknown_key")
        if key.expires is not None and self._clock() >= key.expires:
            # The operator must learn which key to replace; the keyid is not a secret.
            log.warning("signature refused: key %s of client %s expired", keyid, key.client_id)
            raise invalid_signature("key_expired")
        if alg is not None and _ALGS[alg] != key.type:
            raise invalid_signature("alg_mismatch")
        if "content-digest" in names:
            _check_digest(headers, body)

        lines = []
        for item in member:
            value = request.derived(item.value) if item.value.startswith("@") \
                else request.field(item)
            if "\n" in value or "\r" in value:
                raise invalid_signature("malformed")
            lines.append(f"{_component_id(item)}: {value}")
        lines.append(f'"@signature-params": {member}')
        try:
            base = "\n".join(lines).encode("ascii")
        except UnicodeEncodeError:
            raise invalid_signature("malformed") from None
        if not key.verify(base, signature):
            raise invalid_signature("bad_signature")

        tag = f"{{c:{keyid}}}"
        claims = [(f"{tag}:sig:{hashlib.sha256(signature).hexdigest()[:32]}", self._claim_ttl_ms)]
        if nonce is not None:
            claims.append((f"{tag}:nonce:{hashlib.sha256(nonce.encode()).hexdigest()[:32]}",
                           self._claim_ttl_ms))
        return VerifiedSignature(key.client_id, label, tuple(claims), keyid)


_URI_PREFIX = "txgate:client:"


def client_id_from_certificate(peercert: dict | None) -> str | None:
    """The client id a verified certificate names: a ``URI:txgate:client:<id>`` SAN, else the
    subject CN. The URI form cannot collide with a host name the same CA may also sign."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(_URI_PREFIX) and len(value) > len(_URI_PREFIX):
            return value[len(_URI_PREFIX):]
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The RFC 9530 ``Content-Digest`` value for ``body`` (for clients, tests and docs)."""
    digest = base64.b64encode(_DIGESTS[algorithm](body).digest()).decode()
    return f"{algorithm}=:{digest}:"
