"""HumanEval: bundled problems, the pass@k estimator against hand-computed values, canonical solutions passing in
the sandbox and wrong ones failing, sampling with stop sequences, and the CLI end to end."""
import json
from math import comb

import pytest
import torch
from torch import nn

from eval.generation import checkpoint_tokenizer, load_checkpoint, sample, truncate_at_stop
from eval.humaneval import STOP, check_completion, evaluate, main, pass_at_k, read_problems
from eval.sandbox import Limits
from model.lm import LanguageModel
from eval_helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


class Scripted(nn.Module):
    """Writes a fixed token sequence after any prompt, then EOS: a model whose output a test chooses."""

    _pick = staticmethod(LanguageModel._pick)

    def __init__(self, script: list, vocab_size: int, eos_id: int):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.script, self.vocab_size, self.eos_id = script, vocab_size, eos_id

    def forward(self, input_ids, state=None, return_state=False):
        position = 0 if state is None else state
        token = self.script[position] if position < len(self.script) else self.eos_id
        logits = torch.full((*input_ids.shape, self.vocab_size), -1e4)
        logits[:, -1, token] = 0.0
        return (logits, position + 1) if return_state else logits


def test_bundled_problems_are_the_164():
    problems = read_problems()
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all({"prompt", "canonical_solution", "test", "entry_point"} <= set(p) for p in problems)
    assert len(read_problems(limit=5)) == 5


def test_pass_at_k_matches_hand_computed_values():
    # one problem, n=5 samples, c=2 correct: pass@1 = 1 - C(3,1)/C(5,1) = 0.4, pass@2 = 1 - C(3,2)/C(5,2) = 0.7
    assert pass_at_k([5], [2], 1) == pytest.approx(0.4, abs=1e-12)
    assert pass_at_k([5], [2], 2) == pytest.approx(0.7, abs=1e-12)
    assert pass_at_k([4], [1], 3) == pytest.approx(1 - comb(3, 3) / comb(4, 3), abs=1e-12)  # 0.75
    assert pass_at_k([10, 10], [0, 10], 5) == pytest.approx(0.5, abs=1e-12)  # mean of 0 and 1
    assert pass_at_k([3], [2], 2) == 1.0  # n - c < k: every k-subset holds a correct sample
    with pytest.raises(ValueError, match="pass@3 needs at least 3 samples"):
        pass_at_k([2], [1], 3)


def test_stop_sequences_end_the_function_body():
    body = "    return x + 1\n"
    for stop in STOP:
        assert truncate_at_stop(body + stop + " rest", STOP) == (body, True)
    assert truncate_at_stop(body, STOP) == (body, False)
    assert truncate_at_stop("    y = 1\n    # keep indented comments\n", STOP)[1] is False


def test_canonical_solutions_pass_and_wrong_ones_fail():
    problems = read_problems()
    # all 164: the sandbox must not refuse anything a correct solution or its tests do (~30 ms each)
    failing = [p["task_id"] for p in problems if not check_completion(p, p["canonical_solution"]).passed]
    assert failing == []
    for problem in (problems[i] for i in (0, 2, 12, 53, 101)):
        assert check_completion(problem, "    return None\n").status == "failed", problem["task_id"]
    looping = check_completion(problems[0], "    while True:\n        pass\n", Limits(timeout_s=1.0))
    assert looping.status == "timeout"


def test_evaluate_scores_what_the_model_writes(run_dir):
    _, tokenizer, _ = load_checkpoint(run_dir)
    problem = read_problems(limit=1)
    right = problem[0]["canonical_solution"] + "\ndef unrelated():\n    raise SystemExit(1)\n"
    scores = {}
    for name, text in (("right", right), ("wrong", "    return not True\n")):
        model = Scripted(tokenizer.encode(text), tokenizer.vocab_size, tokenizer.eos_id)
        result = evaluate(model, tokenizer, problem, n=1, ks=(1,), max_new_tokens=400, log=lambda m: None)
        scores[name] = result["pass@1"]
        completion = result["problems"][0]["completions"][0]
        assert completion == (problem[0]["canonical_solution"] if name == "right" else "    return not True\n")
    assert scores == {"right": 1.0, "wrong": 0.0}


def test_sample_is_greedy_generate_and_seeded(run_dir):
    model, tokenizer, _ = load_checkpoint(run_dir)
    prompt = "def add(a, b):\n"
    ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(prompt)])
    reference = model.generate(ids, max_new_tokens=12)[0, ids.shape[1]:].tolist()
    if tokenizer.eos_id in reference:
        reference = reference[:reference.index(tokenizer.eos_id)]
    assert sample(model, tokenizer, prompt, max_new_tokens=12) == [tokenizer.decode(reference)]
    draw = [sample(model, tokenizer, prompt, n=3, max_new_tokens=8, temperature=1.0,
                   generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draw[0] == draw[1] and len(draw[0]) == 3 and len(set(draw[0])) > 1


def test_cli_writes_results(run_dir, tmp_path, capsys):
    out = tmp_path / "he.json"
    assert main(["--checkpoint", str(run_dir), "--limit", "2", "--n", "2", "--k", "1,2", "--temperature", "0.8",
                 "--max-new-tokens", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"pass@1", "pass@2", "num_problems", "n", "temperature", "model", "checkpoint", "sandbox",
            "problems"} <= set(result)
    assert result["num_problems"] == 2 and result["model"]["mixer"] == "deltanet"
    assert [p["task_id"] for p in result["problems"]] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(p["completions"]) == len(p["passed"]) == 2 for p in result["problems"])
    assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
    assert main(["--checkpoint", str(run_dir), "--n", "2", "--k", "5", "--out", str(out)]) == 2
    assert "pass@5 needs n >= 5" in capsys.readouterr().err


def test_checkpoint_without_tokenizer_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer/ directory"):
        checkpoint_tokenizer(tmp_path)
