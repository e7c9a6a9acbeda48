"""The ``condition`` step's expression language: a tiny parser and evaluator, never ``eval``.

Grammar (keywords are lower case)::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := value (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") value)?
    value   := NUMBER | STRING | NAME | "true" | "false" | "(" expr ")"
             | "[" (value ("," value)*)? "]"

Numbers are decimal with an optional exponent (``1e6``); strings are in single or double
quotes without escapes. Names are the incident context's variables (:data:`VARIABLES`);
an unknown name is refused when the runbook is saved. Comparing a number with a string
is false, never an error, so a condition cannot fail at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.errors import ValidationFailed

VARIABLES: dict[str, str] = {
    "pps": "number",
    "bps": "number",
    "attack_family": "string",
    "severity": "string",
    "severity_rank": "number",
    "node": "string",
    "target_ip": "string",
    "incident_id": "string",
    "event": "string",
    "status": "string",
}
MAX_LENGTH = 500
MAX_DEPTH = 20

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
      | (?P<str>"[^"\\]*"|'[^'\\]*')
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


class ExpressionInvalid(ValidationFailed):
    code = "invalid_expression"


@dataclass(frozen=True, slots=True)
class Node:
    op: str  # const | var | list | and | or | not | == | != | < | <= | > | >= | in
    args: tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionInvalid(f"unexpected character {text[pos:].strip()[:1]!r} at {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExpressionInvalid(
                f"expected {value!r} but the expression ended" if value else "unexpected end"
            )
        if value is not None and tok[1] != value:
            raise ExpressionInvalid(f"expected {value!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def at(self, *values: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] in ("op", "name") and tok[1] in values

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionInvalid(f"the expression nests deeper than {MAX_DEPTH}")
        node = self.conj()
        while self.at("or"):
            self.take()
            node = Node("or", (node, self.conj()))
        self.depth -= 1
        return node

    def conj(self) -> Node:
        node = self.neg()
        while self.at("and"):
            self.take()
            node = Node("and", (node, self.neg()))
        return node

    def neg(self) -> Node:
        if self.at("not"):
            self.take()
            return Node("not", (self.neg(),))
        return self.compare()

    def compare(self) -> Node:
        left = self.value()
        if self.at("==", "!=", "<", "<=", ">", ">=", "in"):
            op = self.take()[1]
            return Node(op, (left, self.value()))
        return left

    def value(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return Node("const", (float(text),))
        if kind == "str":
            return Node("const", (text[1:-1],))
        if kind == "op" and text == "(":
            node = self.expr()
            self.take(")")
            return node
        if kind == "op" and text == "[":
            items: list[Node] = []
            while not self.at("]"):
                items.append(self.value())
                if not self.at("]"):
                    self.take(",")
            self.take("]")
            return Node("list", tuple(items))
        if kind == "name":
            if text in ("true", "false"):
                return Node("const", (text == "true",))
            if text in ("and", "or", "not", "in"):
                raise ExpressionInvalid(f"{text!r} cannot start a value")
            if text not in VARIABLES:
                raise ExpressionInvalid(
                    f"unknown variable {text!r}; known: {', '.join(sorted(VARIABLES))}",
                    code="unknown_variable",
                )
            return Node("var", (text,))
        raise ExpressionInvalid(f"unexpected {text!r}")


def parse(text: str) -> Node:
    """Parse ``text``; raise :class:`ExpressionInvalid` (or ``unknown_variable``)."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionInvalid("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionInvalid(f"the expression is longer than {MAX_LENGTH} characters")
    p = _Parser(text)
    node = p.expr()
    if p.peek() is not None:
        raise ExpressionInvalid(f"unexpected {p.peek()[1]!r} after the expression")  # type: ignore[index]
    return node


def _value(node: Node, ctx: Mapping[str, Any]) -> Any:
    if node.op == "const":
        return node.args[0]
    if node.op == "var":
        return ctx.get(node.args[0])
    if node.op == "list":
        return [_value(n, ctx) for n in node.args]
    return truth(node, ctx)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def truth(node: Node, ctx: Mapping[str, Any]) -> bool:
    """Evaluate a parsed expression over the context (a missing variable is None)."""
    op = node.op
    if op == "and":
        return truth(node.args[0], ctx) and truth(node.args[1], ctx)
    if op == "or":
        return truth(node.args[0], ctx) or truth(node.args[1], ctx)
    if op == "not":
        return not truth(node.args[0], ctx)
    if op in ("const", "var", "list"):
        return bool(_value(node, ctx))
    left, right = _value(node.args[0], ctx), _value(node.args[1], ctx)
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "in":
        return isinstance(right, list) and left in right
    if not (_num(left) and _num(right)) and not (isinstance(left, str) and isinstance(right, str)):
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def evaluate(text: str, ctx: Mapping[str, Any]) -> bool:
    return truth(parse(text), ctx)
