"""Pre-tokenized shards: the tool writes exactly the tokenizer's ids (uint16 and uint32), training reads them
back as the same stream, and every broken directory or mismatched tokenizer is a clear DataError."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from data_helpers import BYTES, ByteTokenizer, flatten, make_docs, take, write_docs

from data import DataConfig, PackedBatches, eval_batches, unigram_loss
from data.errors import DataError
from data.memmap import INDEX_FILE
from data.pretokenize import main, pretokenize

ROOT = Path(__file__).resolve().parent.parent


class WideTokenizer(ByteTokenizer):
    """Byte ids moved above 65535, so shards need uint32."""

    name, vocab_size, eos_id = "wide", 70_000, 69_999

    def encode(self, text):
        return [b + 69_000 for b in text.encode()]


class ReversedBytes(ByteTokenizer):
    """Same vocabulary size and EOS as the byte tokenizer, different ids for the same text."""

    name = "reversed"

    def encode(self, text):
        return [255 - b for b in text.encode()]


def _stream(tok, docs):
    return [t for d in docs if d for t in tok.encode(d) + [tok.eos_id]]


def _split(tokens, eos):
    """The EOS-terminated documents of a token list, as tuples of ids."""
    ends = [i for i, t in enumerate(tokens) if t == eos]
    return [tuple(tokens[a + 1:b]) for a, b in zip([-1] + ends, ends)]


def _read_shards(root, index):
    """Every document's ids, read from the files directly (not through the reader under test)."""
    docs = []
    for shard in index["shards"]:
        tokens = np.fromfile(root / shard["tokens"], dtype=index["dtype"])
        offsets = np.fromfile(root / shard["offsets"], dtype=np.uint64)
        assert offsets[0] == 0 and offsets[-1] == len(tokens) == shard["num_tokens"]
        docs += [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    return docs


@pytest.fixture
def docs(tmp_path):
    docs = make_docs(40, seed=3) + ["", "x" * 300]  # an empty document (dropped) and one longer than a shard
    write_docs(tmp_path / "a.jsonl", "jsonl", docs[:25])
    write_docs(tmp_path / "b.jsonl", "jsonl", docs[25:])
    return docs


@pytest.mark.parametrize("tok, dtype", [(BYTES, "uint16"), (WideTokenizer(), "uint32")])
def test_round_trip_exact_ids(tmp_path, docs, tok, dtype):
    out = tmp_path / "pt"
    index = pretokenize(str(tmp_path / "*.jsonl"), tok, out, shard_tokens=200, progress=False)
    assert index == json.loads((out / INDEX_FILE).read_text())
    assert index["dtype"] == dtype and index["vocab_size"] == tok.vocab_size and index["eos_id"] == tok.eos_id
    assert _read_shards(out, index) == [tok.encode(d) for d in docs if d]  # file order, none split or lost
    assert index["num_documents"] == 41 and index["num_tokens"] == sum(len(d.encode()) for d in docs)
    shards = index["shards"]
    assert len(shards) > 3 and all(s["num_tokens"] >= 200 for s in shards[:-1])  # a shard closes at >= 200
    # Training reads the same stream, EOS appended, in file order for validation.
    cfg = DataConfig(dataset=str(out), eval_dataset=str(out))
    expected = _stream(tok, docs)
    n = len(expected) // 20
    assert flatten(take(PackedBatches(cfg, tok, 9, 2, split="validation"), n)) == expected[:n * 20]
    assert flatten(eval_batches(cfg, tok, 9, 2, max_batches=1000)) == expected[:n * 20]
    # Training order: shards reordered per epoch, every document once per epoch.
    tokens = flatten(take(PackedBatches(cfg, tok, 1, 1, seed=4), (len(expected) + 1) // 2))[:len(expected)]
    assert Counter(_split(tokens, tok.eos_id)) == Counter(tuple(tok.encode(d)) for d in docs if d)
    assert tokens != expected


def test_unigram_baseline_same_as_from_text(tmp_path, docs):
    pretokenize(str(tmp_path / "a.jsonl"), BYTES, tmp_path / "pt", progress=False)
    text = DataConfig(dataset=str(tmp_path / "a.jsonl"), eval_dataset=str(tmp_path / "b.jsonl"))
    pre = DataConfig(dataset=str(tmp_path / "pt"), eval_dataset=str(tmp_path / "b.jsonl"))
    assert unigram_loss(pre, BYTES) == pytest.approx(unigram_loss(text, BYTES), rel=1e-12)  # same counts


def test_parallel_build_writes_every_document_once(tmp_path, docs):
    index = pretokenize(str(tmp_path / "*.jsonl"), BYTES, tmp_path / "pt", shard_tokens=300, num_proc=2,
                        progress=False)
    parts = {s["tokens"].split("-")[0] for s in index["shards"]}
    assert parts == {"part000", "part001"}
    got = Counter(tuple(d) for d in _read_shards(tmp_path / "pt", index))
    assert got == Counter(tuple(BYTES.encode(d)) for d in docs if d)


def test_command_line_with_a_sentencepiece_model(tmp_path, docs):
    model = tmp_path / "char.model"
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(docs[:40]), model_writer=f, model_type="char",
                                       vocab_size=40, hard_vocab_limit=False, minloglevel=2)
    out = tmp_path / "pt"
    run = subprocess.run([sys.executable, "-m", "data.pretokenize", "--dataset", str(tmp_path / "a.jsonl"),
                          "--tokenizer", str(model), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "pretokenize: 25 docs" in run.stderr  # the tqdm bar
    index = json.loads((out / INDEX_FILE).read_text())
    assert f"{out}: 25 documents" in run.stdout and index["tokenizer"] == str(model)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert _read_shards(out, index) == [sp.encode(d) for d in docs[:25] if d]
    with pytest.raises(SystemExit, match="error: --out .* already exists"):
        main(["--dataset", str(tmp_path / "a.jsonl"), "--tokenizer", str(model), "--out", str(out)])


def test_bad_inputs_are_clear(tmp_path, docs):
    out = tmp_path / "pt"
    pretokenize(str(tmp_path / "a.jsonl"), BYTES, out, shard_tokens=100, progress=False)
    cfg = DataConfig(dataset=str(out), eval_dataset=None)
    with pytest.raises(DataError, match=r"tokenized with 'bytes' but data.tokenizer is 'wide' \(vocab_size 257 vs"):
        PackedBatches(cfg, WideTokenizer(), 8, 2)
    with pytest.raises(DataError, match="different ids for the same text"):
        PackedBatches(cfg, ReversedBytes(), 8, 2)
    write_docs(tmp_path / "one.jsonl", "jsonl", ["only"])
    pretokenize(str(tmp_path / "one.jsonl"), BYTES, tmp_path / "one", progress=False)
    with pytest.raises(DataError, match=r"reader 1 of 2 \(ranks x workers\) got no documents"):
        PackedBatches(DataConfig(dataset=str(tmp_path / "one"), eval_dataset=None), BYTES, 8, 2, rank=1,
                      world_size=2)

    with pytest.raises(DataError, match="already exists"):
        pretokenize(str(tmp_path / "a.jsonl"), BYTES, out, progress=False)
    with pytest.raises(DataError, match="already pre-tokenized"):
        pretokenize(str(out), BYTES, tmp_path / "again", progress=False)
    with pytest.raises(DataError, match="--shard-tokens=0 must be a positive integer"):
        pretokenize(str(tmp_path / "a.jsonl"), BYTES, tmp_path / "x", shard_tokens=0, progress=False)
    small = ByteTokenizer()
    small.vocab_size = 100
    with pytest.raises(DataError, match=r"emitted id \d+ outside \[0, vocab_size=100\)"):
        pretokenize(str(tmp_path / "a.jsonl"), small, tmp_path / "y", progress=False)
    assert not (tmp_path / "y").exists()  # a failed build leaves nothing behind

    index = json.loads((out / INDEX_FILE).read_text())
    shard = out / index["shards"][1]["tokens"]
    shard.write_bytes(shard.read_bytes()[:-2])  # one uint16 token short
    with pytest.raises(DataError, match=r"has \d+ bytes but the index says \d+; it is truncated or corrupt"):
        PackedBatches(cfg, BYTES, 8, 2)
    shard.unlink()
    with pytest.raises(DataError, match="is missing; the directory is incomplete"):
        PackedBatches(cfg, BYTES, 8, 2)
    (out / INDEX_FILE).write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(DataError, match="is not a version-1 lrnn-pretokenized index"):
        PackedBatches(cfg, BYTES, 8, 2)
    (out / INDEX_FILE).write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        PackedBatches(cfg, BYTES, 8, 2)
    (out / INDEX_FILE).unlink()
    with pytest.raises(DataError, match="holds pre-tokenized shards but no pretokenized.json"):
        PackedBatches(cfg, BYTES, 8, 2)
