"""The predicate language: what it rejects, the error column it reports, and what it computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.predicate import PredicateError, parse_predicate

VARIABLES = ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity", "action",
             "reward", "t"]


@pytest.fixture
def steps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 500
    values = {name: rng.normal(size=n) for name in VARIABLES}
    values["action"] = rng.integers(0, 2, size=n).astype(np.float64)
    values["reward"] = np.ones(n)
    values["t"] = np.arange(n, dtype=np.float64)
    return values


@pytest.mark.parametrize("source, reason", [
    ("pole_angle.real > 0", "attribute"),
    ("(1).__class__", "attribute"),
    ("pole_angle.__class__.__bases__", "attribute"),
    ("t[0] > 1", "indexing"),
    ("t[1:3]", "indexing"),
    ("__import__('os').system('true')", "abs() is the only function"),
    ("eval('1')", "abs() is the only function"),
    ("max(t, 1)", "abs() is the only function"),
    ("abs(t, 1)", "exactly one argument"),
    ("abs(x=t)", "exactly one argument"),
    ("(lambda: 1)()", "abs() is the only function"),
    ("lambda: 1", "lambda"),
    ("[t for t in (1, 2)]", "comprehensions"),
    ("sum(t for t in (1, 2))", "abs() is the only function"),
    ("{t: 1 for t in (1,)}", "comprehensions"),
    ("__builtins__", "unknown variable"),
    ("__name__ == 1", "unknown variable"),
    ("velocity > 0", "unknown variable"),
    ("'abc' == t", "only numbers"),
    ("None", "only numbers"),
    ("1j * t", "only numbers"),
    ("t if t > 1 else 0", "if c else"),
    ("(y := 1)", "assignment"),
    ("(t, 1)", "tuples"),
    ("[t]", "lists"),
    ("t ** 2", "Pow"),
    ("t % 2", "Mod"),
    ("t // 2", "FloorDiv"),
    ("t > 0 & action == 1", "use 'and'"),
    ("~(t > 0)", "use 'not'"),
    ("t in (1, 2)", "In"),
    ("t is 1", "Is"),
    ("pole_angle and action", "needs a condition"),
    ("not t", "needs a condition"),
    ("f'{t}'", "strings"),
])
def test_predicate_rejects_outside_whitelist(source: str, reason: str) -> None:
    with pytest.raises(PredicateError) as info:
        parse_predicate(source, VARIABLES)
    assert reason in str(info.value)
    assert "pole_angle" in str(info.value)  # the list of variables that exist


def test_predicate_error_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError):
        parse_predicate("x > 0", VARIABLES)


@pytest.mark.parametrize("source, column", [
    ("pole_angle > 0 and actoin == 1", 20),
    ("pole_angle.real > 0", 11),
    ("t[0] > 1", 2),
    ("abs(t) + max(t, 1)", 10),
    ("pole_angle >", 13),
    ("1 +* 2", 4),
])
def test_predicate_error_gives_column(source: str, column: int) -> None:
    with pytest.raises(PredicateError) as info:
        parse_predicate(source, VARIABLES)
    assert info.value.column == column
    assert f"at column {column}" in str(info.value)
    assert info.value.variables == tuple(VARIABLES)


def test_unknown_variable_suggests_close_name() -> None:
    with pytest.raises(PredicateError, match="did you mean 'pole_angle'"):
        parse_predicate("pole_angel > 0", VARIABLES)


@pytest.mark.parametrize("source", ["", "   ", "x" * 2001])
def test_empty_or_huge_predicate_rejected(source: str) -> None:
    with pytest.raises(PredicateError):
        parse_predicate(source, VARIABLES)


def test_deeply_nested_predicate_rejected() -> None:
    with pytest.raises(PredicateError, match="nested"):
        parse_predicate(" + ".join(["t"] * 200), VARIABLES)


@pytest.mark.parametrize("source, reference", [
    ("pole_angle > 0.1", lambda v: v["pole_angle"] > 0.1),
    ("-0.5 < pole_angle <= 0.5", lambda v: (-0.5 < v["pole_angle"]) & (v["pole_angle"] <= 0.5)),
    ("cart_position < cart_velocity < pole_angle",
     lambda v: (v["cart_position"] < v["cart_velocity"]) & (v["cart_velocity"] < v["pole_angle"])),
    ("pole_angle > 0 and action == 1", lambda v: (v["pole_angle"] > 0) & (v["action"] == 1)),
    ("pole_angle > 0 or not action != 0", lambda v: (v["pole_angle"] > 0) | (v["action"] == 0)),
    ("abs(pole_angle) >= 1", lambda v: np.abs(v["pole_angle"]) >= 1),
    ("pole_angle + 0.5 * pole_angular_velocity - cart_velocity / 4",
     lambda v: v["pole_angle"] + 0.5 * v["pole_angular_velocity"] - v["cart_velocity"] / 4),
    ("-pole_angle * -(t - 3)", lambda v: -v["pole_angle"] * -(v["t"] - 3)),
    ("(action == 1) * pole_angle", lambda v: (v["action"] == 1) * v["pole_angle"]),
    ("1 / (t - 2)", lambda v: 1 / (v["t"] - 2)),
    ("t > 1e2", lambda v: v["t"] > 100.0),
    ("reward == True", lambda v: v["reward"] == 1.0),
])
def test_predicate_matches_numpy(source, reference, steps) -> None:
    predicate = parse_predicate(source, VARIABLES)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.asarray(reference(steps))
    result = predicate.evaluate(steps)
    assert result.shape == (500,)
    assert result.dtype == (bool if expected.dtype == bool else np.float64)
    np.testing.assert_array_equal(result, expected)


def test_predicate_kind_and_variables() -> None:
    boolean = parse_predicate("pole_angle > 0 and action == 1", VARIABLES)
    numeric = parse_predicate("abs(pole_angle) + t", VARIABLES)
    assert boolean.kind == "boolean"
    assert boolean.variables == ("pole_angle", "action")
    assert numeric.kind == "numeric"
    assert numeric.variables == ("pole_angle", "t")


def test_constant_predicate_broadcasts() -> None:
    predicate = parse_predicate("1 < 2", VARIABLES)
    result = predicate.evaluate({}, n_steps=4)
    np.testing.assert_array_equal(result, [True, True, True, True])


def test_evaluate_missing_variable_fails() -> None:
    predicate = parse_predicate("pole_angle > 0", VARIABLES)
    with pytest.raises(InvalidArgumentError, match="pole_angle"):
        predicate.evaluate({"t": np.zeros(3)})


# Random expressions: each strategy yields (source text, numpy function of the variables).
_numeric_leaf = st.one_of(
    st.sampled_from(VARIABLES[:5]).map(lambda name: (name, lambda v, n=name: v[n])),
    st.floats(-5, 5, allow_nan=False).map(lambda x: (repr(x), lambda v, x=x: x)),
)


def _extend_numeric(children):
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(
        lambda parts: (
            f"({parts[0][0]} {parts[1]} {parts[2][0]})",
            lambda v, a=parts[0][1], op=parts[1], b=parts[2][1]: {
                "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
            }[op](a(v), b(v)),
        ))
    unary = children.map(lambda c: (f"-({c[0]})", lambda v, f=c[1]: -f(v)))
    absolute = children.map(lambda c: (f"abs({c[0]})", lambda v, f=c[1]: np.abs(f(v))))
    return st.one_of(binary, unary, absolute)


_numeric = st.recursive(_numeric_leaf, _extend_numeric, max_leaves=6)
_comparison = st.tuples(_numeric, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
                        _numeric).map(lambda parts: (
    f"{parts[0][0]} {parts[1]} {parts[2][0]}",
    lambda v, a=parts[0][1], op=parts[1], b=parts[2][1]: {
        "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "==": np.equal, "!=": np.not_equal,
    }[op](a(v), b(v)),
))


def _extend_boolean(children):
    both = st.tuples(children, st.sampled_from(["and", "or"]), children).map(lambda parts: (
        f"({parts[0][0]}) {parts[1]} ({parts[2][0]})",
        lambda v, a=parts[0][1], op=parts[1], b=parts[2][1]: (
            np.logical_and if op == "and" else np.logical_or)(a(v), b(v)),
    ))
    negated = children.map(lambda c: (f"not ({c[0]})", lambda v, f=c[1]: np.logical_not(f(v))))
    return st.one_of(both, negated)


_boolean = st.recursive(_comparison, _extend_boolean, max_leaves=4)


@settings(max_examples=150, deadline=None)
@given(expression=st.one_of(_numeric, _boolean), seed=st.integers(0, 2**16))
def test_random_predicates_match_numpy(expression, seed) -> None:
    source, reference = expression
    rng = np.random.default_rng(seed)
    values = {name: rng.normal(size=64) for name in VARIABLES}
    values["action"] = rng.integers(0, 2, size=64).astype(np.float64)
    with np.errstate(all="ignore"):
        expected = np.broadcast_to(np.asarray(reference(values)), (64,))
    result = parse_predicate(source, VARIABLES).evaluate(values, n_steps=64)
    np.testing.assert_array_equal(result, expected)
