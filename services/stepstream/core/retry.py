"""Retry timing: exponential backoff, delay rules written as arithmetic over ``retried``, and which
HTTP answers are worth another attempt.

A delay rule is what Upstash Workflow calls ``retryDelay``: an expression in milliseconds over
``retried`` (how many retries came before this one: 0 for the first), such as
``1000 * pow(2, retried)`` or ``min(60000, 500 + retried * 1000)``. It is parsed, never executed:
only numbers, ``retried``, ``+ - * / % **``, parentheses and the functions below are allowed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_RULE_LENGTH = 200

# The 4xx answers that say "try again later" rather than "this request is wrong", for a delivery's
# endpoint and an engine-side call alike (every 5xx is retried too; every other 4xx is final).
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})

_FUNCTIONS: dict[str, Callable[..., float]] = {
    "pow": lambda base, exponent: float(base) ** float(exponent),
    "min": min,
    "max": max,
    "abs": abs,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
}
_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def backoff_ms(retry: int, base_ms: int, max_ms: int) -> int:
    """Exponential backoff before retry number ``retry`` (1 for the first retry): base, 2·base, 4·base, …"""
    if retry < 1:
        raise ValueError(f"Expected a retry number of 1 or more, but got {retry}")
    return min(max_ms, base_ms * (1 << min(retry - 1, 32)))


def check_delay_rule(rule: str) -> None:
    """Raise ``ValueError`` saying what is wrong if ``rule`` is not a delay rule this module can evaluate."""
    _parse(rule)
    delay_rule_ms(rule, retried=0, max_ms=1)  # a rule that fails for the first retry fails for all


def delay_rule_ms(rule: str, *, retried: int, max_ms: int) -> int:
    """The delay in ms that ``rule`` gives before a retry, clamped to 0..``max_ms``."""
    tree = _parse(rule)
    try:
        value = _evaluate(tree.body, float(retried))
    except OverflowError:
        return max_ms
    except (ArithmeticError, ValueError, TypeError) as error:
        raise ValueError(f"Expected the delay rule {rule!r} to give a number, but {error}") from None
    if math.isnan(value):
        raise ValueError(f"Expected the delay rule {rule!r} to give a number, but it gives NaN")
    return int(min(max(value, 0.0), float(max_ms)))


def _parse(rule: str) -> ast.Expression:
    if len(rule) > MAX_RULE_LENGTH:
        raise ValueError(f"Expected a delay rule of at most {MAX_RULE_LENGTH} characters, but got {len(rule)}")
    try:
        tree = ast.parse(rule.strip(), mode="eval")  # leading blanks would be an indentation error
    except SyntaxError:
        raise ValueError(
            f"Expected a delay rule such as '1000 * pow(2, retried)', but {rule!r} does not parse"
        ) from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.USub,
            ast.UAdd,
            ast.Call,
            ast.Name,
            ast.Load,
            ast.Constant,
            *_OPERATORS,
        )
        if not isinstance(node, allowed):
            raise ValueError(
                f"Expected a delay rule of numbers, retried, + - * / % ** and {', '.join(sorted(_FUNCTIONS))}, "
                f"but {rule!r} has {type(node).__name__}"
            )
        if isinstance(node, ast.Name) and node.id != "retried" and node.id not in _FUNCTIONS:
            raise ValueError(f"Expected only the variable 'retried' in a delay rule, but {rule!r} uses {node.id!r}")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, int | float)):
            raise ValueError(f"Expected only numbers in a delay rule, but {rule!r} has {node.value!r}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise ValueError(
                f"Expected calls of {', '.join(sorted(_FUNCTIONS))} in a delay rule, but {rule!r} has another"
            )
    return tree


def _evaluate(node: ast.expr, retried: float) -> float:
    match node:
        case ast.Constant(value=int() | float() as value):
            return float(value)
        case ast.Name(id="retried"):
            return retried
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_evaluate(operand, retried)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _evaluate(operand, retried)
        case ast.BinOp(left=left, op=op, right=right):
            left_value, right_value = _evaluate(left, retried), _evaluate(right, retried)
            if isinstance(op, ast.Pow) and abs(right_value) > 1_000:
                raise OverflowError
            return float(_OPERATORS[type(op)](left_value, right_value))
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]):
            return float(_FUNCTIONS[name](*[_evaluate(arg, retried) for arg in args]))
    raise ValueError(f"{ast.unparse(node)!r} is not allowed")
