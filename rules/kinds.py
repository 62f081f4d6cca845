"""Which kind of value (string, number, boolean) each attribute holds.

The engine coerces across kinds (`"abc" > 1000` is true, `True == 1`), so a rule set fixes one
kind per attribute at load time — from the route declarations, the built-ins, the counters and
the literals rules compare against — and `RuleSet.decide` refuses values of another kind.
"""
from __future__ import annotations

from rules.expressions import And, Arith, Attr, Compare, Exists, Expr, In, Lit, Matches, Not, Or, operand_attrs

BUILTINS = {"route": "string", "method": "string", "client_id": "string", "tier": "string",
            "ip": "string", "channel": "string", "hour": "number", "weekday": "number",
            "amount_base": "number", "currency_unrated": "boolean"}
# A transaction field's declared type (gateway config) -> the kind rules compare it as.
TYPE_KIND = {"amount": "number", "currency": "string", "string": "string", "integer": "number",
             "number": "number", "boolean": "boolean"}


def literal_kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


class KindChecker:
    """Collects kind requirements of every rule; `errors` holds (where, message) pairs."""

    def __init__(self, known: dict[str, str]):
        self.kinds = dict(known)
        self.declared = set(known)
        self.errors: list[tuple[object, str]] = []
        self._pairs: list[tuple[str, str, object]] = []

    def require(self, attr: str, kind: str, where, why: str) -> None:
        have = self.kinds.get(attr)
        if have is None:
            self.kinds[attr] = kind
        elif have != kind:
            origin = "declared" if attr in self.declared else "used"
            self.errors.append((where, f"'{attr}' is {origin} as a {have} but {why} a {kind}"))

    def visit(self, node: Expr, where) -> None:
        if isinstance(node, (And, Or)):
            for i in node.items:
                self.visit(i, where)
        elif isinstance(node, Not):
            self.visit(node.item, where)
        elif isinstance(node, Matches):
            self.require(node.attr, "string", where, "matches() needs")
        elif isinstance(node, In):
            kinds = {literal_kind(v) for v in node.values}
            if len(kinds) > 1:
                self.errors.append((where, f"the list for '{node.attr}' mixes {' and '.join(sorted(kinds))} values"))
            elif kinds:
                self.require(node.attr, kinds.pop(), where, "is compared with")
        elif isinstance(node, Compare):
            self.compare(node, where)
        elif not isinstance(node, Exists):
            raise TypeError(node)

    def compare(self, node: Compare, where) -> None:
        right = node.right
        ordering = node.op not in ("==", "!=")
        if isinstance(right, Arith):
            for a in {node.attr} | operand_attrs(right):
                self.require(a, "number", where, "arithmetic needs")
        elif isinstance(right, Lit):
            kind = literal_kind(right.value)
            if ordering and kind != "number":
                self.errors.append((where, f"'{node.op}' compares numbers, not a {kind}"))
                return
            self.require(node.attr, kind, where, "is compared with")
        elif isinstance(right, Attr):
            if ordering:
                self.require(node.attr, "number", where, f"'{node.op}' needs")
                self.require(right.name, "number", where, f"'{node.op}' needs")
            else:
                self._pairs.append((node.attr, right.name, where))

    def finish(self) -> dict[str, str]:
        """Resolve attribute-to-attribute equalities; return the kind of every attribute known."""
        pending = list(self._pairs)
        while pending:
            progress = False
            for a, b, where in list(pending):
                ka, kb = self.kinds.get(a), self.kinds.get(b)
                if ka is None and kb is None:
                    continue
                pending.remove((a, b, where))
                progress = True
                if ka is None:
                    self.kinds[a] = kb
                elif kb is None:
                    self.kinds[b] = ka
                elif ka != kb:
                    self.errors.append((where, f"'{a}' ({ka}) and '{b}' ({kb}) have different kinds"))
            if not progress:
                for a, b, where in pending:
                    self.errors.append((where, f"cannot tell whether '{a}' and '{b}' are strings, numbers or "
                                               "booleans; compare one of them with a literal or declare its type"))
                break
        return self.kinds
