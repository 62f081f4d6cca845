"""Turn a route's ``transaction`` block into typed rule attributes (docs/protocol.md §3).

Every field's source and type is compiled once per route; per request we only walk the parsed
JSON. Anything malformed, missing or ill-typed is an ``InvalidRequest`` naming the field.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

from gateway.canonical import check_media_type, parse_json, single
from gateway.config import FieldSpec, RouteConfig
from gateway.currencies import ISO_4217, minor_units
from gateway.errors import InvalidRequest
from rules import MAX_NUMBER, MAX_STRING, TYPE_KIND

_MISSING = object()
_PATH_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")
# Types by attribute name when the long form does not say (docs/protocol.md §3).
_NAMED_TYPES = {"amount": "amount", "currency": "currency"}


def _json_path(source: str) -> tuple:
    return tuple(key if key else int(index) for key, index in _PATH_STEP.findall(source[6:]))


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str                 # "json" | "header" | "principal"
    where: Any                # path tuple or header name
    type: str                 # amount | currency | string | integer | number | boolean
    required: bool
    normalize: tuple[Callable[[str, str], str], ...]


def _ascii(name: str, value: str) -> str:
    # NFKC and case folding leave a Cyrillic "а" or a zero-width space in place: an identity
    # that must not have look-alikes is refused unless it is plain ASCII.
    if not value.isascii():
        raise InvalidRequest(f"{name}: only ASCII characters are accepted")
    return value


# Applied in the order the route lists them, before the type check, counters and rules.
NORMALIZERS: dict[str, Callable[[str, str], str]] = {
    "nfkc": lambda name, value: unicodedata.normalize("NFKC", value),
    "casefold": lambda name, value: value.casefold(),
    "lower": lambda name, value: value.lower(),
    "upper": lambda name, value: value.upper(),
    "strip": lambda name, value: value.strip(),
    "ascii": _ascii,
}


def _field(name: str, spec: FieldSpec) -> _Field:
    kind, _, rest = spec.source.partition(":")
    where = _json_path(spec.source) if kind == "json" else rest
    return _Field(name, kind, where, spec.type or _NAMED_TYPES.get(name, "string"), spec.required,
                  tuple(NORMALIZERS[step] for step in spec.normalize))


def _check_string(name, value):
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: expected a string")
    # The rule engine refuses these (C strings end at NUL; huge values are abuse): a 400 here.
    if len(value) > MAX_STRING or "\x00" in value:
        raise InvalidRequest(f"{name}: longer than {MAX_STRING} characters or containing NUL")
    return value


def _check_range(name, value):
    # The rule engine holds numbers as doubles and refuses those beyond 2**53 (no longer
    # exact): such a value is the client's mistake (400), not the gateway's failure (500).
    if abs(value) > MAX_NUMBER:
        raise InvalidRequest(f"{name}: out of range (|x| <= 2**53)")
    return value


def _check_integer(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name}: expected an integer")
    return _check_range(name, value)


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name}: expected a finite number")
    return _check_range(name, value)


def _check_boolean(name, value):
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name}: expected true or false")
    return value


def _check_currency(name, value):
    if not isinstance(value, str) or value not in ISO_4217:
        raise InvalidRequest(f"{name}: expected an ISO 4217 currency code")
    return value


def _check_amount(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name}: expected a JSON number")
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{name}: expected a finite, non-negative number")
    return value


_CHECKS: dict[str, Callable] = {
    "string": _check_string, "integer": _check_integer, "number": _check_number,
    "boolean": _check_boolean, "currency": _check_currency, "amount": _check_amount,
}

# Header values arrive as text: these turn them into the declared type first.
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "integer": lambda s: int(s) if re.fullmatch(r"-?\d{1,18}", s) else s,
    "number": lambda s: float(s) if re.fullmatch(r"-?\d{1,18}(\.\d{1,18})?", s) else s,
    "amount": lambda s: float(s) if re.fullmatch(r"\d{1,18}(\.\d{1,18})?", s) else s,
    "boolean": lambda s: {"true": True, "false": False}.get(s, s),
}


class TransactionExtractor:
    """Compiled extractor for one route. ``None`` routes (no block) have no transaction."""

    def __init__(self, route: RouteConfig, max_amount: float):
        self.fields = tuple(_field(n, s) for n, s in (route.transaction or {}).items())
        self.needs_json = any(f.kind == "json" for f in self.fields)
        self.attribute_types = {f.name: TYPE_KIND[f.type] for f in self.fields}
        self.headers = tuple(f.where for f in self.fields if f.kind == "header")
        self._amounts = tuple(f.name for f in self.fields if f.type == "amount")
        self._max_amount = max_amount

    def extract(self, body: bytes, headers: Mapping[str, str], principal: str | None,
                originals: dict | None = None) -> dict:
        """The typed attributes of this request; raises InvalidRequest naming the field (415
        for the body's form, gateway.canonical). ``originals`` receives the value as sent of
        each field that normalization changed."""
        document = _MISSING
        if self.needs_json:
            check_media_type(headers)
            document = parse_json(body)
        attrs: dict[str, Any] = {}
        for f in self.fields:
            if f.kind == "json":
                value = _lookup(document, f.where)
            elif f.kind == "header":
                value = single(headers, f.where)
                if value is None:
                    value = _MISSING
                elif f.type in _FROM_TEXT:
                    value = _FROM_TEXT[f.type](value)
            else:
                value = principal if principal is not None else _MISSING
            if value is _MISSING or value is None:
                if f.required:
                    raise InvalidRequest(f"{f.name}: required field is missing")
                continue
            if f.normalize and isinstance(value, str):
                original = value
                for step in f.normalize:
                    value = step(f.name, value)
                if value != original and originals is not None:
                    originals[f.name] = original
            attrs[f.name] = _CHECKS[f.type](f.name, value)
        for name in self._amounts:
            if name in attrs and attrs[name] > self._max_amount:
                # Far below 2**53: every counter sums such amounts exactly (limits.max_amount).
                raise InvalidRequest(f"{name}: above the largest amount accepted "
                                     f"({self._max_amount:g})")
        if "amount" in attrs:
            _check_decimals(attrs)
        return attrs


def _lookup(document, path: tuple):
    node = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return _MISSING
        elif not isinstance(node, dict) or step not in node:
            return _MISSING
        node = node[step]
    return node


def _check_decimals(attrs: dict) -> None:
    # repr() of a parsed double is the shortest text that reads back to it, which is the text
    # the client sent for any amount with up to 15 significant digits.
    exponent = Decimal(repr(attrs["amount"])).normalize().as_tuple().exponent
    allowed = minor_units(attrs.get("currency", ""))
    if isinstance(exponent, int) and -exponent > allowed:
        raise InvalidRequest(f"amount: more than {allowed} decimals for this currency")
