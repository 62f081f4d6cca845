"""Which request headers txgate refuses, drops or needs once (docs/security.md, "headers").

An upstream stack may act on headers the gateway never looked at: a method or URL override
(``X-HTTP-Method-Override`` at Express or Symfony, ``X-Original-URL`` at IIS), a client address
or user a proxy is trusted to set (``X-Real-IP``), or a name with ``_`` that a WSGI or CGI server
files under the same key as the dashed one (``Txgate_Tier`` becomes ``HTTP_TXGATE_TIER``, the
gateway's own ``Txgate-Tier``). So, per request, before anything is decided:

- ``REFUSED``: method and URL overrides are a 400 in any spelling; forwarding them would let
  the upstream execute another operation than the one the rules saw.
- an ``_`` spelling of any name the gateway reads, sets, drops or refuses is a 400.
- every header the gateway reads for a decision must appear once (400 otherwise): the
  gateway and the upstream would read different lines of it.
- ``DROPPED``: client-address, user and forwarding headers never reach the upstream
  (``gateway.forward`` sets its own ``Forwarded``, ``X-Forwarded-For``, ``-Proto``, ``-Host``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from auth.tiers import STEP_UP_HEADERS
from gateway.errors import InvalidRequest

REFUSED = frozenset({
    "x-http-method-override", "x-http-method", "x-method-override",
    "x-original-url", "x-original-uri", "x-rewrite-url",
})

DROPPED = frozenset({
    "x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip", "cf-connecting-ip",
    "fastly-client-ip", "x-original-forwarded-for",
    "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix",
    "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl", "x-forwarded-uri",
    "x-forwarded-path", "x-original-host", "x-host", "front-end-https", "x-url-scheme",
    "x-remote-user", "x-forwarded-user", "x-authenticated-user", "x-auth-request-user",
    "x-auth-request-email", "remote-user",
})

# Set by the gateway on the way upstream (gateway.forward): their _ twins would collide.
SET = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})

# Read for every decision; a route adds the headers its transaction block reads.
READ = frozenset({"host", "content-type", "content-encoding", "content-length",
                  "transfer-encoding", *(name.lower() for name in STEP_UP_HEADERS)})


class HeaderPolicy:
    """One route's screen, built at load time: ``check`` is the per-request call."""

    def __init__(self, read: Iterable[str]):
        self.read = READ | {name.lower() for name in read}
        self._twins = self.read | SET | DROPPED | REFUSED

    def check(self, headers: Mapping[str, str]) -> None:
        """InvalidRequest naming the first header that is refused, doubled or a twin."""
        seen: set[str] = set()
        read, twins = self.read, self._twins
        for name, _ in headers.items():
            lower = name.lower()
            if "_" in lower:
                dashed = lower.replace("_", "-")
                if dashed in twins or dashed.startswith("txgate-"):
                    raise InvalidRequest(f"header {name}: an underscore spelling of a header "
                                         "the gateway reads or sets is not accepted")
            elif lower in REFUSED:
                raise InvalidRequest(f"header {name}: overrides the method or URL at the "
                                     "upstream and is not accepted")
            elif lower in read:
                if lower in seen:
                    raise InvalidRequest(f"header {name}: sent more than once")
                seen.add(lower)
