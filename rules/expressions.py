"""`when` expressions: Python's `ast` (never eval) turned into a small IR.

The IR is what both the compiler (to engine conditions) and the reference evaluator read, so
every rewrite that matters for meaning happens here, once: chains are split, comparisons are
normalised to `attribute OP right-hand-side` (the engine only computes on the right), and
anything we cannot express safely is refused with a message naming the construct.
"""
from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass
from typing import Union

from rules.regex import Regex, RegexError, parse_regex

# Literals beyond this are almost certainly typos, and the engine's number parser and double
# arithmetic are only exact well inside it.
MAX_LITERAL = 1e15


class ExpressionError(ValueError):
    """A `when` that does not parse or uses an unsupported construct."""


@dataclass(frozen=True)
class Attr:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Union[str, float, bool]


@dataclass(frozen=True)
class Arith:
    op: str            # + - * /
    left: "Operand"
    right: "Operand"


Operand = Union[Attr, Lit, Arith]


@dataclass(frozen=True)
class Compare:
    op: str            # == != < <= > >=
    attr: str          # the left side is always a bare attribute after normalisation
    right: Operand


@dataclass(frozen=True)
class In:
    attr: str
    values: tuple
    negated: bool      # `not in` as written (an atom: false when attr is absent)
    list_name: str | None = None


@dataclass(frozen=True)
class Matches:
    attr: str
    regex: Regex


@dataclass(frozen=True)
class Exists:
    attr: str


@dataclass(frozen=True)
class Not:
    item: "Expr"


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


Expr = Union[Compare, In, Matches, Exists, Not, And, Or]


@dataclass(frozen=True)
class LiveList:
    """A list declared ``{store: redis}``: its members live in the state store and change
    without a reload. ``attr in lists.NAME`` reads the boolean attribute ``membership(attr,
    NAME)``, which the gateway looks up in the request's state round trip (absent when
    ``attr`` is)."""

    name: str


def membership(attr: str, list_name: str) -> str:
    """The attribute holding whether ``attr``'s value is in the live list (decision-log name)."""
    return f"{attr}_in_{list_name}"

_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def operand_attrs(node: Operand) -> set[str]:
    if isinstance(node, Attr):
        return {node.name}
    if isinstance(node, Arith):
        return operand_attrs(node.left) | operand_attrs(node.right)
    return set()


def divisor_attrs(node: Operand) -> set[str]:
    """Attributes used as divisors: a zero there makes the comparison false."""
    if not isinstance(node, Arith):
        return set()
    found = divisor_attrs(node.left) | divisor_attrs(node.right)
    if node.op == "/" and isinstance(node.right, Attr):
        found.add(node.right.name)
    return found


def expr_attrs(node: Expr) -> set[str]:
    """Every attribute name an expression reads."""
    if isinstance(node, Compare):
        return {node.attr} | operand_attrs(node.right)
    if isinstance(node, (In, Matches, Exists)):
        return {node.attr}
    if isinstance(node, Not):
        return expr_attrs(node.item)
    return set().union(*(expr_attrs(i) for i in node.items))


def walk(node: Expr):
    """Every node of an expression tree, parents first."""
    yield node
    if isinstance(node, Not):
        yield from walk(node.item)
    elif isinstance(node, (And, Or)):
        for i in node.items:
            yield from walk(i)


class _Builder:
    def __init__(self, lists: dict, memberships: dict[str, tuple[str, str]] | None):
        self.lists = lists
        self.memberships = memberships

    def fail(self, node: ast.AST, msg: str) -> ExpressionError:
        return ExpressionError(f"{msg} (column {getattr(node, 'col_offset', 0) + 1})")

    def expr(self, node: ast.AST) -> Expr:
        if isinstance(node, ast.BoolOp):
            items = tuple(self.expr(v) for v in node.values)
            return And(items) if isinstance(node.op, ast.And) else Or(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return Not(self.expr(node.operand))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            # A bare name is shorthand for a boolean attribute being true.
            return Compare("==", node.id, Lit(True))
        raise self.fail(node, f"expected a condition, got {_describe(node)}")

    def call(self, node: ast.Call) -> Expr:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if node.keywords:
            raise self.fail(node, "keyword arguments are not supported")
        if name == "exists":
            if len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
                raise self.fail(node, "exists() takes one attribute name")
            return Exists(node.args[0].id)
        if name == "matches":
            if (len(node.args) != 2 or not isinstance(node.args[0], ast.Name)
                    or not isinstance(node.args[1], ast.Constant) or not isinstance(node.args[1].value, str)):
                raise self.fail(node, 'matches() takes an attribute and a string literal: matches(payee, "DE.*")')
            try:
                return Matches(node.args[0].id, parse_regex(node.args[1].value))
            except RegexError as e:
                raise self.fail(node, str(e)) from None
        raise self.fail(node, f"unknown function {name or _describe(node.func)}(); only exists() and matches() exist")

    def compare(self, node: ast.Compare) -> Expr:
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            parts.append(self.one_compare(op, left, right, node))
            left = right
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def one_compare(self, op: ast.cmpop, left: ast.AST, right: ast.AST, node: ast.AST) -> Expr:
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(left, ast.Name):
                raise self.fail(node, "the left side of 'in' must be an attribute")
            live = self.live_list(right)
            if live is not None:
                name = membership(left.id, live.name)
                if self.memberships is not None:
                    self.memberships[name] = (left.id, live.name)
                # `not in` stays an atom: false, like `in`, when the attribute is absent.
                return Compare("==", name, Lit(not isinstance(op, ast.NotIn)))
            values, list_name = self.collection(right)
            return In(left.id, values, isinstance(op, ast.NotIn), list_name)
        if type(op) not in _CMP:
            raise self.fail(node, f"operator {type(op).__name__} is not supported")
        sym = _CMP[type(op)]
        lhs, rhs = self.operand(left), self.operand(right)
        return self.normalise(sym, lhs, rhs, node)

    def live_list(self, node: ast.AST) -> LiveList | None:
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "lists" and isinstance(self.lists.get(node.attr), LiveList)):
            return self.lists[node.attr]
        return None

    def collection(self, node: ast.AST) -> tuple[tuple, str | None]:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            vals = []
            for elt in node.elts:
                lit = self.operand(elt)
                if not isinstance(lit, Lit):
                    raise self.fail(elt, "a list literal may contain only string, number or boolean literals")
                vals.append(lit.value)
            return tuple(vals), None
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "lists"):
            name = node.attr
            if name not in self.lists:
                raise self.fail(node, f"list 'lists.{name}' is not declared under lists:")
            return tuple(_literal_value(v) for v in self.lists[name]), name
        raise self.fail(node, "'in' needs a list literal [..] or lists.NAME")

    def operand(self, node: ast.AST) -> Operand:
        if isinstance(node, ast.Name):
            if node.id == "lists":
                raise self.fail(node, "lists.NAME can only follow 'in'")
            return Attr(node.id)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, str)):
                return Lit(node.value)
            if isinstance(node.value, (int, float)):
                return Lit(self.number(node, node.value))
            raise self.fail(node, f"unsupported literal {node.value!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.operand(node.operand)
            if isinstance(inner, Lit) and isinstance(inner.value, float):
                return Lit(-inner.value if isinstance(node.op, ast.USub) else inner.value)
            if isinstance(node.op, ast.USub):
                return Arith("*", inner, Lit(-1.0))
            return inner
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right = self.operand(node.left), self.operand(node.right)
            for side in (left, right):
                if isinstance(side, Lit) and not isinstance(side.value, float):
                    raise self.fail(node, "arithmetic needs numbers")
            op = _ARITH[type(node.op)]
            if isinstance(left, Lit) and isinstance(right, Lit):
                return Lit(self.number(node, _fold(op, left.value, right.value, lambda m: self.fail(node, m))))
            if op == "/" and not (isinstance(right, Attr) or isinstance(right, Lit)):
                raise self.fail(node, "divide only by a number or a single attribute")
            if op == "/" and isinstance(right, Lit) and right.value == 0:
                raise self.fail(node, "division by zero")
            return Arith(op, left, right)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lists":
            raise self.fail(node, "lists.NAME can only follow 'in'")
        raise self.fail(node, f"unsupported {_describe(node)}")

    def number(self, node: ast.AST, value: float) -> float:
        value = float(value)
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise self.fail(node, f"number {value!r} out of range (|x| <= {MAX_LITERAL:.0e})")
        return value

    def normalise(self, op: str, lhs: Operand, rhs: Operand, node: ast.AST) -> Compare:
        """Move arithmetic to the right so the left side is one attribute (the engine computes on the right only)."""
        if not operand_attrs(lhs):
            if not operand_attrs(rhs):
                raise self.fail(node, "comparison between constants")
            lhs, rhs, op = rhs, lhs, _FLIP[op]
        for _ in range(64):
            if isinstance(lhs, Attr):
                if isinstance(rhs, Lit) or operand_attrs(rhs):
                    return Compare(op, lhs.name, rhs)
            if not isinstance(lhs, Arith):
                break
            a, b = lhs.left, lhs.right
            if lhs.op == "+":
                if operand_attrs(a):
                    lhs, rhs = a, _arith("-", rhs, b)
                else:
                    lhs, rhs = b, _arith("-", rhs, a)
            elif lhs.op == "-":
                if operand_attrs(a):
                    lhs, rhs = a, _arith("+", rhs, b)
                else:                                   # k - x OP r  <=>  x FLIP(OP) k - r
                    lhs, rhs, op = b, _arith("-", a, rhs), _FLIP[op]
            elif lhs.op == "*":
                k, x = (b, a) if isinstance(b, Lit) else (a, b) if isinstance(a, Lit) else (None, None)
                if k is None:
                    raise self.fail(node, "cannot move a product of two attributes to the right-hand side; "
                                          "put one attribute alone on the left (e.g. a > c / b)")
                if k.value == 0:
                    raise self.fail(node, "multiplication by zero on the left")
                lhs, rhs = x, _arith("/", rhs, k)
                if k.value < 0:
                    op = _FLIP[op]
            elif lhs.op == "/":
                if not isinstance(b, Lit) or not operand_attrs(a):
                    raise self.fail(node, "cannot move division by an attribute to the right-hand side; "
                                          "put one attribute alone on the left")
                lhs, rhs = a, _arith("*", rhs, b)
                if b.value < 0:
                    op = _FLIP[op]
        raise self.fail(node, "cannot rewrite this comparison with one attribute alone on the left")


def _arith(op: str, left: Operand, right: Operand) -> Operand:
    """Build right-hand-side arithmetic, folding constants (the divisor is never a zero literal here)."""
    if isinstance(left, Lit) and isinstance(right, Lit):
        return Lit({"+": left.value + right.value, "-": left.value - right.value,
                    "*": left.value * right.value, "/": left.value / right.value}[op])
    return Arith(op, left, right)


def _fold(op: str, a: float, b: float, fail):
    if op == "/" and b == 0:
        raise fail("division by zero")
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0.0}[op]


def _literal_value(v):
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    raise ExpressionError(f"list item {v!r} is not a string, number or boolean")


def _describe(node: ast.AST) -> str:
    return type(node).__name__.lower()


def parse_when(text: str, lists: dict, memberships: dict[str, tuple[str, str]] | None = None
               ) -> Expr:
    """Parse one `when` into its IR; ExpressionError naming the column otherwise.

    ``lists`` maps a name to its values or to a LiveList; each live-list test read is recorded
    in ``memberships`` (attribute name -> (tested attribute, list name)) when given."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("'when' must be a non-empty string")
    try:
        # Invalid escapes like "\d" are only a warning in Python today; make them an error so a
        # pattern never changes meaning under a future Python (authors write r"..." instead).
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tree = ast.parse(text.strip(), mode="eval")
    except (DeprecationWarning, SyntaxWarning) as e:
        raise ExpressionError(f"{e}; write regex patterns as raw strings: r\"...\"") from None
    except SyntaxError as e:
        hint = "; write regex patterns as raw strings: r\"...\"" if "escape" in str(e.msg) else ""
        raise ExpressionError(f"syntax error: {e.msg} (column {e.offset or 0}){hint}") from None
    b = _Builder(lists, memberships)
    return b.expr(tree.body)
