"""``txgate.yaml``: validated once at start into frozen models (interface §3).

Unknown keys are errors, and every error names its key path (``routes[1].upstream: ...``).
Secrets never live in the file: ``TXGATE_REDIS_URL``, ``TXGATE_ADMIN_TOKEN`` and
``TXGATE_MASTER_KEY`` come from the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TIERS = ("client", "otp", "device")
FIELD_TYPES = ("string", "integer", "number", "boolean")
_SOURCE = re.compile(r"^(?:json:\$(?:\.[A-Za-z_][\w-]*|\[\d+\])+|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|principal)$")


# What the rules can tell apart: integers and numbers compare alike.
_RULE_KIND = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean"}


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is one line per problem, each naming its key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return value


class StateConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    cluster: bool = False
    timeout_ms: int = Field(100, gt=0, le=60_000)

    @model_validator(mode="after")
    def _redis_needs_url(self):
        if self.backend == "redis" and not self.url:
            raise ValueError("the redis backend needs url (or TXGATE_REDIS_URL)")
        return self


class RulesConfig(_Strict):
    path: str = "rules/default"
    reload: Literal["watch", "signal", "off"] = "watch"


class CurrenciesConfig(_Strict):
    """The base currency of ``amount_base`` and the rates file (gateway.rates)."""

    base: str = "EUR"
    rates: str | None = None   # none: only amounts in the base currency have a rate

    @field_validator("base")
    @classmethod
    def _iso(cls, value: str) -> str:
        from gateway.currencies import ISO_4217
        if value not in ISO_4217:
            raise ValueError("expected an ISO 4217 currency code")
        return value


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(1_048_576, gt=0)
    upstream_timeout_s: float = Field(10, gt=0)
    # How long SIGTERM waits for in-flight requests before closing them.
    shutdown_grace_s: float = Field(30, ge=0)
    # The longest a client may take to send a request's headers, or its body once the headers
    # are in, and the longest an idle keep-alive connection is kept. Without it a slow client
    # (slowloris) holds a connection and its buffers for as long as it likes.
    client_timeout_s: float = Field(60, gt=0)


class TlsConfig(_Strict):
    """TLS on ``listen``. Files are read at start and again on SIGHUP."""

    cert_file: str
    key_file: str
    # When set, clients may present a certificate signed by this CA; its subject CN names a
    # registered client and proves the client tier (auth.signatures.TlsClientVerifier).
    client_ca_file: str | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable(cls, value):
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value


class SignatureConfig(_Strict):
    max_skew_s: int = Field(300, gt=0)


class TotpConfig(_Strict):
    digits: int = Field(6, ge=6, le=10)
    period: int = Field(30, ge=10, le=300)
    valid_window: int = Field(1, ge=0, le=10)
    max_failures: int = Field(5, ge=1)
    lockout_s: int = Field(900, gt=0)


class AuthConfig(_Strict):
    signature: SignatureConfig = SignatureConfig()
    totp: TotpConfig = TotpConfig()
    challenge_ttl_s: int = Field(300, gt=0)
    master_key_file: str | None = None


class DecisionLogConfig(_Strict):
    path: str | None = "decisions.jsonl"
    redis_stream: str | None = None
    redis_maxlen: int = Field(1_000_000, gt=0)
    queue_size: int = Field(10_000, gt=0)


class FieldSpec(_Strict):
    """Where one transaction attribute comes from and what type it must have."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    source: str = Field(alias="from")
    type: Literal["string", "integer", "number", "boolean"] | None = None
    required: bool = True

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not _SOURCE.match(value):
            raise ValueError('expected "json:$.a.b", "header:Name" or "principal"')
        return value


class MatchConfig(_Strict):
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    @field_validator("methods")
    @classmethod
    def _upper(cls, value):
        return tuple(m.upper() for m in value)

    @model_validator(mode="after")
    def _one_path(self):
        if (self.path is None) == (self.path_prefix is None):
            raise ValueError("exactly one of path or path_prefix")
        for p in (self.path, self.path_prefix):
            if p is not None and not p.startswith("/"):
                raise ValueError("paths start with /")
        return self


class RouteConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    match: MatchConfig
    upstream: str
    transaction: dict[str, FieldSpec] | None = None
    min_tier: Literal["client", "otp", "device"] = "client"
    # An https:// upstream is verified against the system CAs, or against this CA bundle.
    upstream_ca_file: str | None = None
    on_state_error: Literal["fail_closed", "fail_open", "local"] = "fail_closed"
    currency_without_rate: Literal["refuse", "high_risk"] = "refuse"

    @field_validator("upstream")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL (expected http://host:port)")
        return value.rstrip("/")

    @field_validator("upstream_ca_file")
    @classmethod
    def _ca_readable(cls, value):
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("transaction", mode="before")
    @classmethod
    def _short_form(cls, value):
        # `amount: json:$.amount` is the short form of {from: json:$.amount}.
        if isinstance(value, dict):
            return {k: {"from": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("transaction")
    @classmethod
    def _attribute_names(cls, value):
        for name in value or {}:
            if not re.match(r"^[a-z_][a-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not an attribute name (lower_snake_case)")
        return value


class Config(_Strict):
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9090"
    tls: TlsConfig | None = None
    state: StateConfig = StateConfig()
    rules: RulesConfig = RulesConfig()
    currencies: CurrenciesConfig = CurrenciesConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    routes: tuple[RouteConfig, ...] = ()

    @field_validator("listen", "admin_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("routes")
    @classmethod
    def _unique_names(cls, routes):
        names = [r.name for r in routes]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ValueError(f"route name {duplicate!r} is used twice")
        # The forwarder picks an upstream's CA bundle by its URL, so one URL has one bundle.
        bundles: dict[str, str | None] = {}
        for route in routes:
            if bundles.setdefault(route.upstream, route.upstream_ca_file) != route.upstream_ca_file:
                raise ValueError(f"routes naming {route.upstream} disagree on upstream_ca_file")
        # Rules are compiled once for every route: an attribute has one type everywhere.
        kinds: dict[str, tuple[str, str]] = {}
        for route in routes:
            for name, spec in (route.transaction or {}).items():
                kind = _RULE_KIND.get(spec.type or ("number" if name == "amount" else "string"))
                first = kinds.setdefault(name, (kind, route.name))
                if first[0] != kind:
                    raise ValueError(f"attribute {name!r} is a {kind} in route {route.name!r} "
                                     f"but a {first[0]} in route {first[1]!r}")
        return routes


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith("function-"):
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def parse_config(data: object, environ: dict | None = None) -> Config:
    """Validate a parsed YAML document, applying environment overrides of secrets."""
    env = os.environ if environ is None else environ
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level): expected a mapping of keys")
    if env.get("TXGATE_REDIS_URL"):
        state = dict(data.get("state") or {})
        state["url"] = env["TXGATE_REDIS_URL"]
        data = {**data, "state": state}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None, environ: dict | None = None) -> Config:
    """Read ``path`` (or the defaults when None) into a validated Config."""
    if path is None:
        return parse_config({}, environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return parse_config(data, environ)
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None
