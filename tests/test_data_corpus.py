"""The embedded corpus: deterministic, cached, atomic, made of the sources it claims, and correct math."""
import ast
import json
import math
import operator
import re
import sysconfig
import time
from fractions import Fraction
from pathlib import Path

import pytest
from pydoc_data.topics import topics

from data import DataConfig, build_embedded_corpus
from data import corpus as corpus_mod

SMALL = dict(code_mb=0.1, prose_mb=0.55, math_mb=0.15)  # prose > pydoc topics (0.46 MB): docstrings too


def _records(paths):
    return [json.loads(line) for path in paths for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    paths = build_embedded_corpus(tmp_path_factory.mktemp("c"), **SMALL)
    return paths, _records(paths["train"]), _records(paths["validation"])


def test_deterministic_and_seeded(small, tmp_path):
    paths, _, _ = small
    again = build_embedded_corpus(tmp_path / "a", **SMALL)
    for split in ("train", "validation"):
        assert [Path(p).name for p in again[split]] == [Path(p).name for p in paths[split]]
        assert [Path(p).read_bytes() for p in again[split]] == [Path(p).read_bytes() for p in paths[split]]
    other = build_embedded_corpus(tmp_path / "b", **SMALL, seed=1)
    assert _records(other["train"]) != _records(paths["train"])


def test_sources_are_what_they_claim(small):
    _, train, valid = small
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for split in (train, valid):
        assert {r["source"] for r in split} == {"code", "prose", "math"}
    ids = [r["id"] for r in train + valid]
    assert len(ids) == len(set(ids))
    kinds = {"code": 0, "topic": 0, "docstrings": 0}
    for r in train + valid:
        if r["source"] == "code":
            assert r["text"] == (stdlib / r["id"].removeprefix("code/")).read_text(encoding="utf-8")
            kinds["code"] += 1
        elif r["id"].startswith("prose/topic/"):
            assert r["text"] == topics[r["id"].removeprefix("prose/topic/")]
            kinds["topic"] += 1
        elif r["id"].startswith("prose/docstrings/"):
            module = ast.parse((stdlib / r["id"].removeprefix("prose/docstrings/")).read_text(encoding="utf-8"))
            assert ast.get_docstring(module) is None or ast.get_docstring(module) in r["text"]
            kinds["docstrings"] += 1
    assert min(kinds.values()) > 0, kinds


def test_module_code_and_docstrings_share_a_split(tmp_path):
    # Budgets large enough that docstring modules overlap code modules.
    paths = build_embedded_corpus(tmp_path, code_mb=7.0, prose_mb=2.0, math_mb=0.01)
    split_of = {r["id"]: s for s in ("train", "validation") for r in _records(paths[s])}
    shared = [i for i in split_of if i.startswith("prose/docstrings/")
              and "code/" + i.removeprefix("prose/docstrings/") in split_of]
    assert len(shared) > 10
    for i in shared:
        assert split_of[i] == split_of["code/" + i.removeprefix("prose/docstrings/")], i


def test_default_corpus_size_mix_and_holdout(tmp_path):
    cfg = DataConfig()
    start = time.perf_counter()
    paths = build_embedded_corpus(tmp_path, cfg.corpus_code_mb, cfg.corpus_prose_mb, cfg.corpus_math_mb)
    seconds = time.perf_counter() - start
    manifest = json.loads((Path(paths["train"][0]).parent / "manifest.json").read_text())
    total = sum(Path(p).stat().st_size for p in paths["train"] + paths["validation"])
    print(f"default embedded corpus: {total / 1e6:.2f} MB on disk, built in {seconds:.2f} s; {manifest['bytes']}")
    assert 6e6 <= total <= 10e6
    assert len(paths["train"]) == corpus_mod.TRAIN_SHARDS and len(paths["validation"]) == 1
    for source, mb in (("code", cfg.corpus_code_mb), ("prose", cfg.corpus_prose_mb), ("math", cfg.corpus_math_mb)):
        got = manifest["bytes"]["train"][source] + manifest["bytes"]["validation"][source]
        assert got >= mb * 1e6
        held = manifest["bytes"]["validation"][source] / got
        assert 0.005 < held < 0.05, (source, held)  # ~2% of groups; code files vary in size
    # Every train shard mixes all three sources.
    for path in paths["train"]:
        assert {r["source"] for r in _records([path])} == {"code", "prose", "math"}


def test_cached_build_is_reused(monkeypatch, tmp_path):
    paths = build_embedded_corpus(tmp_path, **SMALL)
    monkeypatch.setattr(corpus_mod, "_write_corpus", lambda *a: pytest.fail("rebuilt a cached corpus"))
    assert build_embedded_corpus(tmp_path, **SMALL) == paths


def test_killed_build_leaves_nothing(tmp_path, monkeypatch):
    def fail_midway(out, split, docs, num_shards):
        (out / f"{split}-00000-of-00001.jsonl").write_text("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod, "_write_shards", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        build_embedded_corpus(tmp_path, **SMALL)
    assert list((tmp_path / "corpus").iterdir()) == []
    monkeypatch.undo()
    paths = build_embedded_corpus(tmp_path, **SMALL)
    assert len(paths["train"]) > 1 and len(paths["validation"]) == 1


def test_too_much_prose_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"data\.corpus_prose_mb=50"):
        build_embedded_corpus(tmp_path, code_mb=0.01, prose_mb=50, math_mb=0.01)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _exact(text: str):
    """Evaluate integer arithmetic exactly (Fractions), or None if `text` is not pure arithmetic."""
    if not re.fullmatch(r"[\d\s+\-*/%()^]+", text) or not re.search(r"\d", text):
        return None

    def ev(node):
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        return _OPS[type(node.op)](ev(node.left), ev(node.right))

    return ev(ast.parse(text.replace("^", "**").strip(), mode="eval").body)


def _substitute(expr: str, **values) -> Fraction:
    for name, value in values.items():
        expr = re.sub(rf"(\d)?{name}", lambda m: f"{m.group(1) or ''} * ({value})" if m.group(1) else f"({value})",
                      expr)
    return _exact(expr)


def test_math_steps_and_answers_are_correct(small):
    _, train, valid = small
    texts = [r["text"] for r in train + valid if r["source"] == "math"]
    checked = 0
    for text in texts:
        for line in text.splitlines():
            for segment in line.split(": ")[-1].split(" and "):
                values = [v for v in (_exact(part) for part in segment.split(" = ")) if v is not None]
                assert len(set(values)) <= 1, line
                checked += len(values) > 1
        for problem in re.findall(r"Problem \d+\. (.*?)\nSolution\.\n.*?\nAnswer: (.*?)\n", text, re.S):
            question, answer = problem
            if m := re.fullmatch(r"Solve for x: (.*) = (.*)\.", question):
                x = int(answer.removeprefix("x = "))
                assert _substitute(m[1], x=x) == _substitute(m[2], x=x), problem
            elif m := re.fullmatch(r"Solve the system: (.*) = (.*) and (.*) = (.*)\.", question):
                x, y = map(int, re.fullmatch(r"x = (-?\d+), y = (-?\d+)", answer).groups())
                assert _substitute(m[1], x=x, y=y) == int(m[2]) and _substitute(m[3], x=x, y=y) == int(m[4])
            elif m := re.fullmatch(r"Compute (.*)\.", question):
                assert _exact(m[1]) == _exact(answer), problem
            elif m := re.fullmatch(r"Find the greatest common divisor of (\d+) and (\d+)\.", question):
                assert math.gcd(int(m[1]), int(m[2])) == int(answer)
            elif m := re.fullmatch(r"Write (\d+) as a product of primes\.", question):
                assert _exact(answer.split(" = ")[1]) == int(m[1])
                bases = [int(factor.split("^")[0]) for factor in answer.split(" = ")[1].split(" * ")]
                assert all(b > 1 and all(b % k for k in range(2, b)) for b in bases), problem
            checked += 1
    assert checked > 1000, checked  # the check really ran over the corpus
