"""Expression IR -> durable-rules JSON conditions.

The engine has no working `$not`, so negation is pushed down to the atoms here (De Morgan and
operator negation). Because the contract makes an atom false when an attribute it reads is
absent, the negation of an atom is "the negated operator, or one of its attributes is absent":
`not (a > 5)` compiles to `a <= 5 or not exists(a)`. `$nex` is only safe under the guard that
the engine module adds to every rule (see rules/engine.py).

Engine quirks handled here, each measured: a comparison whose right side names a missing
attribute is TRUE in the engine (`a == b`, `a > b + 1` with b absent), so every right-side
attribute gets an explicit `$ex`; `$or` of nothing and `$and` of nothing are silent no-ops, so
constant conditions are folded away before they reach the engine.
"""
from __future__ import annotations

from rules.expressions import (And, Attr, Compare, Exists, Expr, In, Lit, Matches, Not, Or,
                               divisor_attrs, operand_attrs)

PREFIX = "v_"   # every attribute lives under this prefix: no request data can be sid, id or the guard
TRUE = "TRUE"
FALSE = "FALSE"

_NEGATE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_JSON_OP = {"!=": "$neq", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_ARITH = {"+": "$add", "-": "$sub", "*": "$mul", "/": "$div"}


class CompileError(ValueError):
    """An expression the engine cannot evaluate faithfully."""


def key(attr: str) -> str:
    return PREFIX + attr


def _ex(attr):
    return {"$ex": {key(attr): 1}}


def _nex(attr):
    return {"$nex": {key(attr): 1}}


def _value(node):
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Attr):
        return {"$m": key(node.name)}
    return {_ARITH[node.op]: {"$l": _value(node.left), "$r": _value(node.right)}}


def _cmp(op: str, attr: str, right) -> dict:
    v = _value(right)
    if op == "==":
        return {key(attr): v}
    return {_JSON_OP[op]: {key(attr): v}}


def _all(items: list):
    items = [i for i in items if i is not TRUE]
    if any(i is FALSE for i in items):
        return FALSE
    if not items:
        return TRUE
    return items[0] if len(items) == 1 else {"$and": items}


def _any(items: list):
    items = [i for i in items if i is not FALSE]
    if any(i is TRUE for i in items):
        return TRUE
    if not items:
        return FALSE
    return items[0] if len(items) == 1 else {"$or": items}


def compile_expr(node: Expr, negate: bool = False):
    """The engine condition for `node` (or for `not node`); TRUE/FALSE for constant results."""
    if isinstance(node, Not):
        return compile_expr(node.item, not negate)
    if isinstance(node, (And, Or)):
        parts = [compile_expr(i, negate) for i in node.items]
        conj = isinstance(node, And) != negate      # De Morgan
        return _all(parts) if conj else _any(parts)
    if isinstance(node, Exists):
        return _nex(node.attr) if negate else _ex(node.attr)
    if isinstance(node, Compare):
        right_attrs = sorted(operand_attrs(node.right) - {node.attr})
        zero = sorted(divisor_attrs(node.right))
        if not negate:
            return _all([_ex(a) for a in right_attrs]
                        + [{"$neq": {key(d): 0.0}} for d in zero]
                        + [_cmp(node.op, node.attr, node.right)])
        return _any([_nex(node.attr)] + [_nex(a) for a in right_attrs]
                    + [{key(d): 0.0} for d in zero]
                    + [_cmp(_NEGATE[node.op], node.attr, node.right)])
    if isinstance(node, In):
        eqs = [{key(node.attr): v} for v in node.values]
        neqs = [{"$neq": {key(node.attr): v}} for v in node.values]
        member = _any(eqs)                                         # false when absent
        non_member = _all([_ex(node.attr)] + neqs)                 # `not in` atom: false when absent
        if node.negated:
            return _any([_nex(node.attr), member]) if negate else non_member
        return _any([_nex(node.attr)] + [_all(neqs)]) if negate else member
    if isinstance(node, Matches):
        if negate:
            raise CompileError(f"negated matches({node.attr}, ...) is not supported by the engine; "
                               "write the positive pattern of what should match")
        return {"$mt": {key(node.attr): node.regex.engine}}
    raise CompileError(f"unknown expression {node!r}")
