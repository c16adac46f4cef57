"""Weighted mixtures: weights are shares of tokens, sampling is fixed by the seed, tokens per source are
counted exactly, parts of the embedded corpus are what they claim, and bad mixtures are named clearly."""
import json
import random
from collections import Counter

import pytest
import torch
import yaml
from data_helpers import BYTES, EOS, complete_docs, data_cfg, flatten, take, token_stream, write_docs

from data import DataConfig, MixtureSource, PackedBatches, build_embedded_corpus, read_tokens
from data.errors import DataError
from trainer.config import ConfigError, load_config


@pytest.fixture(scope="module")
def short_long(tmp_path_factory):
    """Two sources whose documents differ in length threefold: 'short' (~21 bytes), 'long' (~66 bytes)."""
    root = tmp_path_factory.mktemp("mix")
    rng = random.Random(0)
    write_docs(root / "short.jsonl", "jsonl", [f"s-{i}:" + "x" * rng.randint(5, 25) for i in range(300)])
    write_docs(root / "long.jsonl", "jsonl", [f"l-{i}:" + "y" * rng.randint(40, 80) for i in range(300)])
    return root


def _cfg(root, short_weight, **kw):
    return DataConfig(mixture=[MixtureSource("short", str(root / "short.jsonl"), short_weight),
                               MixtureSource("long", str(root / "long.jsonl"), 1.0)], eval_dataset=None, **kw)


def _tokens_by_prefix(tokens):
    """Tokens of each source counted off the stream itself: a document's source is its first byte."""
    counts, owner = Counter(), None
    for t in tokens:
        if owner is None:
            owner = chr(t)
        counts[owner] += 1
        if t == EOS:
            owner = None
    return counts


@pytest.mark.parametrize("short_weight", [1.0, 3.0])
def test_weights_are_token_shares(short_long, short_weight):
    # ~2800 documents; the short source's token share has a standard deviation of ~0.013 over seeds, so
    # 0.05 is ~4 sigma. Weights read as document shares would give 0.24 (weight 1) or 0.49 (weight 3).
    it = PackedBatches(_cfg(short_long, short_weight), BYTES, seq_len=255, batch_size=4, seed=0)
    tokens = flatten(take(it, 120))
    counts = it.tokens_per_source()
    assert counts == {"short": _tokens_by_prefix(tokens)["s"], "long": _tokens_by_prefix(tokens)["l"]}
    assert sum(counts.values()) == len(tokens) == 120 * 4 * 256
    assert counts["short"] / len(tokens) == pytest.approx(short_weight / (short_weight + 1), abs=0.05)


def test_sampling_is_fixed_by_the_seed(short_long):
    runs = [take(PackedBatches(_cfg(short_long, 1.0), BYTES, 31, 2, seed=s), 40) for s in (5, 5, 6)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    # Every document of a source appears in its file order (sources interleave; neither is reordered).
    docs = [d.decode() for d in complete_docs(flatten(runs[0]))]
    for prefix in ("s-", "l-"):
        mine = [int(d.split(":")[0][2:]) for d in docs if d.startswith(prefix)]
        assert mine == list(range(len(mine))) and len(mine) > 10


def test_single_dataset_counts_under_one_name(tmp_path):
    write_docs(tmp_path / "d.jsonl", "jsonl", ["hello", "world!"])
    it = PackedBatches(data_cfg(tmp_path / "d.jsonl"), BYTES, 7, 3)
    take(it, 5)
    assert it.tokens_per_source() == {"dataset": 5 * 3 * 8}


def test_one_pass_reads_every_document_of_every_source_once(short_long):
    """The unigram baseline's single pass over a mixture: each source until it runs out, nothing twice."""
    tokens = read_tokens(_cfg(short_long, 2.0), BYTES, "train", max_tokens=10**9)
    expected = [json.loads(line)["text"] for name in ("short", "long")
                for line in open(short_long / f"{name}.jsonl", encoding="utf-8")]
    assert Counter(complete_docs(tokens.tolist())) == Counter(d.encode() for d in expected)
    assert len(tokens) == len(token_stream(expected))


def test_embedded_parts_hold_only_their_source(tmp_path):
    sizes = dict(corpus_code_mb=0.05, corpus_prose_mb=0.05, corpus_math_mb=0.05)
    files = build_embedded_corpus(tmp_path, 0.05, 0.05, 0.05)
    records = [json.loads(line) for path in files["validation"] for line in open(path, encoding="utf-8")]
    for part in ("code", "prose", "math"):
        cfg = DataConfig(cache_dir=str(tmp_path), eval_dataset=f"embedded:{part}", **sizes)
        want = [r["text"] for r in records if r["source"] == part]
        assert want and read_tokens(cfg, BYTES, "validation", 10**9).tolist() == token_stream(want)
    mixture = [MixtureSource(p, f"embedded:{p}") for p in ("code", "math")]
    it = PackedBatches(DataConfig(cache_dir=str(tmp_path), mixture=mixture, **sizes), BYTES, 63, 2)
    take(it, 20)
    assert set(it.tokens_per_source()) == {"code", "math"} and all(it.tokens_per_source().values())
    with pytest.raises(DataError, match="unknown part of the embedded corpus; choose one of embedded:code"):
        PackedBatches(DataConfig(cache_dir=str(tmp_path), dataset="embedded:poetry", **sizes), BYTES, 8, 2)


def test_mixture_from_yaml(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"data": {"shuffle_buffer": 16, "mixture": [
        {"name": "code", "dataset": "embedded:code", "weight": 2},
        {"name": "web", "dataset": "data/web/*.parquet", "weight": 0.5, "text_field": "content"}]}}))
    cfg = load_config(path)
    assert cfg.data.mixture == [MixtureSource("code", "embedded:code", 2.0),
                                MixtureSource("web", "data/web/*.parquet", 0.5, text_field="content")]
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].name='code' is used twice"):
        load_config(path, ["data.mixture=[{name: code, dataset: a}, {name: code, dataset: b}]"])


@pytest.mark.parametrize("change, message", [
    (dict(mixture=[]), r"data.mixture=\[\] must be a non-empty list"),
    (dict(mixture=[MixtureSource("a", "x", -1.0)]), r"data.mixture\[0\].weight=-1.0 must be a finite number > 0"),
    (dict(mixture=[MixtureSource("a", "x", 0)]), r"data.mixture\[0\].weight=0 must be"),
    (dict(mixture=[MixtureSource("a", "x", float("nan"))]), r"data.mixture\[0\].weight=nan must be"),
    (dict(mixture=[MixtureSource("a", "x", True)]), r"data.mixture\[0\].weight=True must be"),
    (dict(mixture=[MixtureSource("a", "x"), MixtureSource("a", "y")]), r"data.mixture\[1\].name='a' is used twice"),
    (dict(mixture=[MixtureSource("", "x")]), r"data.mixture\[0\].name='' must be a non-empty string"),
    (dict(mixture=[MixtureSource("a", "")]), r"data.mixture\[0\].dataset='' must be a non-empty string"),
    (dict(mixture=[MixtureSource("a", "x", dataset_config="")]), r"data.mixture\[0\].dataset_config=''"),
    (dict(mixture=[{"name": "a", "dataset": "x"}]), r"data.mixture\[0\]=.* must be a MixtureSource"),
    (dict(mixture=[MixtureSource("a", "x")], dataset="web.jsonl"),
     r"data.dataset='web.jsonl' and data.mixture are both set.*leave data.dataset at its default"),
    (dict(mixture=[MixtureSource("a", "x")], split="test"), r"data.split='test' and data.mixture are both set"),
    (dict(mixture=[MixtureSource("a", "embedded:poetry")]),
     r"data.mixture\[0\].dataset='embedded:poetry' names no part of the embedded corpus"),
    (dict(eval_dataset="embedded:"), r"data.eval_dataset='embedded:' names no part"),
    (dict(shuffle_buffer=-1), r"data.shuffle_buffer=-1 must be an integer >= 0"),
    (dict(shuffle_buffer=2.5), r"data.shuffle_buffer=2.5 must be"),
])
def test_bad_mixtures_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**change).validate()
