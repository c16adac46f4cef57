"""Generated math problems with worked solutions, for the math part of the embedded corpus.

Every arithmetic step is written as `expression = value` (segments joined by " and ", after a label
ending in ": "), so a test can re-evaluate each one.
"""
import math
import random
from fractions import Fraction

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _expr_tree(rng: random.Random, leaves: int):
    """A random expression tree over small integers: an int, or (op, left, right)."""
    if leaves == 1:
        return rng.randint(1, 20)
    split = rng.randint(1, leaves - 1)
    left, right = _expr_tree(rng, split), _expr_tree(rng, leaves - split)
    op = rng.choice("+-*")
    if op == "*" and _value(left) * _value(right) > 10_000:
        op = "+"
    if isinstance(left, int) and isinstance(right, int) and rng.random() < 0.25:
        op, left = "/", right * rng.randint(1, 12)  # exact division only
    return (op, left, right)


def _value(node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _value(left), _value(right)
    if op == "/":
        return a // b
    return a + b if op == "+" else a - b if op == "-" else a * b


def _render(node, parent_prec: int = 0, right_side: bool = False) -> str:
    if isinstance(node, int):
        return str(node) if node >= 0 else f"({node})"
    op, left, right = node
    prec = _PRECEDENCE[op]
    text = f"{_render(left, prec)} {op} {_render(right, prec, right_side=True)}"
    needs_parens = prec < parent_prec or (prec == parent_prec and right_side)
    return f"({text})" if needs_parens else text


def _reduce_once(node):
    """Evaluate the first operation (in post-order) whose operands are both numbers."""
    op, left, right = node
    if isinstance(left, int) and isinstance(right, int):
        return _value(node)
    if not isinstance(left, int):
        return (op, _reduce_once(left), right)
    return (op, left, _reduce_once(right))


def arithmetic(rng: random.Random):
    tree = _expr_tree(rng, rng.randint(3, 5))
    chain = [_render(tree)]
    while not isinstance(tree, int):
        tree = _reduce_once(tree)
        chain.append(_render(tree))
    question = f"Compute {chain[0]}."
    steps = ["Work inside parentheses first, then multiply and divide, then add and subtract from left to right.",
             "Steps: " + " = ".join(chain)]
    return question, steps, chain[-1]


def _linear(a: int, b: int, var: str = "x") -> str:
    """Format a*var + b, e.g. 3x - 4, -x, 7."""
    if a == 0:
        return str(b)
    head = {1: var, -1: f"-{var}"}.get(a, f"{a}{var}")
    if b == 0:
        return head
    return f"{head} + {b}" if b > 0 else f"{head} - {-b}"


def linear_equation(rng: random.Random):
    x = rng.randint(-12, 12)
    a = rng.choice([k for k in range(-9, 10) if k != 0])
    c = rng.choice([k for k in range(-9, 10) if k != a])
    b = rng.randint(-30, 30)
    d = (a - c) * x + b
    steps = []
    if c != 0:
        verb = f"Subtract {c}x from" if c > 0 else f"Add {-c}x to"
        steps.append(f"{verb} both sides: {_linear(a - c, b)} = {d}")
    if b != 0:
        verb = f"Subtract {b} from" if b > 0 else f"Add {-b} to"
        steps.append(f"{verb} both sides: {_linear(a - c, 0)} = {d - b}")
    if a - c != 1:
        steps.append(f"Divide both sides by {a - c}: x = {d - b} / {_paren(a - c)} = {x}")
    value = a * x + b
    steps.append(f"Check: {a} * {_paren(x)} + {_paren(b)} = {value} and {c} * {_paren(x)} + {_paren(d)} = {value}")
    return f"Solve for x: {_linear(a, b)} = {_linear(c, d)}.", steps, f"x = {x}"


def _paren(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def linear_system(rng: random.Random):
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    while True:
        a1, b1, a2, b2 = (rng.choice([k for k in range(-6, 7) if k != 0]) for _ in range(4))
        if a1 * b2 - a2 * b1 != 0:
            break
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    eq1 = f"{_linear(a1, 0)} + {_linear(b1, 0, 'y')} = {c1}".replace("+ -", "- ")
    eq2 = f"{_linear(a2, 0)} + {_linear(b2, 0, 'y')} = {c2}".replace("+ -", "- ")
    coef_y, rhs = b1 * a2 - b2 * a1, c1 * a2 - c2 * a1
    steps = [
        f"Multiply the first equation by {a2} and the second by {a1}, then subtract to eliminate x.",
        f"Coefficient of y: {b1} * {_paren(a2)} - {_paren(b2)} * {_paren(a1)} = {coef_y}",
        f"Right side: {c1} * {_paren(a2)} - {_paren(c2)} * {_paren(a1)} = {rhs}",
        f"So y = {rhs} / {_paren(coef_y)} = {y}",
        f"Substitute into the first equation: x = ({c1} - {_paren(b1)} * {_paren(y)}) / {_paren(a1)} = {x}",
    ]
    return f"Solve the system: {eq1} and {eq2}.", steps, f"x = {x}, y = {y}"


def fractions(rng: random.Random):
    a, b = rng.randint(1, 12), rng.randint(2, 12)
    c, d = rng.randint(1, 12), rng.randint(2, 12)
    op = rng.choice("+-")
    lcm = b * d // math.gcd(b, d)
    na, nc = a * (lcm // b), c * (lcm // d)
    top = na + nc if op == "+" else na - nc
    result = Fraction(top, lcm)
    steps = [
        f"The least common denominator of {b} and {d} is {lcm}.",
        f"Rewrite: {a}/{b} {op} {c}/{d} = {na}/{lcm} {op} {nc}/{lcm} = {top}/{lcm}",
    ]
    answer = str(result.numerator) if result.denominator == 1 else f"{result.numerator}/{result.denominator}"
    if result.denominator != lcm:
        g = math.gcd(abs(top), lcm)
        steps.append(f"Divide top and bottom by {g}: {top}/{lcm} = {answer}")
    return f"Compute {a}/{b} {op} {c}/{d}.", steps, answer


def gcd(rng: random.Random):
    g = rng.randint(1, 30)
    a, b = g * rng.randint(2, 40), g * rng.randint(2, 40)
    a, b = max(a, b), min(a, b)
    question = f"Find the greatest common divisor of {a} and {b}."
    steps = ["Use the Euclidean algorithm: divide and keep the remainder."]
    while b:
        steps.append(f"Divide: {a} = {a // b} * {b} + {a % b}")
        a, b = b, a % b
    steps.append(f"The remainder is 0, so the last divisor {a} is the answer.")
    return question, steps, str(a)


def factorization(rng: random.Random):
    n = 1
    while n < 12:
        n = math.prod(rng.choice([2, 2, 2, 3, 3, 5, 7, 11, 13]) for _ in range(rng.randint(2, 6)))
    question, steps, factors, m = f"Write {n} as a product of primes.", [], [], n
    p = 2
    while m > 1:
        if m % p == 0:
            steps.append(f"Divide by {p}: {m} = {p} * {m // p}")
            factors.append(p)
            m //= p
        else:
            p += 1
    powers = [f"{q}^{factors.count(q)}" if factors.count(q) > 1 else str(q) for q in sorted(set(factors))]
    return question, steps, f"{n} = " + " * ".join(powers)


_NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kai", "Lena"]
_ITEMS = ["notebooks", "pencils", "apples", "tickets", "stamps", "bottles of juice", "bus passes", "cakes"]


def word_problem(rng: random.Random):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        n, price = rng.randint(2, 15), rng.randint(1, 9)
        paid = (n * price // 10 + 1) * 10
        q = f"{name} buys {n} {item} at {price} dollars each and pays with {paid} dollars. How much change is left?"
        steps = [f"Cost: {n} * {price} = {n * price}", f"Change: {paid} - {n * price} = {paid - n * price}"]
        return q, steps, f"{paid - n * price} dollars"
    if kind == 1:
        speed, hours = rng.randint(3, 90), rng.randint(2, 9)
        q = f"A train travels at {speed} km per hour for {hours} hours. How far does it go?"
        return q, [f"Distance: {speed} * {hours} = {speed * hours}"], f"{speed * hours} km"
    if kind == 2:
        people, total = rng.randint(2, 9), rng.randint(10, 99)
        q = (f"{name} shares {total} {item} equally among {people} friends. "
             "How many does each get, and how many are left?")
        steps = [f"Each gets: {total} // {people} = {total // people}",
                 f"Left over: {total} % {people} = {total % people}"]
        return q, steps, f"{total // people} each, {total % people} left"
    price, percent = rng.randint(1, 20) * 20, rng.choice([10, 15, 20, 25, 30, 50])
    off = price * percent // 100
    q = f"A coat costs {price} dollars and is {percent} percent off. What is the sale price?"
    steps = [f"Discount: {price} * {percent} / 100 = {off}", f"Sale price: {price} - {off} = {price - off}"]
    return q, steps, f"{price - off} dollars"


GENERATORS = (arithmetic, linear_equation, linear_system, fractions, gcd, factorization, word_problem)


def worksheet(rng: random.Random, index: int) -> str:
    """A document of a few problems, each with its question, worked steps and answer."""
    parts = [f"Practice set {index}"]
    for k in range(1, rng.randint(3, 6) + 1):
        question, steps, answer = rng.choice(GENERATORS)(rng)
        parts.append(f"Problem {k}. {question}\nSolution.\n" + "\n".join(steps) + f"\nAnswer: {answer}")
    return "\n\n".join(parts) + "\n"
