"""Exact arithmetic on a parsed expression: no ``eval``, no names, no calls."""

import ast
import operator
from fractions import Fraction

from .errors import ToolError

MAX_EXPONENT = 1000
MAX_DIGITS = 1000
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1:
                raise ToolError("calculator: only whole-number exponents are supported")
            if abs(right) > MAX_EXPONENT:
                raise ToolError(f"calculator: exponent {right} is larger than {MAX_EXPONENT}")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("calculator: division by zero")
        result = Fraction(_BINARY[type(node.op)](left, right))
        if max(len(str(result.numerator)), len(str(result.denominator))) > MAX_DIGITS:
            raise ToolError(f"calculator: result has more than {MAX_DIGITS} digits")
        return result
    raise ToolError(f"calculator: unsupported expression {ast.unparse(node)!r}; use numbers, + - * / // % ** and ()")


def format_number(value: Fraction) -> str:
    """An integer as is; a fraction as a decimal, exact when it terminates, else to 12 significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    rest, places = value.denominator, {2: 0, 5: 0}
    for prime in places:
        while rest % prime == 0:
            rest //= prime
            places[prime] += 1
    if rest != 1:
        return f"{float(value):.12g}"
    shift = max(places.values())
    digits = str(abs(value.numerator) * 10**shift // value.denominator).rjust(shift + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-shift]}.{digits[-shift:]}".rstrip("0")


def calculate(expression: str) -> str:
    """The exact value of an arithmetic expression, e.g. ``calculate("23 * 47 + 1/4") == "1081.25"``.

    Accepts numbers (commas as thousands separators are dropped), ``+ - * / // % **`` and parentheses;
    anything else raises :class:`ToolError` with the reason.
    """
    text = expression.strip().replace(",", "").replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text:
        raise ToolError("calculator: empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise ToolError(f"calculator: cannot parse {expression!r}: {error.msg}") from None
    return format_number(_evaluate(tree))
