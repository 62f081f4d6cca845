"""YAML that remembers line numbers and refuses duplicate keys.

Errors must say FILE:LINE, and PyYAML's plain loaders forget both lines and duplicates (a
repeated key silently wins). YAML 1.1 booleans are narrowed to true/false: `on:` is a counter
key and `NO` is Norway in a country list, not False.
"""
from __future__ import annotations

import re

import yaml


class LineDict(dict):
    """A mapping with the line of itself (`line`) and of each key (`key_lines`)."""
    line: int = 0
    key_lines: dict


class LineList(list):
    line: int = 0
    item_lines: list


class _Loader(yaml.SafeLoader):
    pass


# Dates stay text too: the caller that wants one parses it (a YAML date like 2026-02-30 would
# otherwise raise a bare ValueError out of the parser, without a line).
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers
         if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for knode, vnode in node.value:
        k = loader.construct_object(knode, deep=True)
        line = knode.start_mark.line + 1
        try:
            hash(k)
        except TypeError:
            loader.problems.append((line, "a mapping key must be a plain value"))
            continue
        if k in out:
            loader.problems.append((line, f"duplicate key {k!r}"))
        out[k] = loader.construct_object(vnode, deep=True)
        out.key_lines[k] = line
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [n.start_mark.line + 1 for n in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(text: str):
    """Parse one document; return (data, [(line, message)]) — syntax errors become problems too."""
    loader = None
    try:
        # The reader refuses control characters while constructing, so that is inside the try.
        loader = _Loader(text)
        loader.problems = []
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e)
        return None, [(line, f"YAML syntax error: {problem}")]
    finally:
        if loader is not None:
            loader.dispose()
    return data, loader.problems


def line_of(obj, key=None, default: int = 1) -> int:
    """The line of a key inside a LineDict, or of the object itself."""
    if isinstance(obj, LineDict):
        if key is not None and key in obj.key_lines:
            return obj.key_lines[key]
        return obj.line
    return getattr(obj, "line", default)
