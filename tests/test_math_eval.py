"""Math benchmarks: generated problems are right and distinct, answers are extracted and matched by value, scoring
counts what a model writes, GSM8K files load, and the CLI runs end to end."""
import json
import re

import pytest

import eval.math_eval as math_eval
from eval.math_eval import (arithmetic_problems, evaluate, extract, gsm8k_problems, gsm_problems, is_correct, main,
                            parse_digits, prompt_for)
from eval_helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def test_gsm_problems_are_worked_and_distinct():
    exemplars, problems = gsm_problems(num=40, shots=4, seed=3)
    assert len(exemplars) == 4 and len(problems) == 40
    for p in exemplars + problems:
        assert p.group == "gsm" and re.fullmatch(r"-?\d+", p.answer)
        assert is_correct(extract(p.solution, "strict"), p.answer)  # each worked solution ends in its answer
    assert not {e.question for e in exemplars} & {p.question for p in problems}
    assert gsm_problems(num=5, shots=0, seed=3)[1] == gsm_problems(num=5, shots=0, seed=3)[1]  # deterministic


def test_arithmetic_problems_have_exact_digits_and_answers():
    exemplars, problems = arithmetic_problems([1, 3, 6], num=30, shots=2, seed=1)
    assert sorted(exemplars) == ["1", "3", "6"] and all(len(v) == 2 for v in exemplars.values())
    assert len(problems) == 90
    for p in problems:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", p.question).groups()
        if p.group != "1":
            assert len(a) == len(b) == int(p.group)
        assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert {p.question.split()[3] for p in problems} == {"+", "-", "*"}
    with pytest.raises(ValueError, match="ops="):
        arithmetic_problems([1], 1, 0, ops="/")


def test_digits_parse():
    assert parse_digits("1-6") == [1, 2, 3, 4, 5, 6] and parse_digits("2,4") == [2, 4] and parse_digits("3") == [3]
    for bad in ("0-3", "x", "5-2"):
        with pytest.raises(ValueError, match="--digits"):
            parse_digits(bad)


def test_answers_extracted_and_matched_by_value():
    assert extract("so 3 + 4 = 7\n#### 1,234", "strict") == "1,234"
    assert extract("no marker, 12 then 15.", "strict") is None
    assert extract("no marker, 12 then 15.", "last") == "15" and extract(" 42 apples, 3 left", "first") == "42"
    assert extract("nothing", "last") is None
    assert is_correct("1,234", "1234") and is_correct("15.0", "15") and is_correct("$5", "5")
    assert is_correct("-3", "-3") and not is_correct("-3", "3") and not is_correct(None, "3")
    assert not is_correct("14", "15")


def test_prompt_is_few_shot_gsm8k_format():
    exemplars, problems = arithmetic_problems([2], num=1, shots=2, seed=0)
    prompt = prompt_for(problems[0], exemplars["2"])
    e0, e1 = exemplars["2"]
    assert prompt == (f"Question: {e0.question}\nAnswer: {e0.answer}\n\nQuestion: {e1.question}\nAnswer: "
                      f"{e1.answer}\n\nQuestion: {problems[0].question}\nAnswer:")


def test_evaluate_counts_what_the_model_writes(monkeypatch):
    exemplars, problems = gsm_problems(num=6, shots=1, seed=0)
    answers = {p.question: p.answer for p in problems}
    wrong = set(list(answers)[::3])  # 2 of 6 answered wrongly

    def fake_sample(model, tokenizer, prompt, **kwargs):
        question = prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
        value = int(answers[question]) + (1 if question in wrong else 0)
        # the right number last but a wrong one after ####: strict and flexible must differ for these
        return [f" steps\n#### {value}\nso {answers[question]}" if question in wrong else f" steps\n#### {value}"]

    monkeypatch.setattr(math_eval, "sample", fake_sample)
    result = evaluate(None, None, problems, exemplars, max_new_tokens=8, task="gsm", log=lambda m: None)
    assert result["accuracy"] == pytest.approx(4 / 6) and result["accuracy_flexible"] == 1.0
    assert [r["correct"] for r in result["problems"]] == [q not in wrong for q in answers]

    def arithmetic_sample(model, tokenizer, prompt, **kwargs):
        a, op, b = re.search(r"What is (\d+) (\S) (\d+)\?\nAnswer:$", prompt).groups()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        return [f" {value + (len(a) == 2)} and more"]  # two-digit problems answered one too high

    arith_exemplars, arith = arithmetic_problems([1, 2], num=4, shots=1, seed=0)
    monkeypatch.setattr(math_eval, "sample", arithmetic_sample)
    result = evaluate(None, None, arith, arith_exemplars, max_new_tokens=8, task="arithmetic", log=lambda m: None)
    assert result["by_digits"] == {"1": 1.0, "2": 0.0} and result["accuracy"] == 0.5


def test_gsm8k_file_loads(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "Tom has 3 apples and buys 4. How many?",
                                "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}) + "\n\n")
    (problem,) = gsm8k_problems(path)
    assert problem.answer == "7" and problem.solution.endswith("#### 7")
    path.write_text(json.dumps({"question": "no answer marker", "answer": "7"}) + "\n")
    with pytest.raises(ValueError, match="test.jsonl:1"):
        gsm8k_problems(path)


@pytest.mark.parametrize("task", ["gsm", "arithmetic"])
def test_cli_writes_results(run_dir, tmp_path, task):
    out = tmp_path / f"{task}.json"
    args = ["--checkpoint", str(run_dir), "--task", task, "--num", "2", "--shots", "1", "--max-new-tokens", "8",
            "--out", str(out)] + (["--digits", "1-2"] if task == "arithmetic" else [])
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {"task", "accuracy", "num_problems", "problems", "model", "checkpoint", "source", "shots"} <= set(result)
    assert result["num_problems"] == (4 if task == "arithmetic" else 2)
    assert ("by_digits" in result) == (task == "arithmetic") and ("accuracy_flexible" in result) == (task == "gsm")
    assert all({"question", "answer", "completion", "prediction", "correct"} <= set(p) for p in result["problems"])
