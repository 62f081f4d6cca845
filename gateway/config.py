"""``txgate.yaml``: validated once at start into frozen models (docs/protocol.md §3, docs/configuration.md).

Unknown keys are errors, and every error names its key path (``routes[1].upstream: ...``) and,
read from a file, its line (``txgate.yaml:12: routes[1].upstream: ...``). Relative paths in a
file (rules, decision log, TLS and key files) are relative to the file, not to the working
directory, so that ``txgate run --config /etc/txgate/txgate.yaml`` means the same from anywhere.
Secrets never live in the file: ``TXGATE_REDIS_URL``, ``TXGATE_ADMIN_TOKEN`` and
``TXGATE_MASTER_KEY`` come from the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auth.tiers import TIERS
from rules import DEFAULT_PACK, TYPE_KIND

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_RULES = str(DEFAULT_PACK)
# The highest limits.max_amount: one such amount, in the counters' units of 1e-4, stays below
# state.window.NUMBER_CAP (2**52), so every increment is exact.
MAX_AMOUNT_LIMIT = 100_000_000_000
_SOURCE = re.compile(r"^(?:json:\$(?:\.[A-Za-z_][\w-]*|\[\d+\])+|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|principal)$")


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is one line per problem, each naming its key path."""

    def __init__(self, message: str, problems: tuple[tuple[tuple, str], ...] = ()):
        super().__init__(message)
        self.problems = problems   # (key path as a pydantic loc, message) per problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return value


def _split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


class SentinelConfig(_Strict):
    """Redis Sentinel: the sentinels to ask and the name of the master they watch."""
    master: str = Field(min_length=1)
    nodes: list[str] = Field(min_length=1)     # HOST:PORT of each sentinel

    @field_validator("nodes")
    @classmethod
    def _addresses(cls, nodes: list[str]) -> list[str]:
        return [_host_port(node) for node in nodes]


class StateConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    cluster: bool = False
    sentinel: SentinelConfig | None = None
    timeout_ms: int = Field(100, gt=0, le=60_000)
    # Replicas that must hold a security record (claims, TOTP steps, attempts, lockouts,
    # challenges, credentials) before the answer that depends on it leaves (Redis WAIT).
    # None: 1 with sentinel or cluster (deployments that fail over), 0 on a single server.
    wait_replicas: int | None = Field(None, ge=0, le=16)

    @model_validator(mode="after")
    def _redis_needs_url(self):
        if self.backend == "redis" and not self.url and self.sentinel is None:
            raise ValueError("the redis backend needs url (or TXGATE_REDIS_URL) or sentinel")
        if self.cluster and self.sentinel is not None:
            raise ValueError("cluster and sentinel exclude each other")
        return self

    @property
    def replicas(self) -> int:
        """The replicas a security record waits for (``wait_replicas`` with its default)."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if self.cluster or self.sentinel is not None else 0

    def backend_options(self) -> dict:
        """The keyword arguments of ``state.create_backend`` this section gives."""
        sentinel = None if self.sentinel is None else (
            self.sentinel.master, [_split_host_port(node) for node in self.sentinel.nodes])
        return dict(url=self.url, cluster=self.cluster, timeout_ms=self.timeout_ms,
                    sentinel=sentinel, wait_replicas=self.replicas)


class RulesConfig(_Strict):
    path: str = DEFAULT_RULES
    # A second rule set that decides every transaction too, never enforced (champion/challenger).
    challenger: str | None = None
    reload: Literal["watch", "signal", "off"] = "watch"
    # The zone of the built-ins `hour` and `weekday`: rules about the night mean the customers'
    # night, whatever zone the servers run in.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str) -> str:
        zone_of(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return zone_of(self.timezone)


def zone_of(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it otherwise. ``localtime`` is refused:
    it is whatever the machine is set to, which is what an explicit zone is there to avoid."""
    try:
        if name != "localtime":
            return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin, "
                     "America/New_York or UTC)")


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


# Velocity (provisional first-seen marks) reads it too, when no config is at hand.
UPSTREAM_TIMEOUT_S = 10.0


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(1_048_576, gt=0)
    upstream_timeout_s: float = Field(UPSTREAM_TIMEOUT_S, gt=0)
    # How long SIGTERM waits for in-flight requests before closing them.
    shutdown_grace_s: float = Field(30, ge=0)
    # The longest a client may take to send a request's headers, or its body once the headers
    # are in, and the longest an idle keep-alive connection is kept. Without it a slow client
    # (slowloris) holds a connection and its buffers for as long as it likes.
    client_timeout_s: float = Field(60, gt=0)
    # The largest amount a transaction may carry (400 above it). Counters keep sums in units
    # of 1e-4 and saturate at 2**52 of them (about 4.5e11): at this default a window holds 45
    # maximal payments before a sum saturates, and no value can overflow the store.
    max_amount: float = Field(10_000_000_000, gt=0, le=MAX_AMOUNT_LIMIT)


class TlsConfig(_Strict):
    """TLS on ``listen``. Files are read at start and again on SIGHUP."""

    cert_file: str
    key_file: str
    # When set, clients may present a certificate signed by this CA; its subject CN names a
    # registered client and proves the client tier (auth.signatures.SignatureVerifier).
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
    # Wrong step-up answers (code or device) before a lock of lockout_s: max_failures for one
    # user through one client (another client's guesses cannot lock the user out there),
    # max_failures_per_user for one user through all clients together.
    max_failures: int = Field(5, ge=1)
    max_failures_per_user: int = Field(10, ge=1)
    lockout_s: int = Field(900, gt=0)

    @model_validator(mode="after")
    def _user_limit_covers_one_client(self):
        if self.max_failures_per_user < self.max_failures:
            raise ValueError("max_failures_per_user is below max_failures")
        return self


class ClientAttemptsConfig(_Strict):
    """Step-up answers one client may send across all its users per window (429 above)."""

    max: int = Field(100, ge=1)
    window_s: int = Field(60, gt=0)


class AuthConfig(_Strict):
    signature: SignatureConfig = SignatureConfig()
    totp: TotpConfig = TotpConfig()
    client_attempts: ClientAttemptsConfig = ClientAttemptsConfig()
    challenge_ttl_s: int = Field(300, gt=0)
    master_key_file: str | None = None


class DecisionLogConfig(_Strict):
    path: str | None = "decisions.jsonl"
    redis_stream: str | None = None
    redis_maxlen: int = Field(1_000_000, gt=0)
    queue_size: int = Field(10_000, gt=0)


class ReadinessConfig(_Strict):
    # "serving": /readyz stays 200 while the state store is down if a route can still serve
    # (on_state_error fail_open or local), so a load balancer keeps the gateway in rotation;
    # "unready": 503 whenever the store is down.
    state_down: Literal["serving", "unready"] = "serving"


class FieldSpec(_Strict):
    """Where one transaction attribute comes from and what type it must have."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    source: str = Field(alias="from")
    type: Literal["string", "integer", "number", "boolean"] | None = None
    required: bool = True
    # Text steps applied in order before counters and rules (gateway.transaction.NORMALIZERS).
    normalize: tuple[Literal["nfkc", "casefold", "lower", "upper", "strip", "ascii"], ...] = ()

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
    # The Host values (signed as @authority) this route accepts; any when unset. "host"
    # matches every port, "host:port" only that one.
    hosts: tuple[str, ...] | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value):
        if value is not None:
            if not value:
                raise ValueError("hosts: give at least one host, or leave it out for any")
            for host in value:
                if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?",
                                    host):
                    raise ValueError(f"{host!r} is not a host name or host:port")
            value = tuple(h.lower() for h in value)
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value):
        methods = tuple(m.upper() for m in value)
        unknown = [m for m in methods if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} (expected {', '.join(HTTP_METHODS)})")
        return methods

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
    min_tier: Literal[TIERS] = "client"
    # An https:// upstream is verified against the system CAs, or against this CA bundle.
    upstream_ca_file: str | None = None
    on_state_error: Literal["fail_closed", "fail_open", "local"] = "fail_closed"
    currency_without_rate: Literal["refuse", "high_risk"] = "refuse"

    @field_validator("upstream")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port   # raises on a port that is not a number in range
        except ValueError:
            raise ValueError("not a URL: bad port (expected http://host:port)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL (expected http://host:port)")
        if parts.query or parts.fragment:
            raise ValueError("an upstream is scheme://host[:port][/path], without ? or #")
        if parts.username is not None or parts.password is not None:
            # The forwarder sends no credentials of its own: a user:password here would be
            # silently dropped (the client's own Authorization header passes through).
            raise ValueError("an upstream URL carries no credentials (user:password@)")
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
        for name, spec in (value or {}).items():
            if not re.match(r"^[a-z_][a-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not an attribute name (lower_snake_case)")
            if spec.normalize and (spec.type not in (None, "string") or
                                   name == "amount" and spec.type is None):
                raise ValueError(f"{name}: normalize applies to text fields only")
        return value


class Config(_Strict):
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9090"
    # The host clients know this gateway by: upstreams get it as X-Forwarded-Host (and in
    # Forwarded) on routes without match.hosts, where the client's Host says nothing trusted.
    public_host: str | None = None
    tls: TlsConfig | None = None
    state: StateConfig = StateConfig()
    rules: RulesConfig = RulesConfig()
    currencies: CurrenciesConfig = CurrenciesConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    readiness: ReadinessConfig = ReadinessConfig()
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
                kind = TYPE_KIND[spec.type or ("amount" if name == "amount" else "string")]
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
        problems = tuple((e["loc"], f"{_key_path(e['loc'])}: {_describe(e)}")
                         for e in exc.errors())
        raise ConfigError("\n".join(line for _, line in problems), problems) from None


# Keys holding file paths: in a file, a relative one is relative to the file's directory.
_PATH_KEYS = (("rules", "path"), ("rules", "challenger"), ("decision_log", "path"), ("auth", "master_key_file"),
              ("tls", "cert_file"), ("tls", "key_file"), ("tls", "client_ca_file"),
              ("currencies", "rates"))


def _relative_to(data: dict, base: Path) -> dict:
    def resolve(value):
        return str(base / value) if isinstance(value, str) and not Path(value).is_absolute() \
            else value

    out = dict(data)
    for section, key in _PATH_KEYS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {**out[section], key: resolve(out[section][key])}
    if isinstance(out.get("routes"), list):
        out["routes"] = [{**r, "upstream_ca_file": resolve(r["upstream_ca_file"])}
                         if isinstance(r, dict) and "upstream_ca_file" in r else r
                         for r in out["routes"]]
    return out


def key_line(data, loc: tuple) -> int:
    """The line of the deepest key of ``loc`` that the file has (else of its parent)."""
    # Imported here: the rules package loads the rule engine, which parse_config never needs.
    from rules.yamlsrc import LineDict, LineList
    line, node = getattr(data, "line", 1), data
    for part in loc:
        if isinstance(node, LineDict) and part in node.key_lines:
            line, node = node.key_lines[part], node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line, node = node.item_lines[part], node[part]
        elif not isinstance(part, str) or not part.startswith("function-"):
            break
    return line


def load_config(path: str | Path | None, environ: dict | None = None) -> Config:
    """Read ``path`` (or the defaults when None) into a validated Config; every error is one
    ``FILE:LINE: key.path: message`` line."""
    from rules.yamlsrc import load_yaml   # see key_line
    if path is None:
        return parse_config({}, environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    # The rules' YAML reader: it keeps lines, refuses duplicate keys, and reads `off` as a
    # word, not as false (`reload: off`).
    data, problems = load_yaml(text)
    if problems:
        raise ConfigError("\n".join(f"{path}:{line}: not valid YAML: "
                                    f"{message.removeprefix('YAML syntax error: ')}"
                                    for line, message in problems)) from None
    resolved = _relative_to(data, Path(path).resolve().parent) if isinstance(data, dict) else data
    try:
        return parse_config(resolved, environ)
    except ConfigError as exc:
        lines = [f"{path}:{key_line(data, loc)}: {message}" for loc, message in exc.problems] \
            or [f"{path}: {line}" for line in str(exc).splitlines()]
        raise ConfigError("\n".join(lines), exc.problems) from None
