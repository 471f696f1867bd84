"""GSM8K-format word problems the project generates itself: the testbed's corpus and the tests' rows.

``generate_gsm8k_rows(n, seed)`` gives ``{"question", "answer"}`` rows whose worked answers are
annotated as GSM8K's are (``48/2 = <<48/2=24>>24`` ... ``#### 72``), from ~15 templates with exact
arithmetic; the same seed gives the same rows.
"""

from __future__ import annotations

import ast
import operator
import random
from collections.abc import Callable
from fractions import Fraction

from tsloss_harness.testbed.problem_templates import NAMES, TEMPLATES

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_arithmetic(expr: str) -> Fraction:
    """Exact value of an expression made of integers, + - * / and parentheses."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(f"not plain integer arithmetic: {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


class _Solution:
    """Collects the lines of a worked solution; every computation is an exact, annotated step."""

    def __init__(self, rng: random.Random):
        # One typographic style per solution, varied across rows like the real data.
        self.spaced = rng.random() < 0.5
        self.times = rng.choice(["*", "*", "x"])
        self.lines: list[str] = []
        self.result: int | None = None

    def calc(self, expr: str, money: bool = False) -> tuple[str, int]:
        value = evaluate_arithmetic(expr)
        if value.denominator != 1 or value < 0:
            raise ArithmeticError(f"template produced a non-natural result: {expr} = {value}")
        value = int(value)
        shown = expr.replace("*", f" {self.times} ") if self.times == "x" else expr
        if self.spaced:
            for op in "+-/*":
                shown = shown.replace(op, f" {op} ")
        shown = " ".join(shown.split())
        dollar = "$" if money else ""
        self.result = value
        return f"{shown} = {dollar}<<{expr}={value}>>{value}", value

    def line(self, text: str) -> None:
        self.lines.append(text)

    def answer(self) -> str:
        return "\n".join(self.lines + [f"#### {self.result}"])


def generate_gsm8k_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` GSM8K-format rows ``{"question", "answer"}``; same seed, same rows.

    Templates are drawn in shuffled rounds, so even a handful of rows covers many kinds of problem.
    """
    if n < 0:
        raise ValueError(f"number of rows must be >= 0, got {n}")
    rng = random.Random(seed)
    rows: list[dict] = []
    order: list[Callable] = []
    while len(rows) < n:
        if not order:
            order = list(TEMPLATES)
            rng.shuffle(order)
        template = order.pop()
        solution = _Solution(rng)
        question = template(rng, solution, rng.choice(NAMES))
        rows.append({"question": question, "answer": solution.answer()})
    return rows
