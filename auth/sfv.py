"""A small strict parser for the canonical RFC 8941 dictionaries that signatures use.

``Signature-Input`` (inner lists of strings with string/integer parameters), ``Signature`` and
``Content-Digest`` (byte sequences) are parsed on every request; http_sfv's general parser,
byte by byte in Python, was ~9 % of a pass-through request. This parser accepts only the
*canonical* serialization of that subset (members joined by ", ", no optional whitespace,
integers without leading zeros, strings without escapes, every parameter with a value), so
the text of each member is exactly its serialization. Anything else returns None and the
caller falls back to http_sfv: every refusal and every unusual-but-valid form keeps the
general parser's exact behaviour.
"""

from __future__ import annotations

import binascii
import re

_KEY = r"[a-z*][a-z0-9_\-.*]*"
_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_INTEGER = r"(?:0|-?[1-9][0-9]{0,14})"
_PARAMS = rf"(?:;{_KEY}=(?:{_STRING}|{_INTEGER}))*"
_ITEM = rf"{_STRING}{_PARAMS}"
_MEMBER = re.compile(
    rf"({_KEY})=(?:(\((?:{_ITEM}(?: {_ITEM})*)?\))|:([A-Za-z0-9+/]*={{0,2}}):)({_PARAMS})")
_ITEMS = re.compile(rf"({_STRING})({_PARAMS})")
_PARAM = re.compile(rf";({_KEY})=(?:\"([^\"]*)\"|(-?[0-9]+))")


class Item:
    """A bare item with parameters, as http_sfv's Item exposes it (``value``, ``params``)."""

    __slots__ = ("value", "params", "_text")

    def __init__(self, value: str | bytes, params: dict, text: str):
        self.value, self.params, self._text = value, params, text

    def __str__(self) -> str:
        return self._text


class InnerList(list):
    """Items with the list's own parameters; ``str`` is its serialization."""

    __slots__ = ("params", "_text")

    def __init__(self, items: list[Item], params: dict, text: str):
        super().__init__(items)
        self.params, self._text = params, text

    def __str__(self) -> str:
        return self._text


class Dictionary(dict):
    """Member name -> Item or InnerList, in order; ``str`` is its serialization."""

    def __str__(self) -> str:
        return ", ".join(f"{name}={member}" for name, member in self.items())


def _params(text: str) -> dict | None:
    params: dict = {}
    for name, string, integer in _PARAM.findall(text):
        if name in params:
            return None            # a repeated parameter: the general parser decides
        params[name] = int(integer) if integer else string
    return params


def parse_dictionary(text: str) -> Dictionary | None:
    """The dictionary, or None when ``text`` is not in the canonical subset."""
    parsed = Dictionary()
    at, end = 0, len(text)
    while at < end:
        match = _MEMBER.match(text, at)
        if match is None:
            return None
        name, inner, b64, param_text = match.groups()
        params = _params(param_text)
        if params is None or name in parsed:
            return None
        if inner is not None:
            items = []
            for string, item_params in _ITEMS.findall(inner):
                item_param_dict = _params(item_params)
                if item_param_dict is None:
                    return None
                items.append(Item(string[1:-1], item_param_dict, string + item_params))
            member = InnerList(items, params, inner + param_text)
        else:
            if len(b64) % 4:
                return None
            try:
                value = binascii.a2b_base64(b64)
            except binascii.Error:
                return None
            # The text from the value: non-canonical padding bits serialize differently.
            canonical = binascii.b2a_base64(value, newline=False).decode()
            member = Item(value, params, f":{canonical}:{param_text}")
        parsed[name] = member
        at = match.end()
        if at < end:
            if not text.startswith(", ", at):
                return None
            at += 2
            if at == end:
                return None        # a trailing comma: refused by the general parser
    return parsed if parsed else None
