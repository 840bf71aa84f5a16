"""A small, safe expression language over per-step variables, evaluated with numpy.

A predicate is one Python-like expression such as `pole_angle > 0.05 and action == 1` or
`abs(pole_angle) + 0.1 * pole_angular_velocity`. It is parsed with `ast.parse(mode="eval")`.
Every node is checked against a whitelist and translated into a small tree of our own node
types, so nothing is ever passed to `eval` or `compile`. What is allowed:

- numbers (`0.05`, `1e-3`, `True`, `False`) and the names of the run's per-step variables;
- arithmetic `+ - * /` and unary minus or plus; `abs(x)` is the only function;
- comparisons `< <= > >= == !=`, chained as in Python (`-0.1 < pole_angle < 0.1`);
- `and`, `or`, `not`, which take boolean operands.

A predicate whose top level is a comparison or a boolean operation is a *boolean* claim (the
channel fires when it is true); any other predicate is a *numeric* claim (the channel tracks its
value). Booleans used in arithmetic count as 0 and 1.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError, closest_names

MAX_PREDICATE_LENGTH = 2000
# Deeper trees are rejected before the recursive translation could exhaust the Python stack.
MAX_PREDICATE_DEPTH = 60

PredicateKind = Literal["boolean", "numeric"]

GRAMMAR_HINT = (
    "a predicate uses variable names, numbers, + - * /, abs(), comparisons (< <= > >= == !=) "
    "and and/or/not, for example 'pole_angle > 0.05 and action == 1'"
)


class PredicateError(InvalidArgumentError):
    """A predicate is not valid; the message gives the column of the error and the variables."""

    def __init__(self, message: str, source: str, column: int | None,
                 variables: Sequence[str]) -> None:
        self.source = source
        self.column = column
        self.variables = tuple(variables)
        location = f" at column {column}" if column is not None else ""
        pointer = ""
        if column is not None and "\n" not in source and len(source) <= 200:
            pointer = f"\n  {source}\n  {' ' * (column - 1)}^"
        known = ", ".join(self.variables) or "none"
        super().__init__(
            f"invalid predicate{location}: {message}{pointer}\nvariables: {known}; {GRAMMAR_HINT}"
        )


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class Abs:
    operand: Node


@dataclass(frozen=True)
class Arithmetic:
    op: Literal["+", "-", "*", "/"]
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare:
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Node
    right: Node


@dataclass(frozen=True)
class Logical:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Union[Number, Variable, Negate, Abs, Arithmetic, Compare, Logical, Not]

_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_COMPARISONS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
                ast.NotEq: "!="}
_FORBIDDEN_HINTS: dict[type, str] = {
    ast.Attribute: "attribute access ('.') is not allowed",
    ast.Subscript: "indexing or slicing ('[]') is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.IfExp: "'x if c else y' is not allowed; combine comparisons with and/or",
    ast.NamedExpr: "assignment (':=') is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Await: "await is not allowed",
}


def _node_type(node: Node) -> PredicateKind:
    return "boolean" if isinstance(node, (Compare, Logical, Not)) else "numeric"


class _Translator:
    """Translate a Python expression AST into predicate nodes, rejecting anything else."""

    def __init__(self, source: str, variables: Sequence[str]) -> None:
        self.source = source
        self.variables = list(variables)
        self.used: dict[str, None] = {}

    def fail(self, message: str, node: ast.AST | None) -> PredicateError:
        column = None if node is None else getattr(node, "col_offset", None)
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            # Point at the '.' or '[' rather than at the start of the object.
            column = node.value.end_col_offset
        return PredicateError(message, self.source, None if column is None else column + 1,
                              self.variables)

    def translate(self, node: ast.AST, depth: int = 0) -> Node:
        if depth > MAX_PREDICATE_DEPTH:
            raise self.fail(f"the expression is nested more than {MAX_PREDICATE_DEPTH} deep", node)
        handler = getattr(self, f"_visit_{type(node).__name__}", None)
        if handler is None:
            hint = _FORBIDDEN_HINTS.get(type(node), f"{type(node).__name__} is not allowed")
            raise self.fail(hint, node)
        return handler(node, depth + 1)

    def _visit_Constant(self, node: ast.Constant, depth: int) -> Node:
        value = node.value
        if isinstance(value, bool):
            return Number(float(value))
        if isinstance(value, (int, float)):
            try:
                return Number(float(value))
            except OverflowError:
                raise self.fail(f"the number {str(value)[:20]}... is too large", node) from None
        raise self.fail(f"only numbers are allowed as constants, got {value!r}"[:120], node)

    def _visit_Name(self, node: ast.Name, depth: int) -> Node:
        if node.id not in self.variables:
            hint = closest_names(node.id, self.variables)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise self.fail(f"unknown variable {node.id!r}{suggestion}", node)
        self.used[node.id] = None
        return Variable(node.id)

    def _visit_UnaryOp(self, node: ast.UnaryOp, depth: int) -> Node:
        operand = self.translate(node.operand, depth)
        if isinstance(node.op, ast.USub):
            return Negate(operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(node.op, ast.Not):
            self._require_boolean(operand, node.operand, "not")
            return Not(operand)
        raise self.fail("'~' is not allowed; use 'not'", node)

    def _visit_BinOp(self, node: ast.BinOp, depth: int) -> Node:
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                word = "and" if isinstance(node.op, ast.BitAnd) else "or"
                raise self.fail(f"use '{word}' to combine conditions, not '&' or '|'", node)
            raise self.fail(f"the operator {type(node.op).__name__} is not allowed; "
                            f"only + - * / are", node)
        return Arithmetic(op, self.translate(node.left, depth), self.translate(node.right, depth))

    def _visit_BoolOp(self, node: ast.BoolOp, depth: int) -> Node:
        word = "and" if isinstance(node.op, ast.And) else "or"
        operands = []
        for value in node.values:
            operand = self.translate(value, depth)
            self._require_boolean(operand, value, word)
            operands.append(operand)
        return Logical(word, tuple(operands))

    def _visit_Compare(self, node: ast.Compare, depth: int) -> Node:
        operands = [self.translate(node.left, depth)]
        parts: list[Node] = []
        for op, comparator in zip(node.ops, node.comparators):
            symbol = _COMPARISONS.get(type(op))
            if symbol is None:
                raise self.fail(f"the comparison {type(op).__name__} is not allowed; "
                                f"use < <= > >= == !=", node)
            operands.append(self.translate(comparator, depth))
            parts.append(Compare(symbol, operands[-2], operands[-1]))
        # `a < b < c` means `a < b and b < c`, as in Python.
        return parts[0] if len(parts) == 1 else Logical("and", tuple(parts))

    def _visit_Call(self, node: ast.Call, depth: int) -> Node:
        if not (isinstance(node.func, ast.Name) and node.func.id == "abs"):
            raise self.fail("abs() is the only function allowed", node)
        if len(node.args) != 1 or node.keywords:
            raise self.fail("abs() takes exactly one argument", node)
        return Abs(self.translate(node.args[0], depth))

    def _require_boolean(self, operand: Node, node: ast.AST, word: str) -> None:
        if _node_type(operand) != "boolean":
            raise self.fail(f"'{word}' needs a condition such as 'x > 0', not a number", node)


@dataclass(frozen=True)
class Predicate:
    """A parsed predicate: its source text, tree, kind and the variables it reads."""

    source: str
    root: Node
    kind: PredicateKind
    variables: tuple[str, ...]

    def evaluate(self, values: Mapping[str, np.ndarray], n_steps: int | None = None) -> np.ndarray:
        """Evaluate over arrays of steps: returns (n,) bool for a boolean predicate, else float64.

        `values` maps each variable to a (n,) array; `n_steps` sizes the result of a predicate
        that reads no variable. Division by zero gives inf or NaN, as in numpy.
        """
        missing = [name for name in self.variables if name not in values]
        if missing:
            raise InvalidArgumentError(
                f"predicate {self.source!r} reads {missing}, which the data does not have; "
                f"available: {sorted(values)}"
            )
        if n_steps is None:
            lengths = {np.shape(values[name])[0] for name in self.variables}
            if len(lengths) > 1:
                raise InvalidArgumentError(f"variables have different lengths {sorted(lengths)}")
            n_steps = lengths.pop() if lengths else 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = _evaluate(self.root, values)
        if self.kind == "boolean":
            return np.broadcast_to(np.asarray(result, dtype=bool), (n_steps,)).copy()
        return np.broadcast_to(np.asarray(result, dtype=np.float64), (n_steps,)).copy()

    def __str__(self) -> str:
        return self.source


def _as_number(value: np.ndarray | float) -> np.ndarray | float:
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype == bool else value


def _evaluate(node: Node, values: Mapping[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Variable):
        return np.asarray(values[node.name], dtype=np.float64)
    if isinstance(node, Negate):
        return -_as_number(_evaluate(node.operand, values))
    if isinstance(node, Abs):
        return np.abs(_as_number(_evaluate(node.operand, values)))
    if isinstance(node, Arithmetic):
        left = _as_number(_evaluate(node.left, values))
        right = _as_number(_evaluate(node.right, values))
        return {"+": np.add, "-": np.subtract, "*": np.multiply,
                "/": np.true_divide}[node.op](left, right)
    if isinstance(node, Compare):
        left = _as_number(_evaluate(node.left, values))
        right = _as_number(_evaluate(node.right, values))
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "==": np.equal, "!=": np.not_equal}[node.op](left, right)
    if isinstance(node, Logical):
        combine = np.logical_and if node.op == "and" else np.logical_or
        result = _evaluate(node.operands[0], values)
        for operand in node.operands[1:]:
            result = combine(result, _evaluate(operand, values))
        return result
    if isinstance(node, Not):
        return np.logical_not(_evaluate(node.operand, values))
    raise TypeError(f"unexpected predicate node {node!r}")


def parse_predicate(source: str, variables: Sequence[str]) -> Predicate:
    """Parse `source` into a Predicate over `variables`, or raise PredicateError.

    The error names the column (1-based) where the predicate went wrong and lists `variables`.
    """
    if not isinstance(source, str) or not source.strip():
        raise PredicateError("the predicate is empty", str(source), None, variables)
    if len(source) > MAX_PREDICATE_LENGTH:
        raise PredicateError(f"the predicate is {len(source)} characters long; the limit is "
                             f"{MAX_PREDICATE_LENGTH}", source[:200], None, variables)
    text = source.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        column = e.offset if e.lineno in (None, 1) else None
        message = f"syntax error ({e.msg})"
        if column is not None and not 1 <= column <= len(text):
            # CPython reports offset 0 when the input ends in the middle of an expression.
            column, message = len(text) + 1, "the predicate ends too early"
        raise PredicateError(message, text, column, variables) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise PredicateError(f"the predicate cannot be parsed ({e})", text, None,
                             variables) from None
    translator = _Translator(text, variables)
    root = translator.translate(tree.body)
    return Predicate(source=text, root=root, kind=_node_type(root),
                     variables=tuple(translator.used))
