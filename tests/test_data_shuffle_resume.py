"""Exact resume with shuffle buffers, mixtures, DataLoader workers and pre-tokenized shards.

A run restored from its state after step K must consume exactly the documents an uninterrupted run consumes
from step K + 1 on, including the ones that sat in the shuffle buffer when the state was taken. Documents
carry ids in their text ("a0-3:...") so the multiset of consumed documents is read off the batches.
"""
import dataclasses
from collections import Counter

import pytest
import torch
from data_helpers import BYTES, complete_docs, flatten, make_docs, saved, take, write_docs

from data import DataConfig, MixtureSource, PackedBatches
from data.errors import DataError
from data.pretokenize import pretokenize


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three datasets: jsonl files (24 documents), one parquet file (10), a pre-tokenized directory (12)."""
    root = tmp_path_factory.mktemp("sources")
    (root / "a").mkdir()
    for f in range(3):
        write_docs(root / "a" / f"a{f}.jsonl", "jsonl", make_docs(8, seed=f, prefix=f"a{f}-"))
    write_docs(root / "b.parquet", "parquet", make_docs(10, seed=5, prefix="b-"))
    write_docs(root / "c.jsonl", "jsonl", make_docs(12, seed=6, prefix="c-"))
    pretokenize(str(root / "c.jsonl"), BYTES, root / "c", shard_tokens=120, progress=False)
    return {"a": str(root / "a"), "b": str(root / "b.parquet"), "c": str(root / "c")}


def _mixture(sources, **kw):
    mixture = [MixtureSource("a", sources["a"], 2.0), MixtureSource("b", sources["b"], 1.0),
               MixtureSource("c", sources["c"], 1.0)]
    return DataConfig(mixture=mixture, eval_dataset=None, **kw)


def _ids(tokens):
    """Ids of the complete documents in a token list (a leading partial document gives a junk id, the same
    junk in any two identical streams)."""
    return [d.split(b":")[0] for d in complete_docs(tokens)]


def _run(cfg, n, seed=3):
    it = PackedBatches(cfg, BYTES, seq_len=11, batch_size=2, seed=seed)
    batches, states = [], [saved(it.state_dict())]
    for _ in range(n):
        batches.append(next(it))
        states.append(saved(it.state_dict()))  # states[k]: after k batches, through torch.save / torch.load
    return batches, states, it


@pytest.mark.parametrize("workers, buffer, mixed", [(0, 8, True), (2, 8, True), (2, 0, True), (0, 5, False)])
def test_resume_consumes_exactly_the_uninterrupted_documents(sources, workers, buffer, mixed):
    cfg = (_mixture(sources, shuffle_buffer=buffer, num_workers=workers) if mixed else
           DataConfig(dataset=sources["a"], eval_dataset=None, shuffle_buffer=buffer, num_workers=workers))
    n = 160  # ~100 documents: every source of every reader wraps into its second epoch
    ref, states, ref_it = _run(cfg, n)
    assert ref_it.epoch >= 1
    for k in (0, 1, 17, 83, n - 1):
        it = PackedBatches(cfg, BYTES, seq_len=11, batch_size=2, seed=3)  # a new process would build a new one
        it.load_state_dict(states[k])
        rest = take(it, n - k)
        assert Counter(_ids(flatten(rest))) == Counter(_ids(flatten(ref[k:]))), k
        assert all(torch.equal(a, b) for a, b in zip(rest, ref[k:])), k  # and in the same order
        assert it.tokens_per_source() == ref_it.tokens_per_source()


def test_buffer_loses_and_repeats_nothing(sources):
    """Against the same stream without a buffer: after m documents out of a buffer of b, the documents out
    are the first m + b in, minus b still held; shuffling moved them, and a resume keeps that true."""
    b, m = 8, 60
    plain = _ids(flatten(_run(_mixture(sources), 100)[0]))
    ref, states, _ = _run(_mixture(sources, shuffle_buffer=b), 100)
    shuffled = _ids(flatten(ref))
    assert len(plain) >= m + b and len(shuffled) >= m
    assert shuffled[:m] != plain[:m]
    held = Counter(plain[:m + b]) - Counter(shuffled[:m])
    assert not Counter(shuffled[:m]) - Counter(plain[:m + b]) and sum(held.values()) == b
    # Resumed at step 20 from a fresh loader: the same documents come out, none lost from the buffer.
    it = PackedBatches(_mixture(sources, shuffle_buffer=b), BYTES, seq_len=11, batch_size=2, seed=3)
    it.load_state_dict(states[20])
    assert _ids(flatten(ref[:20] + take(it, 80)))[:m] == shuffled[:m]


def test_buffer_is_seeded(sources):
    cfg = _mixture(sources, shuffle_buffer=8)
    first = [_run(cfg, 30, seed=s)[0] for s in (3, 3, 4)]
    assert all(torch.equal(a, b) for a, b in zip(first[0], first[1]))
    assert not all(torch.equal(a, b) for a, b in zip(first[0], first[2]))


def test_state_is_small_and_checkpointable(sources):
    it = PackedBatches(_mixture(sources, shuffle_buffer=8), BYTES, seq_len=11, batch_size=2)
    take(it, 25)
    state = it.state_dict()

    def check(value):  # only what torch.load(weights_only=True) reads back
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        elif isinstance(value, torch.Tensor):
            assert value.dtype in (torch.int32, torch.int64) and value.dim() == 1
        else:
            assert value is None or isinstance(value, (bool, int, float, str)), type(value)

    check(state)
    held = state["buffer"]
    assert len(held["lengths"]) == 8 and held["tokens"].numel() == int(held["lengths"].sum()) < 8 * 64
    assert held["tokens"].dtype == torch.int32


def test_resume_refuses_other_settings(sources):
    cfg = _mixture(sources, shuffle_buffer=8)
    state = saved(PackedBatches(cfg, BYTES, 11, 2).state_dict())
    renamed = dataclasses.replace(cfg, mixture=[dataclasses.replace(m, name=m.name + "x") for m in cfg.mixture])
    for other in (dataclasses.replace(cfg, shuffle_buffer=4), renamed, dataclasses.replace(cfg, num_workers=1)):
        with pytest.raises(DataError, match="resume with the same settings"):
            PackedBatches(other, BYTES, 11, 2).load_state_dict(state)
    with pytest.raises(DataError, match="version 1 .* cannot be resumed exactly"):
        PackedBatches(cfg, BYTES, 11, 2).load_state_dict({"version": 1, "readers": [{}]})
