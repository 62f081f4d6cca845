"""Turn a route's ``transaction`` block into typed rule attributes (interface §3).

Every field's source and type is compiled once per route; per request we only walk the parsed
JSON. Anything malformed, missing or ill-typed is an ``InvalidRequest`` naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping

import orjson

from gateway.config import FieldSpec, RouteConfig
from gateway.currencies import ISO_4217, minor_units
from gateway.errors import InvalidRequest
from rules.engine import MAX_NUMBER
from rules.ruleset import MAX_STRING

_MISSING = object()
_PATH_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")
# Types by attribute name when the long form does not say (interface §3).
_NAMED_TYPES = {"amount": "amount", "currency": "currency"}
RULE_TYPES = {"amount": "number", "currency": "string", "string": "string",
              "integer": "integer", "number": "number", "boolean": "boolean"}


def _json_path(source: str) -> tuple:
    return tuple(key if key else int(index) for key, index in _PATH_STEP.findall(source[6:]))


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str                 # "json" | "header" | "principal"
    where: Any                # path tuple or header name
    type: str                 # amount | currency | string | integer | number | boolean
    required: bool


def _field(name: str, spec: FieldSpec) -> _Field:
    kind, _, rest = spec.source.partition(":")
    where = _json_path(spec.source) if kind == "json" else rest
    return _Field(name, kind, where, spec.type or _NAMED_TYPES.get(name, "string"), spec.required)


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
    return _check_range(name, value)


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

    def __init__(self, route: RouteConfig):
        self.fields = tuple(_field(n, s) for n, s in (route.transaction or {}).items())
        self.needs_json = any(f.kind == "json" for f in self.fields)
        self.attribute_types = {f.name: RULE_TYPES[f.type] for f in self.fields}

    def extract(self, body: bytes, headers: Mapping[str, str], principal: str | None) -> dict:
        """The typed attributes of this request; raises InvalidRequest naming the field."""
        document = _MISSING
        if self.needs_json:
            encoding = headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # The rules must decide on the transaction the upstream will execute: the body
                # is read as sent, so an encoded one would be decided on as one thing (or
                # refused as not JSON) and decoded into another upstream.
                raise InvalidRequest("body: a transaction is sent without Content-Encoding")
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise InvalidRequest("body: not valid JSON (or a number out of range)") from None
        attrs: dict[str, Any] = {}
        for f in self.fields:
            if f.kind == "json":
                value = _lookup(document, f.where)
            elif f.kind == "header":
                value = headers.get(f.where, _MISSING)
                if value is not _MISSING and f.type in _FROM_TEXT:
                    value = _FROM_TEXT[f.type](value)
            else:
                value = principal if principal is not None else _MISSING
            if value is _MISSING or value is None:
                if f.required:
                    raise InvalidRequest(f"{f.name}: required field is missing")
                continue
            attrs[f.name] = _CHECKS[f.type](f.name, value)
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
