"""Perplexity against context length: windows and position buckets against a model with a known loss per position,
the real model against a token-by-token log-softmax reference, data reading, and the CLI with a plot."""
import json
import math

import pytest
import torch
from torch import nn

from eval.generation import load_checkpoint
from eval.perplexity import main, parse_data, perplexity_by_length, read_token_stream
from eval_helpers import tiny_checkpoint
from trainer.config import load_config


class PositionModel(nn.Module):
    """Logit 0.5 * t for token 0 at window position t, 0 for the other V - 1 tokens: on a stream of zeros the loss
    at position t is log(exp(0.5 t) + V - 1) - 0.5 t, falling with context as a good LM's does."""

    def __init__(self, vocab_size: int = 5):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.vocab_size = vocab_size

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., 0] = 0.5 * torch.arange(input_ids.shape[1], dtype=torch.float32)
        return logits


def expected_loss(t: int, vocab_size: int = 5) -> float:
    return math.log(math.exp(0.5 * t) + vocab_size - 1) - 0.5 * t


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return [tiny_checkpoint(tmp_path_factory),
            tiny_checkpoint(tmp_path_factory, "mamba-01", "model.mixer=mamba", "model.allow_neg_eigval=false")]


def test_windows_and_buckets_match_the_analytic_loss():
    result = perplexity_by_length(PositionModel(), torch.zeros(100, dtype=torch.long), [4, 16, 8], batch_size=3)
    # 99 targets -> 96 usable (whole windows of 16): 24 windows of 4, 12 of 8, 6 of 16
    for length, windows in ((4, 24), (8, 12), (16, 6)):
        entry = result["by_length"][length]
        loss = sum(expected_loss(t) for t in range(length)) / length
        assert entry["windows"] == windows and entry["tokens"] == 96
        assert entry["loss"] == pytest.approx(loss, rel=1e-6) and entry["perplexity"] == pytest.approx(
            math.exp(loss), rel=1e-6)
    assert result["by_position"]["edges"] == [0, 4, 8, 16]
    buckets = [(0, 4), (4, 8), (8, 16)]
    assert result["by_position"]["loss"] == pytest.approx(
        [sum(expected_loss(t) for t in range(a, b)) / (b - a) for a, b in buckets], rel=1e-6)
    with pytest.raises(ValueError, match="too few for one window of 16"):
        perplexity_by_length(PositionModel(), torch.zeros(16, dtype=torch.long), [16])


def test_real_model_against_a_token_by_token_reference(runs):
    model, tokenizer, checkpoint = load_checkpoint(runs[0])
    ids = read_token_stream("embedded:code", tokenizer, load_config(checkpoint / "config.yaml").data, 200)
    result = perplexity_by_length(model, ids, [16, 48], batch_size=2)
    ids = torch.tensor(ids)
    for length in (16, 48):
        losses = []
        for start in range(0, 192 - length + 1, length):  # 199 targets -> 192 usable: whole windows of 48
            window = ids[start:start + length + 1]
            logp = torch.log_softmax(model(window[None, :-1])[0].double(), dim=-1)  # [L, V]
            losses += [-logp[t, window[t + 1]].item() for t in range(length)]
        reference = sum(losses) / len(losses)
        assert abs(result["by_length"][length]["loss"] - reference) / reference < 1e-5  # fp32 vs fp64 softmax


def test_plain_text_files_are_one_document_each(runs, tmp_path):
    _, tokenizer, checkpoint = load_checkpoint(runs[0])
    (tmp_path / "a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "b.py").write_text("x = [i * i for i in range(9)]\n")
    (tmp_path / ".hidden.py").write_text("secret = 1\n")
    data_cfg = load_config(checkpoint / "config.yaml").data
    ids = read_token_stream(str(tmp_path), tokenizer, data_cfg, max_tokens=10_000)
    eos = tokenizer.eos_id
    assert ids == tokenizer.encode("def f():\n    return 1\n") + [eos] + tokenizer.encode(
        "x = [i * i for i in range(9)]\n") + [eos]
    assert len(read_token_stream(str(tmp_path / "*.py"), tokenizer, data_cfg, max_tokens=5)) == 6
    (tmp_path / "docs.jsonl").write_text(json.dumps({"body": "hello world"}) + "\n")
    assert read_token_stream(str(tmp_path / "docs.jsonl"), tokenizer, data_cfg, 100, text_field="body") == \
        tokenizer.encode("hello world") + [eos]


def test_data_names():
    assert parse_data(["code=embedded:code", "notes.txt", "src/a=b.py"]) == {
        "code": "embedded:code", "notes.txt": "notes.txt", "src/a=b.py": "src/a=b.py"}
    with pytest.raises(ValueError, match="twice"):
        parse_data(["x=a.txt", "x=b.txt"])


def test_cli_compares_checkpoints_on_one_plot(runs, tmp_path, capsys):
    out, png = tmp_path / "ppl.json", tmp_path / "ppl.png"
    assert main(["--checkpoint", *map(str, runs), "--data", "code=embedded:code", "math=embedded:math",
                 "--lengths", "16,32", "--max-tokens", "128", "--batch-size", "2", "--out", str(out),
                 "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["lengths"] == [16, 32]
    assert [r["label"] for r in result["results"]] == ["deltanet [-1, 1]", "mamba [0, 1]"]
    for run in result["results"]:
        assert set(run["data"]) == {"code", "math"}
        for scores in run["data"].values():
            assert set(scores["by_length"]) == {"16", "32"} and scores["by_length"]["16"]["tokens"] == 128
            assert all(1.0 < v["perplexity"] < 2 * 512 for v in scores["by_length"].values())  # vocab 512
    assert png.stat().st_size > 10_000
    assert "deltanet [-1, 1]" in capsys.readouterr().out
    assert main(["--checkpoint", str(runs[0]), "--data", str(tmp_path / "missing*.jsonl"), "--lengths", "8"]) == 2
