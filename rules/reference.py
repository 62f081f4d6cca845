"""Plain-Python meaning of the expression IR: the specification the compiled engine must match.

Used by the differential test only; decisions always come from the engine. Semantics:
an atom (comparison, `in`, `not in`, `matches`) is false when any attribute it reads is
absent or when it divides by an attribute that is zero; `not`, `and`, `or` are ordinary
boolean logic over the atoms' values, so `not (a > 5)` is true when `a` is absent while
`a <= 5` is false. Numbers are doubles, as in the engine.
"""
from __future__ import annotations

import operator
import re

from rules.expressions import And, Attr, Compare, Exists, Expr, In, Lit, Matches, Not, Or

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


class _Absent(Exception):
    """An attribute the atom reads is missing, or a divisor is zero: the atom is false."""


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _operand(node, attrs):
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Attr):
        if node.name not in attrs:
            raise _Absent
        return _num(attrs[node.name])
    left, right = _operand(node.left, attrs), _operand(node.right, attrs)
    if node.op == "/" and right == 0:
        raise _Absent
    return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[node.op](left, right)


def evaluate(node: Expr, attrs: dict) -> bool:
    """True when the expression holds for the attributes (a dict without absent keys)."""
    if isinstance(node, And):
        return all(evaluate(i, attrs) for i in node.items)
    if isinstance(node, Or):
        return any(evaluate(i, attrs) for i in node.items)
    if isinstance(node, Not):
        return not evaluate(node.item, attrs)
    if isinstance(node, Exists):
        return node.attr in attrs
    if node.attr not in attrs:
        return False
    value = _num(attrs[node.attr])
    if isinstance(node, Compare):
        try:
            return _OPS[node.op](value, _operand(node.right, attrs))
        except _Absent:
            return False
    if isinstance(node, In):
        return (value not in node.values) if node.negated else (value in node.values)
    if isinstance(node, Matches):
        return re.fullmatch(node.regex.python, value) is not None
    raise TypeError(f"unknown node {node!r}")
