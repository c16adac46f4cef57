"""lm-eval on our models: the registered "lrnn" model against direct forward passes, the local tasks end to end
(CLI from another working directory, lm-eval's own API by model name) and the in-training callback."""
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from data.tokenizer import SentencePieceTokenizer
from eval.harness import build_task_manager, run_harness
from eval.lm_eval_model import LRNNEvalModel, load_checkpoint
from eval.tasks import make_data
from model.config import ModelConfig
from model.lm import LanguageModel
from trainer.config import ConfigError, load_config
from trainer.metrics import read_metrics
from trainer.run import train

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "eval" / "tasks"


def tiny(tmp, out_dir, *overrides):
    """tests/test_train_e2e.py's few-second recipe."""
    return load_config(ROOT / "configs/default.yaml", [
        f"out_dir={out_dir}", f"data.cache_dir={tmp / 'cache'}", "data.corpus_code_mb=0.3",
        "data.corpus_prose_mb=0.2", "data.corpus_math_mb=0.1", "data.tokenizer_vocab_size=512",
        "model.vocab_size=512", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "train.seq_len=32", "train.micro_batch_size=2", "train.max_steps=12", "train.warmup_steps=2",
        "train.log_every=4", "train.save_every=12", "train.eval_every=0", "log.progress_bar=false",
        "log.tensorboard=false", "log.plot=false", "log.sample_tokens=0", "log.unigram_baseline=false", *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny DeltaNet trained for 12 steps: (run dir, model, tokenizer)."""
    tmp = tmp_path_factory.mktemp("harness")
    train(tiny(tmp, tmp / "run"), log=lambda m: None)
    model, tokenizer, _ = load_checkpoint(tmp / "run")
    return tmp / "run", model, tokenizer


def reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log P(continuation | context) from one unpadded forward: the continuation's tokens are those of the whole
    text after as many tokens as the context has (EOS stands in for an empty context)."""
    if context:  # lm-eval's TemplateLM: the context's own tokens, then the whole text's tokens after as many
        start = len(tokenizer.encode(context))
        ids = tokenizer.encode(context) + tokenizer.encode(context + continuation)[start:]
    else:
        ids, start = [tokenizer.eos_id] + tokenizer.encode(continuation), 1
    with torch.no_grad():
        logprobs = model(torch.tensor([ids]))[0].log_softmax(-1)  # [T, V]
    targets = torch.tensor(ids[start:])
    picked = logprobs[start - 1:-1]  # position t predicts token t + 1
    return float(picked.gather(-1, targets[:, None]).sum()), bool((picked.argmax(-1) == targets).all())


class Request:
    """What lm-eval hands a model: an object with `.args`."""

    def __init__(self, *args):
        self.args = args


def rms_rel(a, b) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


# Batched rows are right-padded, so each row's logits come from the same causal computation as alone: measured
# identical on CPU; 1e-5 leaves room for fp32 reduction order in batched kernels elsewhere (and in the HF export's
# code path), far below the score differences between choices (~1e-2 relative).
BATCH_TOL = 1e-5


def test_loglikelihood_equals_direct_forward(run):
    _, model, tokenizer = run
    pairs = [("Compute 12 + 30.\nAnswer:", " 42"), ("def add(a, b):\n    return a", " + b"),
             ("", "Hello world"), ("x", " = [1, 2, 3]\nprint(len(x))\n"), ("Problem 1. Compute 7 * 8.", "\nSolution.")]
    pairs.append(("Compute 9 + 9.", greedy_text(model, tokenizer, "Compute 9 + 9.", 3)))  # greedy by construction
    lm = LRNNEvalModel(model=model, tokenizer=tokenizer, batch_size=3)
    got = lm.loglikelihood([Request(*pair) for pair in pairs], disable_tqdm=True)
    want = [reference_loglikelihood(model, tokenizer, *pair) for pair in pairs]
    assert rms_rel([g for g, _ in got], [w for w, _ in want]) < BATCH_TOL
    assert [g for _, g in got] == [w for _, w in want] == [False] * 5 + [True]


def test_loglikelihood_with_a_dummy_prefix_tokenizer():
    """With a dummy prefix and spaces kept (Llama's settings) " sat" alone encodes as "▁▁sat"-like pieces but as
    "▁sat" after "The cat": the continuation must be the whole text's tokens after the context's."""
    text = "\n".join(f"The cat sat on mat {i} and the dog sat on log {i * 7 % 13}." for i in range(300))
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.split("\n")), model_writer=proto, vocab_size=120,
                                   model_type="bpe", add_dummy_prefix=True, remove_extra_whitespaces=False,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    tokenizer = SentencePieceTokenizer(proto.getvalue(), "dummy-prefix")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=2)
    model = LanguageModel(cfg).eval()
    context, continuation = "The cat", " sat on the mat"
    whole = tokenizer.encode(context + continuation)
    split = whole[len(tokenizer.encode(context)):]
    assert whole[:-len(split)] == tokenizer.encode(context) and tokenizer.encode(continuation) != split
    lm = LRNNEvalModel(model=model, tokenizer=tokenizer)
    (score, _), = lm.loglikelihood([Request(context, continuation)], disable_tqdm=True)
    want, _ = reference_loglikelihood(model, tokenizer, context, continuation)
    naive = LRNNEvalModel(model=model, tokenizer=tokenizer)._loglikelihood_tokens(
        [(None, tokenizer.encode(context), tokenizer.encode(continuation))])[0][0]
    assert abs(score - want) <= 1e-6 * abs(want) and abs(naive - want) > 1e-3 * abs(want)
    # generated text keeps its leading space, which decoding the new tokens alone would drop
    text, = lm.generate_until([Request(context, {"until": [], "max_gen_toks": 6})])
    ids = torch.tensor([tokenizer.encode(context)])
    greedy = model.generate(ids, max_new_tokens=6)[0].tolist()
    assert context + text == tokenizer.decode(greedy)


def test_loglikelihood_rolling_equals_direct_forward(run):
    """Windows of max_length tokens, each token predicted once, with the longest context its window allows
    (lm-eval's documented semantics); one window when max_length covers the text."""
    _, model, tokenizer = run
    text = "def total(values):\n    result = 0\n    for v in values:\n        result += v\n    return result\n"
    seq = [tokenizer.eos_id] + tokenizer.encode(text)
    n, window = len(seq) - 1, 8
    assert n > 3 * window
    with torch.no_grad():
        whole = model(torch.tensor([seq]))[0].log_softmax(-1)  # [n + 1, V]
        one_window = float(whole[:-1].gather(-1, torch.tensor(seq[1:])[:, None]).sum())
        windowed = 0.0
        for first in range(0, n, window):  # predict seq[first + 1 .. last] from at most `window` inputs
            last = min(first + window, n)
            start = max(0, last - window)
            logprobs = model(torch.tensor([seq[start:last]]))[0].log_softmax(-1)
            targets = torch.tensor(seq[first + 1:last + 1])
            windowed += float(logprobs[first - start:].gather(-1, targets[:, None]).sum())
    got = LRNNEvalModel(model=model, tokenizer=tokenizer, max_length=window, batch_size=2).loglikelihood_rolling(
        [Request(text)])
    assert rms_rel(got, [windowed]) < BATCH_TOL
    got = LRNNEvalModel(model=model, tokenizer=tokenizer, max_length=4 * n).loglikelihood_rolling([Request(text)])
    assert rms_rel(got, [one_window]) < BATCH_TOL and abs(one_window - windowed) > 1e-3 * abs(one_window)


def greedy_texts(model, tokenizer, context: str, tokens: int) -> list[str]:
    """The greedy continuation's text (up to EOS) as it reads after the context, after 1, 2, ... tokens."""
    ids = tokenizer.encode(context)
    out = model.generate(torch.tensor([ids]), max_new_tokens=tokens)[0, len(ids):].tolist()
    if tokenizer.eos_id in out:
        out = out[:out.index(tokenizer.eos_id)]
    texts = [tokenizer.decode(ids + out[:n]) for n in range(1, len(out) + 1)]
    assert all(text.startswith(context) for text in texts)
    return [text[len(context):] for text in texts]


def greedy_text(model, tokenizer, context: str, tokens: int) -> str:
    return greedy_texts(model, tokenizer, context, tokens)[-1]


def test_generate_until_stops_at_until_strings(run):
    _, model, tokenizer = run
    contexts = ["Compute 21 + 20.\nAnswer:", "Compute 31 - 95.\nAnswer:", "def add(a, b):\n    return",
                "Problem 3. Solve for x: 2x = 8."]
    lengths = [len(tokenizer.encode(c)) for c in contexts]
    assert lengths[0] == lengths[1] and len(set(lengths)) > 1  # one shared batch, and separate ones
    requests, expected, forwards = [], [], []
    for context in contexts:
        texts = greedy_texts(model, tokenizer, context, 24)
        text = texts[-1]
        # an until string whose first occurrence lies inside the text, so generation must stop early
        cut = next(k for k in range(2, len(text) - 2) if text.find(text[k:k + 2]) == k)
        until = text[cut:cut + 2]
        requests.append(Request(context, {"until": [until, "@@never@@"], "max_gen_toks": 24}))
        expected.append(text[:cut])
        # one forward for the context, then one per token until the one that completes the until string
        forwards.append(next(n for n, t in enumerate(texts, 1) if until in t))
    requests.append(Request(contexts[3], {"until": ["@@never@@"], "max_gen_toks": 5}))
    expected.append(greedy_text(model, tokenizer, contexts[3], 5))  # the token budget ends it
    forwards.append(5)
    assert max(forwards[:4]) < 24
    lm = LRNNEvalModel(model=model, tokenizer=tokenizer, batch_size=1)
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        for request, text, count in zip(requests, expected, forwards):
            calls.clear()
            assert lm.generate_until([request]) == [text]
            assert len(calls) == count
    finally:
        hook.remove()
    assert LRNNEvalModel(model=model, tokenizer=tokenizer, batch_size=4).generate_until(requests) == expected


def hand_accuracy(model, tokenizer, docs, context_of):
    """acc and acc_norm (log-likelihood per character of the choice, as lm-eval divides) computed directly."""
    acc = acc_norm = 0
    for doc in docs:
        scores = [reference_loglikelihood(model, tokenizer, context_of(doc), " " + c)[0] for c in doc["choices"]]
        acc += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
        normed = [s / len(c) for s, c in zip(scores, doc["choices"])]
        acc_norm += max(range(len(normed)), key=normed.__getitem__) == doc["label"]
    return acc / len(docs), acc_norm / len(docs)


def read_docs(name: str, limit: int) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines()[:limit]]


def test_cli_runs_local_tasks_from_another_directory(run, tmp_path):
    run_dir, model, tokenizer = run
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "eval.harness", "--checkpoint", str(run_dir), "--tasks",
                           "lrnn_arith_mc,lrnn_arith_gen", "--limit", "6", "--batch-size", "4", "--log-samples",
                           "--output", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "lrnn_arith_mc" in out.with_suffix(".md").read_text() and "lrnn_arith_gen" in proc.stdout
    mc = results["results"]["lrnn_arith_mc"]
    docs = read_docs("arith_mc.jsonl", 6)
    assert (mc["acc,none"], mc["acc_norm,none"]) == hand_accuracy(
        model, tokenizer, docs, lambda d: d["question"] + "\nAnswer:")
    gen_docs = read_docs("arith_gen.jsonl", 6)
    outputs = [greedy_text(model, tokenizer, d["question"] + "\nAnswer:", 8).split("\n")[0] for d in gen_docs]
    samples = sorted(results["samples"]["lrnn_arith_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == outputs
    firsts = [(re.findall(r"-?\d+", o) or ["[invalid]"])[0] for o in outputs]
    hand = sum(f == d["answer"] for f, d in zip(firsts, gen_docs)) / len(gen_docs)
    assert results["results"]["lrnn_arith_gen"]["exact_match,first_integer"] == hand


def test_registered_model_by_name_on_a_checkpoint(run):
    from lm_eval import simple_evaluate

    run_dir, model, tokenizer = run
    results = simple_evaluate(model="lrnn", model_args=f"checkpoint={run_dir},batch_size=4", tasks=["lrnn_code_mc"],
                              limit=8, bootstrap_iters=0, task_manager=build_task_manager(["lrnn_code_mc"]))
    acc = results["results"]["lrnn_code_mc"]["acc,none"]
    assert 0 <= acc <= 1
    assert acc == hand_accuracy(model, tokenizer, read_docs("code_mc.jsonl", 8), lambda d: d["prompt"])[0]


def test_hf_export_through_lm_eval_matches_our_model(run, tmp_path):
    """`--model hf` on `python -m model.export`'s folder scores and generates as the registered model does."""
    from lm_eval import simple_evaluate

    from model.export import export

    run_dir, _, _ = run
    export(run_dir, tmp_path / "hf")
    tasks = ["lrnn_code_mc", "lrnn_arith_gen"]
    manager = build_task_manager(tasks)
    common = dict(tasks=tasks, limit=6, batch_size=2, bootstrap_iters=0, log_samples=True, task_manager=manager)
    hf = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},trust_remote_code=True,dtype=float32",
                         device="cpu", **common)
    ours = simple_evaluate(model="lrnn", model_args=f"checkpoint={run_dir}", **common)

    def responses(results, task):
        return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]

    scores = [[r[0][0] for r in doc] for doc in responses(hf, "lrnn_code_mc")]
    want = [[r[0][0] for r in doc] for doc in responses(ours, "lrnn_code_mc")]
    assert rms_rel(scores, want) < BATCH_TOL
    assert hf["results"]["lrnn_code_mc"]["acc,none"] == ours["results"]["lrnn_code_mc"]["acc,none"]
    # Invalid UTF-8 byte runs decode differently (SentencePiece keeps the valid bytes, tokenizers' byte fallback
    # writes U+FFFD for each), so texts are compared where neither has a replacement character.
    texts = [(a[0][0], b[0][0]) for a, b in zip(responses(hf, "lrnn_arith_gen"), responses(ours, "lrnn_arith_gen"))
             if "\ufffd" not in a[0][0] + b[0][0]]
    assert len(texts) >= 2 and all(a == b for a, b in texts)


def test_callback_logs_tasks_and_leaves_training_unchanged(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = run
    cfg = tiny(run_dir.parent, tmp_path / "run", "harness.tasks=[lrnn_arith_mc]", "harness.every=6",
               "harness.limit=4", "log.tensorboard=true")
    train(cfg, log=lambda m: None)
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    plain = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records if r["step"] % 4 == 0] == [(r["step"], r["loss"]) for r in plain]
    harness = {r["step"]: r["harness.lrnn_arith_mc.acc"] for r in records if "harness.lrnn_arith_mc.acc" in r}
    assert sorted(harness) == [6, 12] and all(v in (0, 0.25, 0.5, 0.75, 1) for v in harness.values())
    model, tokenizer, _ = load_checkpoint(tmp_path / "run")
    final = run_harness(model, tokenizer, ["lrnn_arith_mc"], limit=4)["results"]["lrnn_arith_mc"]["acc,none"]
    assert harness[12] == final
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("harness/lrnn_arith_mc/acc")] == [6, 12]


def test_run_harness_leaves_global_random_streams_alone(run):
    """lm-eval seeds Python's, NumPy's and torch's generators; the trainer's streams must go on as if it had not."""
    import random

    import numpy as np

    _, model, tokenizer = run

    def draws(evaluate: bool):
        random.seed(5), np.random.seed(5), torch.manual_seed(5)
        if evaluate:
            run_harness(model, tokenizer, ["lrnn_code_mc"], limit=2)
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    assert draws(True) == draws(False)


def test_harness_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="harness.every"):
        load_config(None, ["harness.every=-1"])
    with pytest.raises(ConfigError, match="harness.tasks"):
        load_config(None, ["harness.tasks=[]"])
    with pytest.raises(ValueError, match="lrnn_arith_mc"):
        build_task_manager(["lrnn_arith_mcq"])


def test_shipped_task_data_is_what_make_data_writes():
    for name, make in make_data.DATASETS.items():
        assert (TASKS / name).read_text() == make_data.render(make()), name
    assert sum(p.stat().st_size for p in TASKS.glob("*.jsonl")) < 200_000
