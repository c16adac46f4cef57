"""Math benchmarks with exact-match numeric answers, generated offline: GSM-style word problems and arithmetic of
increasing digits.

    python -m eval.math_eval --checkpoint runs/default --task gsm --num 200 --out gsm.json
    python -m eval.math_eval --checkpoint runs/default --task arithmetic --digits 1-6 --num 100 --out arith.json
    python -m eval.math_eval --checkpoint runs/default --task gsm --data gsm8k/test.jsonl --out gsm8k.json

gsm: word problems from the `reasoning-gym` package's GSM-Symbolic generator (templates of GSM8K problems with
new names and numbers, each with a worked solution ending "#### answer"), or GSM8K itself from a local jsonl
(--data, records {"question", "answer"} as in openai/grade-school-math). Prompts are few-shot in GSM8K's format,
"Question: ...\\nAnswer: <solution>\\n#### <number>", greedy. `accuracy` takes the number after "####" (lm-eval's
strict match); `accuracy_flexible` the last number of the completion.
arithmetic: "Question: What is a + b?\\nAnswer: c" with both operands of exactly d digits, for +, - and *;
`by_digits` shows where a model stops carrying correctly.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import torch

from eval.generation import load_checkpoint, model_info, sample

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_STRICT = re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the exact numeric answer
    solution: str  # what follows "Answer:" in a worked example
    group: str  # "gsm", or the digit count of an arithmetic problem


def gsm_problems(num: int, shots: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(exemplars, problems): GSM-Symbolic problems from reasoning-gym, all distinct draws of one seed."""
    try:
        import reasoning_gym
    except ImportError as err:
        raise ValueError("--task gsm needs the reasoning-gym package (pip install -r requirements.txt), or "
                         "--data with a local GSM8K jsonl") from err
    items = reasoning_gym.create_dataset("gsm_symbolic", size=num + shots, seed=seed)
    problems = []
    for item in items:
        solution = item["metadata"]["answer_cot"].strip()
        problems.append(Problem(item["question"], item["answer"], solution, "gsm"))
    return problems[:shots], problems[shots:]


def gsm8k_problems(path: Path) -> list[Problem]:
    """GSM8K-format records {"question", "answer": "... #### 42"} from a local jsonl file."""
    problems = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        match = _STRICT.search(record.get("answer", ""))
        if "question" not in record or match is None:
            raise ValueError(f"{path}:{line_no}: expected {{'question': ..., 'answer': '... #### <number>'}} "
                             "as in GSM8K")
        problems.append(Problem(record["question"], match.group(1), record["answer"].strip(), "gsm"))
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


def arithmetic_problems(digits: list[int], num: int, shots: int, ops: str = "+-*",
                        seed: int = 0) -> tuple[dict, list[Problem]]:
    """({digits: exemplars}, problems): num problems per digit count, operands of exactly that many digits."""
    bad = set(ops) - set("+-*")
    if bad or not ops:
        raise ValueError(f"ops={ops!r} must be a non-empty combination of '+', '-' and '*'")
    rng = random.Random(seed)
    exemplars, problems = {}, []
    for d in digits:
        lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10 ** d - 1
        drawn = []
        for _ in range(num + shots):
            a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(ops)
            value = a + b if op == "+" else a - b if op == "-" else a * b
            drawn.append(Problem(f"What is {a} {op} {b}?", str(value), str(value), str(d)))
        exemplars[str(d)], problems = drawn[:shots], problems + drawn[shots:]
    return exemplars, problems


def parse_digits(text: str) -> list[int]:
    """"1-6" -> [1..6]; "2,4" -> [2, 4]; "3" -> [3]."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            digits = list(range(lo, hi + 1))
        else:
            digits = [int(v) for v in text.split(",")]
    except ValueError:
        digits = []
    if not digits or min(digits) < 1 or max(digits) > 18:
        raise ValueError(f"--digits {text!r} must be a range like 1-6 or a list like 2,4 of digits from 1 to 18")
    return digits


def to_number(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text.replace("$", "").replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def extract(completion: str, how: str) -> str | None:
    """The answer in a completion: the number after "####" ("strict"), the "last" or the "first" number; None if
    there is none."""
    if how == "strict":
        match = _STRICT.search(completion)
        return match.group(1) if match else None
    numbers = _NUMBER.findall(completion)
    return (numbers[-1] if how == "last" else numbers[0]) if numbers else None


def is_correct(prediction: str | None, answer: str) -> bool:
    """Exact numeric match: 15, 15.0, 1,5 (thousands) and $15 compare by value."""
    value = to_number(prediction)
    return value is not None and value == to_number(answer)


def prompt_for(problem: Problem, exemplars: list[Problem]) -> str:
    shots = "".join(f"Question: {e.question}\nAnswer: {e.solution}\n\n" for e in exemplars)
    return f"{shots}Question: {problem.question}\nAnswer:"


def evaluate(model, tokenizer, problems: list[Problem], exemplars, max_new_tokens: int, task: str,
             log=print) -> dict:
    """Greedy completions, scored by exact numeric match; `exemplars` is a list, or {group: list}."""
    stop = ("\nQuestion:",) if task == "gsm" else ("\n",)
    records = []
    for index, problem in enumerate(problems):
        shots = exemplars[problem.group] if isinstance(exemplars, dict) else exemplars
        completion = sample(model, tokenizer, prompt_for(problem, shots), max_new_tokens=max_new_tokens,
                            stop=stop)[0]
        prediction = extract(completion, "strict" if task == "gsm" else "first")
        record = {**asdict(problem), "completion": completion, "prediction": prediction,
                  "correct": is_correct(prediction, problem.answer)}
        if task == "gsm":
            record["correct_flexible"] = is_correct(extract(completion, "last"), problem.answer)
        records.append(record)
        if (index + 1) % 50 == 0 or index + 1 == len(problems):
            log(f"[{index + 1}/{len(problems)}] accuracy so far "
                f"{sum(r['correct'] for r in records) / len(records):.3f}")
    result = {"task": task, "accuracy": _mean(r["correct"] for r in records), "num_problems": len(records)}
    if task == "gsm":
        result["accuracy_flexible"] = _mean(r["correct_flexible"] for r in records)
    else:
        groups = sorted({r["group"] for r in records}, key=int)
        result["by_digits"] = {g: _mean(r["correct"] for r in records if r["group"] == g) for g in groups}
    return {**result, "problems": records}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir, checkpoints/latest or run dir")
    parser.add_argument("--task", required=True, choices=("gsm", "arithmetic"))
    parser.add_argument("--num", type=int, default=100, help="problems (per digit count for arithmetic)")
    parser.add_argument("--digits", default="1-6", help="arithmetic: digit counts, e.g. 1-6 or 2,4")
    parser.add_argument("--ops", default="+-*", help="arithmetic: operations to draw from")
    parser.add_argument("--shots", type=int, default=None, help="worked examples in the prompt (gsm 4, arithmetic 5)")
    parser.add_argument("--data", type=Path, help="gsm: a local GSM8K-format jsonl instead of generated problems")
    parser.add_argument("--max-new-tokens", type=int, help="default: 256 for gsm, 24 for arithmetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (scores and every completion)")
    args = parser.parse_args(argv)
    shots = args.shots if args.shots is not None else (4 if args.task == "gsm" else 5)
    max_new = args.max_new_tokens or (256 if args.task == "gsm" else 24)

    from trainer.checkpoint import CheckpointError

    try:
        if args.num < 1 or shots < 0 or max_new < 1:
            raise ValueError(f"--num {args.num} and --max-new-tokens {max_new} must be >= 1, --shots {shots} >= 0")
        if args.data is not None and args.task != "gsm":
            raise ValueError("--data is for --task gsm (a GSM8K-format jsonl)")
        if args.task == "gsm":
            if args.data is None:
                exemplars, problems = gsm_problems(args.num, shots, args.seed)
            else:
                exemplars = gsm_problems(0, shots, args.seed)[0] if shots else []
                problems = gsm8k_problems(args.data)[:args.num]
            source = str(args.data) if args.data is not None else "reasoning-gym gsm_symbolic"
        else:
            exemplars, problems = arithmetic_problems(parse_digits(args.digits), args.num, shots, args.ops,
                                                      args.seed)
            source = f"generated, ops {args.ops!r}"
        model, tokenizer, checkpoint = load_checkpoint(args.checkpoint, args.device)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(model, tokenizer, problems, exemplars, max_new, args.task,
                      log=lambda m: print(m, file=sys.stderr))
    result = {"checkpoint": str(checkpoint), "model": model_info(model), "source": source, "shots": shots,
              "seed": args.seed, "max_new_tokens": max_new, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {k: result[k] for k in ("task", "accuracy", "accuracy_flexible", "by_digits") if k in result}
    print(json.dumps({**summary, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
