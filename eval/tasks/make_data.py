"""Regenerate the local tasks' data files (deterministic; the shipped .jsonl files are its output).

    python -m eval.tasks.make_data

Everything is generated here from fixed seeds, so the data is ours to ship (no third-party text).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arith_question(rng: random.Random) -> tuple[str, int]:
    """"Compute a op b." over two-digit numbers (one-digit factors for *), in the embedded math corpus' wording."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 19), rng.randint(2, 9)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"Compute {a} {op} {b}.", _OPS[op](a, b)


def _distractors(rng: random.Random, answer: int) -> list[int]:
    """Three wrong answers a careless solver would give: off by one, off by ten, digits swapped."""
    candidates = {answer + 1, answer - 1, answer + 10, answer - 10}
    digits = str(abs(answer))
    if len(digits) > 1 and digits[0] != digits[-1]:
        candidates.add(int(digits[::-1]) * (1 if answer >= 0 else -1))
    candidates.discard(answer)
    return rng.sample(sorted(candidates), 3)


def arith_mc(n: int = 200, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        question, answer = _arith_question(rng)
        choices = [answer, *_distractors(rng, answer)]
        rng.shuffle(choices)
        docs.append({"question": question, "choices": [str(c) for c in choices], "label": choices.index(answer)})
    return docs


def arith_gen(n: int = 200, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": q, "answer": str(a)} for q, a in (_arith_question(rng) for _ in range(n))]


# (function name, operator) pairs whose body the name determines; the other operators are the distractors.
_BINARY = [("add", "+"), ("subtract", "-"), ("multiply", "*"), ("divide", "/"), ("power", "**"),
           ("remainder", "%"), ("floor_divide", "//")]
_COMPARE = [("is_positive", "> 0"), ("is_negative", "< 0"), ("is_zero", "== 0"), ("is_nonzero", "!= 0")]
_ARGS = [("a", "b"), ("x", "y"), ("left", "right"), ("first", "second"), ("m", "n")]


def code_mc(n: int = 100, seed: int = 3) -> list[dict]:
    """Complete a one-line Python function whose name says what it returns."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        if rng.random() < 0.6:
            name, op = rng.choice(_BINARY)
            x, y = rng.choice(_ARGS)
            prompt = f"def {name}({x}, {y}):\n    return {x}"
            wrong = rng.sample([o for _, o in _BINARY if o != op], 3)
            choices = [f"{o} {y}" for o in [op, *wrong]]
        else:
            name, test = rng.choice(_COMPARE)
            x = rng.choice(_ARGS)[0]
            prompt = f"def {name}({x}):\n    return {x}"
            choices = [test, *rng.sample([t for _, t in _COMPARE if t != test], 3)]
        correct = choices[0]
        rng.shuffle(choices)
        docs.append({"prompt": prompt, "choices": choices, "label": choices.index(correct)})
    return docs


DATASETS = {"arith_mc.jsonl": arith_mc, "arith_gen.jsonl": arith_gen, "code_mc.jsonl": code_mc}


def render(docs: list[dict]) -> str:
    return "".join(json.dumps(doc) + "\n" for doc in docs)


def main() -> None:
    for name, make in DATASETS.items():
        (TASKS_DIR / name).write_text(render(make()))
        print(f"wrote {TASKS_DIR / name}")


if __name__ == "__main__":
    main()
