"""The one reading of a transaction body that txgate and every upstream parser must share.

The rules decide on the bytes the upstream executes, so a body is accepted only in the form
in which every common parser reads the same document (docs/security.md, "parser
differentials"):

- ``Content-Type: application/json`` exactly once, with no parameter but ``charset=utf-8``:
  a parser that honours another charset (aiohttp's ``request.json()`` decodes UTF-7) reads
  other keys out of the same bytes; a form type may be parsed as a form upstream.
- no ``Content-Encoding`` other than one ``identity``: the body is decided on as sent.
- strict JSON (RFC 8259 as orjson reads it: UTF-8 without BOM, no lone surrogates, no NaN,
  nothing after the document) with no key twice in one object, also not when compared
  without case: first-wins, last-wins and case-insensitive parsers would each pick another.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import orjson

from gateway.errors import GatewayError, InvalidRequest

_MEDIA = "application/json"


class UnsupportedMediaType(GatewayError):
    def __init__(self, message: str):
        super().__init__(415, "unsupported_media_type", message)


def single(headers: Mapping[str, str], name: str) -> str | None:
    """The one value of ``name``, None when absent; InvalidRequest when sent more than once."""
    values = headers.getall(name, ()) if hasattr(headers, "getall") else (
        [headers[name]] if name in headers else [])
    if len(values) > 1:
        raise InvalidRequest(f"header {name}: sent more than once")
    return values[0] if values else None


def check_media_type(headers: Mapping[str, str]) -> None:
    """Refuse any body form but JSON in UTF-8 (415), and any content coding (400)."""
    content_type = single(headers, "Content-Type")
    if content_type is None:
        raise UnsupportedMediaType("a transaction is sent as Content-Type: application/json")
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() != _MEDIA:
        raise UnsupportedMediaType("a transaction is sent as Content-Type: application/json")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise UnsupportedMediaType("application/json takes no parameter but charset=utf-8")
    encoding = single(headers, "Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # Decoded by the upstream, the body would be another document than the one decided on.
        raise InvalidRequest("body: a transaction is sent without Content-Encoding")


def parse_json(body: bytes) -> Any:
    """The document every conforming parser reads from ``body``; InvalidRequest otherwise."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("body: not valid JSON (or a number out of range)") from None
    if isinstance(document, (dict, list)):
        try:
            entries = _entries(document)
            # orjson keeps the last of two equal keys silently. Every key is followed by a
            # colon, so as many colons as entries proves none was repeated (0.2 µs); colons
            # inside strings leave it open, and the standard parser's hook sees every pair.
            if body.count(b":") != entries:
                json.loads(body.decode(), object_pairs_hook=_unique_keys)
        except RecursionError:   # nested deeper than Python's limit, within orjson's
            raise InvalidRequest("body: nested too deeply") from None
    return document


def _entries(node: dict | list) -> int:
    """Keys in every object of ``node``; InvalidRequest for two that differ only in case."""
    count = 0
    if isinstance(node, dict):
        count = len(node)
        if count > 1 and len({key.casefold() for key in node}) != count:
            _unique_keys(list(node.items()))
        node = node.values()
    for value in node:
        if isinstance(value, (dict, list)):
            count += _entries(value)
    return count


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, str] = {}
    for key, _ in pairs:
        folded = key.casefold()
        if folded in seen:
            same = "" if seen[folded] == key else f" (as {seen[folded]!r}, ignoring case)"
            raise InvalidRequest(f"body: key {key!r} appears twice in one object{same}")
        seen[folded] = key
    return {}
