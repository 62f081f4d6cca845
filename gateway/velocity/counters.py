"""Counter plans: each declared CounterSpec compiled once into what a request needs.

Keys: ``txv:{<first key attribute>=<value>}:<counter>:<aggregate>:<span>[:f<where digest>][:<attr>=<value>…]``
(span: ``w<window s>`` or ``r<reset_on>``; a ``scope: client`` counter ends with
``:client_id=<client>``). The hash tag is the counter's FIRST key
attribute, so every counter of one user (``[user_id]``, ``[user_id, payee]``) shares a Redis
Cluster slot and one script call. Values are percent-encoded so that no value can forge a
brace, a separator or another entity's key. The aggregate and window are part of the key: a
rule change that redefines a counter starts it afresh instead of misreading the old data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from state.ops import ABSENT, DISTINCT, FIRST_SEEN, NUMBER, RESET, Op
from state.window import (
    RETENTION_MS,
    SUM_SCALE,
    bucket_ms,
    scaled_amount,
    window_ttl_ms,
)

if TYPE_CHECKING:
    from rules import CounterSpec

PREFIX = "txv"
CLIENT_KEY = "client_id"   # the built-in attribute naming the authenticated client
# Exactly the characters quote() never escapes: most ids need no quoting at all, and the
# check costs a fraction of quote() (which runs several times per request per counter).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def encode(value: object) -> str:
    text = str(value)
    return text if _UNRESERVED(text) else quote(text, safe="")


def member_digest(value: object) -> str:
    """64-bit digest of a distinct member: bounded size, and no raw IBANs or ids in the store."""
    return hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest()


def entity_tag(name: str, value: object) -> str:
    """The hash tag of one entity; every key of that entity carries it."""
    return "{" + f"{name}={encode(value)}" + "}"


@dataclass(frozen=True)
class CounterPlan:
    """A CounterSpec with everything computable at load time computed."""

    spec: CounterSpec
    kind: str
    window_ms: int
    bucket_ms: int
    ttl_ms: int
    suffix: str
    # Key layout, built once: "{<first key attribute>=" and the ":<name>=" of the others.
    tag_open: str
    rest: tuple[tuple[str, str], ...]
    is_sum: bool
    is_distinct: bool
    feature_name: str   # the rule attribute (CounterSpec.feature, formatted once)

    @property
    def identity(self) -> tuple:
        """What makes this plan's key: plans with equal identities share their keys."""
        return self.tag_open, self.suffix, self.rest

    @classmethod
    def of(cls, spec: CounterSpec, apart: bool = False) -> CounterPlan:
        """``apart``: keys of their own (a challenger's counter that would share a champion
        counter's key while counting differently: another ``on`` or ``field``)."""
        window_ms = (spec.window_s or 0) * 1000
        if spec.aggregate in ("count", "sum"):
            kind = NUMBER
            width = bucket_ms(window_ms) if window_ms else 0
            ttl = window_ttl_ms(window_ms, width) if window_ms else RETENTION_MS
        elif spec.aggregate == "distinct":
            kind, width, ttl = DISTINCT, 0, window_ms or RETENTION_MS
        elif spec.aggregate == "first_seen":
            # first_seen's window is its retention, not a sliding window.
            kind, width, ttl = FIRST_SEEN, 0, window_ms or RETENTION_MS
            window_ms = 0
        else:
            raise ValueError(f"counter {spec.name}: unknown aggregate {spec.aggregate!r}")
        span = f"w{spec.window_s}" if spec.window_s else f"r{spec.reset_on or 'none'}"
        suffix = f":{spec.name}:{spec.aggregate}:{span}"
        if spec.where is not None:
            # A changed filter counts other transactions: it starts afresh, as a changed window.
            suffix += ":f" + hashlib.blake2b(spec.where.encode(), digest_size=4).hexdigest()
        if apart:
            definition = repr((spec.name, spec.key, spec.aggregate, spec.field, spec.window_s,
                               spec.reset_on, spec.on, spec.scope, spec.where))
            suffix += ":c" + hashlib.blake2b(definition.encode(), digest_size=4).hexdigest()
        rest = spec.key[1:]
        if spec.scope == "client":
            # The calling client is one more key part (its own name, so it cannot collide
            # with a key attribute): the hash tag, and so the slot, stay the entity's.
            rest += (CLIENT_KEY,)
        return cls(spec, kind, window_ms, width, ttl, suffix, "{" + f"{spec.key[0]}=",
                   tuple((n, f":{n}=") for n in rest), spec.aggregate == "sum",
                   spec.aggregate == "distinct", spec.feature)

    def tag_and_key(self, attrs: dict) -> tuple[str, str] | None:
        """(hash tag, key) for these attributes, or None when a key attribute is absent."""
        first = attrs.get(self.spec.key[0])
        if first is None:
            return None
        tag = f"{self.tag_open}{encode(first)}}}"
        key = self.key_under(f"{PREFIX}:{tag}", attrs)
        return None if key is None else (tag, key)

    def key_under(self, base: str, attrs: dict) -> str | None:
        """The key below ``base`` (``txv:{tag}``, from the first key attribute), or None when
        another key attribute is absent."""
        extras = self.extras(attrs)
        return None if extras is None else self.key_with(base, extras)

    def key_with(self, base: str, extras: list[str]) -> str:
        """The key below ``base`` for the encoded further key values ``extras``."""
        if not extras:
            return base + self.suffix
        return "".join([base, self.suffix,
                        *(separator + value for (_, separator), value in zip(self.rest, extras))])

    def op(self, key: str, attrs: dict, update: bool, kind: str | None = None,
           memo: dict | None = None) -> Op:
        """The operation for one request; ``kind`` overrides the plan's kind (PROVISIONAL for
        an on: allow number); ``memo`` as for ``update``."""
        update, value = self.update(attrs, update, memo)
        return Op(key, kind or self.kind, update, value, self.window_ms, self.bucket_ms,
                  self.ttl_ms)

    def update(self, attrs: dict, update: bool, memo: dict | None = None
               ) -> tuple[bool, int | str]:
        """Whether this request updates the counter, and by or with what: an update whose
        field is absent becomes a read, and so does one the counter's ``where:`` leaves out.
        ``memo``, one request's own dict, keeps each field's scaled amount and member digest
        for the next counter on the same field (three sums and three distinct counters share
        a field in the shipped pack)."""
        if update and self.spec.where_expr is not None:
            update = self.spec.counts(attrs)
        if not (self.is_sum or self.is_distinct):
            return update, 1
        field = self.spec.field
        slot = (self.is_sum, field)
        value = memo.get(slot) if memo is not None else None
        if value is None:
            member = attrs.get(field)
            if self.is_sum:
                value = scaled_amount(member) or 0
            else:
                value = member_digest(member) if member is not None else ""
            if memo is not None:
                memo[slot] = value
        return update and value != 0 and value != "", value

    def extras(self, attrs: dict) -> list[str] | None:
        """The encoded values of the further key attributes, or None when one is absent."""
        values = []
        for name, _ in self.rest:
            value = attrs.get(name)
            if value is None:
                return None
            values.append(encode(value))
        return values

    def reset(self, key: str) -> Op:
        return Op(key, RESET, True, "", 0, 0, 0)

    def feature(self, result: int) -> int | float | None:
        """The rule attribute for a script result (None = absent)."""
        if self.kind == FIRST_SEEN:
            return None if result == ABSENT else result // 1000
        if self.is_sum:
            return result / SUM_SCALE
        return result
