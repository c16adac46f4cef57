"""Modular arithmetic expressions (Deletang et al., "Neural Networks and the Chomsky Hierarchy"), with or
without brackets, and the one evaluator both use."""
from __future__ import annotations

import numpy as np

from .task import IGNORE_INDEX, Task, check_int

OPERATORS = ("+", "-", "*")


def running_values(expression, modulus: int = 5):
    """Yield (i, value mod `modulus` of expression[:i + 1]) at every i where that prefix is a whole expression.

    `expression` is a string ("0*1+4*3-2"; spaces are ignored) or a sequence of one-character symbols.
    Multiplication binds tighter than + and -, which associate to the left: "1-1-1" is (1-1)-1 = 4 mod 5.
    """
    frames = [[0, 1, None]]  # per open bracket: sum of finished terms, sign and product of the current term
    expect_operand = True
    for i, sym in enumerate(expression):
        if sym.isspace():
            continue
        frame = frames[-1]
        if expect_operand and sym == "(":
            frames.append([0, 1, None])
            continue
        if expect_operand and sym.isdigit():
            value = int(sym)
        elif not expect_operand and sym == ")" and len(frames) > 1:
            frames.pop()
            value = (frame[0] + frame[1] * frame[2]) % modulus
            frame = frames[-1]
        elif not expect_operand and sym in OPERATORS:
            if sym != "*":
                frame[0] = (frame[0] + frame[1] * frame[2]) % modulus
                frame[1], frame[2] = (1 if sym == "+" else -1), None
            expect_operand = True
            continue
        else:
            raise ValueError(f"malformed expression {''.join(expression)!r}: unexpected {sym!r}")
        frame[2] = value if frame[2] is None else frame[2] * value % modulus
        expect_operand = False
        if len(frames) == 1:
            yield i, (frame[0] + frame[1] * frame[2]) % modulus
    if expect_operand or len(frames) > 1:
        raise ValueError(f"malformed expression {''.join(expression)!r}: it ends early or leaves a bracket open")


def evaluate(expression, modulus: int = 5) -> int:
    """Value mod `modulus` of an expression over digits, + - * and parentheses, with the usual precedence."""
    value = None
    for _, value in running_values(expression, modulus):
        pass
    return value


class ModularArithmetic(Task):
    """Reduce a random expression of digits joined by +, - and * modulo `modulus` (5 by default).

    Vocabulary (m = modulus; vocab_size 2m + 7 = 17 for m = 5), shared with mod_arith_brackets:
    0 <pad>, 1..m the digits 0..m-1, m+1 "+", m+2 "-", m+3 "*", m+4 "(", m+5 ")", m+6 "=",
    m+7..2m+6 the answers <0>..<m-1> (class c is the value c).
    A sample of length n is an expression of n symbols (digits and operators; brackets for the bracket task)
    followed by "=", so it has n + 1 tokens; the label at the "=" position is the value of the
    expression mod m, multiplication first, + and - left to right (`evaluate`). With supervision="prefix"
    (a denser signal for small-compute runs; not the paper's setup) every position that ends a whole
    expression (a digit or ")" outside brackets) is also labelled with the value of the prefix so far.
    Expressions have odd length, so an even requested length n gives n - 1 symbols, as in Deletang et al.;
    `lengths` lists odd lengths only.
    Without brackets the digits and operators are uniform and independent.
    Chance is taken as 1/m. The answers are not exactly uniform: products make 0 more frequent at short
    lengths (19/75 = 0.253 at length 3, ~0.21 at length 9), but pooled over lengths 3-40 or 40-256 every
    answer's frequency is within 0.005 of 1/5 (measured on 40000 samples; a test checks 40-256).
    """

    brackets = False

    def __init__(self, modulus: int = 5, supervision: str = "final"):
        modulus = check_int("modulus", modulus, 2)
        if supervision not in ("final", "prefix"):
            raise ValueError(f"supervision={supervision!r} must be 'final' or 'prefix'")
        if modulus > 10:
            raise ValueError(f"modulus={modulus} must be at most 10 so that every number is one digit")
        digits = tuple(str(d) for d in range(modulus))
        symbols = ("<pad>", *digits, *OPERATORS, "(", ")", "=", *(f"<{d}>" for d in digits))
        name = "mod_arith_brackets" if self.brackets else "mod_arith"
        super().__init__(name, symbols, tuple(range(modulus + 7, 2 * modulus + 7)),
                         {"modulus": modulus, "supervision": supervision})
        self.modulus = modulus
        self.supervision = supervision
        self._token_of = {s: i for i, s in enumerate(symbols)}

    def lengths(self, min_len: int, max_len: int) -> list[int]:
        odd = [n for n in super().lengths(min_len, max_len) if n % 2]
        if not odd:
            raise ValueError(f"{self.name}: [{min_len}, {max_len}] holds no odd length; expressions have odd "
                             f"length, so widen the range")
        return odd

    def num_tokens(self, length: int) -> int:
        length = super().num_tokens(length)
        return length - (length % 2 == 0) + 1

    def _generate(self, rng: np.random.Generator, length: int) -> tuple[list[int], list[int]]:
        length -= length % 2 == 0
        expression = self._expression(rng, length)
        tokens = [self._token_of[s] for s in expression] + [self._token_of["="]]
        labels = [IGNORE_INDEX] * (length + 1)
        for i, value in running_values(expression, self.modulus):
            if self.supervision == "prefix" or i == length - 1:
                labels[i if i < length - 1 else length] = self.answer_ids[value]
        return tokens, labels

    def _expression(self, rng: np.random.Generator, length: int) -> list[str]:
        digits = rng.integers(0, self.modulus, size=length // 2 + 1)
        ops = rng.integers(0, len(OPERATORS), size=length // 2)
        out = [str(digits[0])]
        for op, digit in zip(ops, digits[1:]):
            out += [OPERATORS[op], str(digit)]
        return out


class ModularArithmeticBrackets(ModularArithmetic):
    """Modular arithmetic with nested brackets and the usual precedence; vocabulary and labels as mod_arith.

    An expression of exactly n symbols (n odd; brackets count as symbols) is a chain of terms joined by
    uniform random operators. Each term is "(" chain ")" with probability 0.3 when there is room, otherwise a
    uniform digit. A bracket holds at least one operator (size >= 5) and never wraps a whole chain, so no
    bracket is redundant like "(3)" or "((1+2))"; its size is an odd number uniform over what fits, and its
    inside is built the same way. Nesting depth grows like log n (mean 2.5, max ~6 at n = 41).
    Unlike Deletang et al.'s generator (fully bracketed binary operations with unary minus, which also makes
    even lengths), even lengths are rounded down to odd as in mod_arith. Chance 1/m as in mod_arith; the
    bracket probability 0.3 keeps the answers near uniform (0 has frequency ~0.202 over lengths 40-256 and
    ~0.22 over 3-40, as measured on 40000 samples; more brackets make products of big terms, hence 0, likelier).
    """

    brackets = True
    bracket_prob = 0.3

    def _expression(self, rng: np.random.Generator, length: int) -> list[str]:
        out: list[str] = []
        self._append_chain(rng, length, out)
        return out

    def _append_chain(self, rng: np.random.Generator, length: int, out: list[str]) -> None:
        left, largest = length, length - 2  # the first term leaves room for an operator and another term
        while True:
            if largest < 5 or rng.random() >= self.bracket_prob:
                size = 1
                out.append(str(rng.integers(self.modulus)))
            else:
                size = 2 * int(rng.integers(2, (largest - 1) // 2 + 1)) + 1  # odd, in [5, largest]
                out.append("(")
                self._append_chain(rng, size - 2, out)
                out.append(")")
            left -= size
            if left == 0:
                return
            out.append(OPERATORS[rng.integers(len(OPERATORS))])  # both sizes are odd, so left >= 2 here
            left -= 1
            largest = left
