"""Match a request to its configured route: exact paths first, then the longest prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from gateway.config import Config, RouteConfig
from gateway.errors import InvalidRequest
from gateway.headers import HeaderPolicy
from gateway.transaction import TransactionExtractor


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    extractor: TransactionExtractor
    methods: frozenset[str]
    headers: HeaderPolicy

    @property
    def name(self) -> str:
        return self.config.name

    def host_for(self, host: str) -> str | None:
        """The configured entry of ``match.hosts`` that ``host`` (the request's Host) is,
        or None when it is none of them."""
        host = host.lower()
        bare = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
        for entry in self.config.match.hosts:
            if entry == host or entry == bare:
                return entry
        return None


# Paths whose meaning depends on who normalises them: dot-segments, empty segments, encoded
# dots, slashes and backslashes. txgate matches one path and the upstream (or any URL library
# between) could resolve another, e.g. /v1/accounts/../payments past the payment rules.
_AMBIGUOUS = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//|%2e|%2f|%5c|\\", re.IGNORECASE)


def check_path(raw_path: str) -> None:
    """Refuse a request path that could be resolved to another route than the one it matches,
    and a query that overrides the method at the upstream."""
    if "#" in raw_path:
        # Not part of a request target (RFC 9112 §3.2): the router never sees it, and an
        # upstream could take it as part of the path or the query.
        raise InvalidRequest("path: a fragment (#) is not accepted in a request")
    path, _, query = raw_path.partition("?")
    if _AMBIGUOUS.search(path):
        raise InvalidRequest("path: dot-segments, empty segments and encoded dots or slashes "
                             "are not accepted")
    if "method" in query.lower():
        # Symfony and Laravel take ?_method=DELETE as the method: the rules saw a POST.
        for part in re.split("[&;]", query):
            if unquote_plus(part.partition("=")[0]).strip().lower() == "_method":
                raise InvalidRequest("query: _method overrides the method at the upstream and "
                                     "is not accepted")


class Router:
    def __init__(self, routes: tuple[RouteConfig, ...], max_amount: float):
        self.routes = tuple(_route(r, max_amount) for r in routes)
        self._exact: dict[str, list[Route]] = {}
        for route in self.routes:
            if route.config.match.path is not None:
                self._exact.setdefault(route.config.match.path, []).append(route)
        self._prefixes = sorted((r for r in self.routes if r.config.match.path_prefix is not None),
                                key=lambda r: len(r.config.match.path_prefix), reverse=True)

    def match(self, method: str, path: str, host: str) -> Route | None:
        for route in self._exact.get(path, ()):
            if method in route.methods and _accepts(route, host):
                return route
        for route in self._prefixes:
            if path.startswith(route.config.match.path_prefix) and method in route.methods \
                    and _accepts(route, host):
                return route
        return None

    @classmethod
    def of(cls, config: Config) -> Router:
        return cls(config.routes, config.limits.max_amount)

    def attribute_types(self) -> dict[str, str]:
        """Every transaction attribute any route declares, with its rule-level type."""
        types: dict[str, str] = {}
        for route in self.routes:
            types.update(route.extractor.attribute_types)
        return types


def _route(config: RouteConfig, max_amount: float) -> Route:
    extractor = TransactionExtractor(config, max_amount)
    return Route(config, extractor, frozenset(config.match.methods),
                 HeaderPolicy(extractor.headers))


def _accepts(route: Route, host: str) -> bool:
    return route.config.match.hosts is None or route.host_for(host) is not None
