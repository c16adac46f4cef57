"""Streaming, packing and exact resume of PackedBatches; eval batches, the unigram baseline, clear errors.

Most tests use a byte-level tokenizer (tests/data_helpers.py: ids = UTF-8 bytes, EOS = 256) so the expected
token stream can be written down independently of the code under test.
"""
import dataclasses
import math
from collections import Counter

import pytest
import torch
from data_helpers import (BYTES, complete_docs, data_cfg, flatten, make_docs, saved, take, token_stream,
                          write_docs)

from data import DataConfig, PackedBatches, check_vocab, eval_batches, load_tokenizer, unigram_loss
from data.errors import DataError
from data.stream import DOCS_PER_CHUNK


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_local_formats_stream_in_order(tmp_path, fmt):
    docs = make_docs(30, seed=1)
    for part in range(2):
        suffix = "" if fmt == "txt" else f".{fmt}"
        write_docs(tmp_path / f"part{part}{suffix}", fmt, docs[part * 15:(part + 1) * 15])
    # Validation reads files in sorted order, with no shard shuffling.
    expected = token_stream(docs)
    batches = take(PackedBatches(data_cfg(tmp_path), BYTES, seq_len=9, batch_size=4, split="validation"),
                    len(expected) // 40)
    assert flatten(batches) == expected[:len(batches) * 40]


def test_packing_keeps_every_token_in_order_across_epochs(tmp_path):
    docs = make_docs(40) + ["", "x" * 500]  # an empty document (skipped) and one longer than a batch
    write_docs(tmp_path / "d.jsonl", "jsonl", docs)
    it = PackedBatches(data_cfg(tmp_path / "d.jsonl"), BYTES, seq_len=15, batch_size=3)
    stream = token_stream(docs)
    n = (5 * len(stream)) // 48 // 2  # two and a half epochs
    batches = take(it, n)
    assert all(b.shape == (3, 16) and b.dtype == torch.int64 for b in batches)
    assert flatten(batches) == (stream * 3)[:n * 48]  # one file: the same order every epoch
    assert it.epoch == 2


def test_train_files_are_reordered_per_epoch_deterministically(tmp_path):
    files = [make_docs(3, seed=i, prefix=f"f{i}-") for i in range(8)]
    for i, docs in enumerate(files):
        write_docs(tmp_path / f"s{i}.jsonl", "jsonl", docs)
    per_file = [token_stream(docs) for docs in files]
    epoch_len = sum(map(len, per_file))

    def epoch_orders(seed):
        flat = flatten(take(PackedBatches(data_cfg(tmp_path), BYTES, 1, 1, seed=seed), 3 * epoch_len // 2))
        orders = []
        for e in range(3):
            chunk, order = flat[e * epoch_len:(e + 1) * epoch_len], []
            while chunk:  # each epoch is the files' token runs in some order
                k = next(k for k, f in enumerate(per_file) if chunk[:len(f)] == f)
                order.append(k)
                chunk = chunk[len(per_file[k]):]
            orders.append(order)
        return orders

    orders = epoch_orders(seed=0)
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # 8! orders: equal ones would be a bug (or 1 in 40320)
    assert epoch_orders(seed=0) == orders and epoch_orders(seed=1) != orders


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt"])
def test_exact_resume_at_many_points(tmp_path, fmt):
    files = [make_docs(12, seed=i, prefix=f"{i}-") for i in range(3)]
    for i, docs in enumerate(files):
        write_docs(tmp_path / (f"p{i}" if fmt == "txt" else f"p{i}.{fmt}"), fmt, docs)
    n = 5 * sum(len(token_stream(docs)) for docs in files) // 24 // 2  # 2.5 epochs of 2 x 12-token rows
    cfg = data_cfg(tmp_path)
    ref_it = PackedBatches(cfg, BYTES, seq_len=11, batch_size=2, seed=3)
    ref, states, epochs = [], [saved(ref_it.state_dict())], []
    for _ in range(n):
        ref.append(next(ref_it))
        states.append(saved(ref_it.state_dict()))  # states[k]: after k batches
        epochs.append(ref_it.epoch)
    boundary = epochs.index(1)
    assert epochs[-1] == 2
    for k in sorted({0, 1, 7, boundary - 1, boundary, boundary + 1, epochs.index(2), n // 2, n - 1}):
        it = PackedBatches(cfg, BYTES, seq_len=11, batch_size=2, seed=3)
        it.load_state_dict(states[k])
        assert it.epoch == (epochs[k - 1] if k else 0)
        for j in range(k, min(k + 8, n)):
            assert torch.equal(next(it), ref[j]), (k, j)
    # Restoring into a loader that already advanced discards what it read ahead.
    ref_it.load_state_dict(states[5])
    assert torch.equal(next(ref_it), ref[5])


def test_exact_resume_with_dataloader_workers(tmp_path):
    for i in range(4):
        write_docs(tmp_path / f"p{i}.jsonl", "jsonl", make_docs(10, seed=i, prefix=f"{i}-"))
    cfg = data_cfg(tmp_path, num_workers=2)
    it = PackedBatches(cfg, BYTES, seq_len=7, batch_size=2)
    ref, states = [], []
    for _ in range(40):
        ref.append(next(it))
        states.append(saved(it.state_dict()))
    for k in (2, 5, 30):  # 5: the next batch comes from the second worker
        resumed = PackedBatches(cfg, BYTES, seq_len=7, batch_size=2)
        resumed.load_state_dict(states[k])
        for j in range(k + 1, min(k + 7, 40)):
            assert torch.equal(next(resumed), ref[j]), (k, j)
    # Documents come in chunks of DOCS_PER_CHUNK from the two workers in turn, whose readers hold disjoint
    # halves of the four files (the first two chunks lie in both readers' first epoch of 20 documents).
    docs = complete_docs(flatten(ref + take(it, 40)))
    assert len(docs) >= 2 * DOCS_PER_CHUNK
    files = [{d.split(b"-")[0] for d in docs[r * DOCS_PER_CHUNK:(r + 1) * DOCS_PER_CHUNK]} for r in (0, 1)]
    assert len(files[0]) == len(files[1]) == 2 and not files[0] & files[1]
    with pytest.raises(DataError, match="resume with the same settings"):
        PackedBatches(dataclasses.replace(cfg, num_workers=0), BYTES, seq_len=7, batch_size=2).load_state_dict(
            states[3])


def _first_epoch_docs(it):
    """Documents a (batch 1, seq_len 1) iterator yields before its epoch count moves on; all documents have
    >= 3 bytes, so the <= 2 tokens it reads past the epoch end never form a document."""
    tokens = []
    while it.epoch == 0:
        tokens += next(it).reshape(-1).tolist()
    return complete_docs(tokens)


@pytest.mark.parametrize("num_files, world_size", [(4, 2), (6, 3), (3, 2), (4, 3)])  # shards, then examples
def test_rank_partitions_are_disjoint_and_complete(tmp_path, num_files, world_size):
    all_docs = []
    for i in range(num_files):
        docs = make_docs(5, seed=i, prefix=f"{i}-")
        write_docs(tmp_path / f"p{i}.jsonl", "jsonl", docs)
        all_docs += [d.encode() for d in docs]
    per_rank = [_first_epoch_docs(PackedBatches(data_cfg(tmp_path), BYTES, 1, 1, seed=5, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert all(per_rank)
    assert Counter(d for docs in per_rank for d in docs) == Counter(all_docs)


def test_eval_batches_fixed_and_from_the_validation_data(tmp_path):
    train, valid = make_docs(20, seed=1), make_docs(25, seed=2, prefix="v")
    write_docs(tmp_path / "t.jsonl", "jsonl", train)
    write_docs(tmp_path / "v.jsonl", "jsonl", valid)
    cfg = data_cfg(tmp_path / "t.jsonl", eval_dataset=str(tmp_path / "v.jsonl"))
    a = eval_batches(cfg, BYTES, seq_len=9, batch_size=2, max_batches=4)
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, eval_batches(cfg, BYTES, 9, 2, 4)))
    assert flatten(a) == token_stream(valid)[:80]
    every = eval_batches(cfg, BYTES, seq_len=9, batch_size=2, max_batches=10_000)  # one pass, no wrap-around
    assert len(every) == len(token_stream(valid)) // 20


def test_unigram_loss_matches_direct_count(tmp_path):
    train, valid = make_docs(50, seed=1), make_docs(20, seed=2)
    write_docs(tmp_path / "t.jsonl", "jsonl", train)
    write_docs(tmp_path / "v.jsonl", "jsonl", valid)
    cfg = data_cfg(tmp_path / "t.jsonl", eval_dataset=str(tmp_path / "v.jsonl"))
    counts, n = Counter(token_stream(train)), len(token_stream(train))
    want = -sum(math.log((counts[t] + 1) / (n + 257)) for t in token_stream(valid)) / len(token_stream(valid))
    assert unigram_loss(cfg, BYTES) == pytest.approx(want, rel=1e-12)  # float64 sums of the same terms
    capped = Counter(token_stream(train)[:100])
    want_capped = -sum(math.log((capped[t] + 1) / (100 + 257)) for t in token_stream(valid)[:100]) / 100
    assert unigram_loss(cfg, BYTES, max_tokens=100) == pytest.approx(want_capped, rel=1e-12)


def test_embedded_corpus_end_to_end(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), corpus_code_mb=0.05, corpus_prose_mb=0.05, corpus_math_mb=0.05,
                     tokenizer_vocab_size=768)
    tok = load_tokenizer(cfg)
    batch = next(PackedBatches(cfg, tok, seq_len=512, batch_size=4))
    assert batch.shape == (4, 513) and int(batch.max()) < tok.vocab_size and (batch == tok.eos_id).any()
    first_doc = tok.decode(batch.reshape(-1).tolist()).split("\n")[0]
    assert first_doc  # decodes to text
    loss = unigram_loss(cfg, tok)
    assert 2.0 < loss < math.log(tok.vocab_size)  # better than uniform, as any real text is
    assert len(eval_batches(cfg, tok, seq_len=64, batch_size=2, max_batches=3)) == 3


def test_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        PackedBatches(data_cfg(tmp_path / "nothing" / "*.jsonl"), BYTES, 8, 2)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"no files match \(found only: notes.csv\)"):
        PackedBatches(data_cfg(tmp_path), BYTES, 8, 2)

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="every matching file is empty"):
        PackedBatches(data_cfg(tmp_path / "empty.jsonl"), BYTES, 8, 2)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jsonl").write_text("\n")  # blank files are skipped, wherever they fall
    write_docs(tmp_path / "mixed" / "b.jsonl", "jsonl", ["kept"])
    assert flatten([next(PackedBatches(data_cfg(tmp_path / "mixed"), BYTES, 4, 1))]) == token_stream(["kept"])
    write_docs(tmp_path / "blank.jsonl", "jsonl", ["", ""])
    with pytest.raises(DataError, match="no non-empty documents"):
        PackedBatches(data_cfg(tmp_path / "blank.jsonl"), BYTES, 8, 2)
    write_docs(tmp_path / "one.jsonl", "jsonl", ["only one"])
    with pytest.raises(DataError, match="reader 1 of 2"):
        PackedBatches(data_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2, rank=1, world_size=2)

    write_docs(tmp_path / "content.jsonl", "jsonl", ["some text"], field="content")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['content', 'n'\]\).*data.text_field"):
        PackedBatches(data_cfg(tmp_path / "content.jsonl"), BYTES, 8, 2)

    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "latin" / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"b\.txt is not valid UTF-8"):
        take(PackedBatches(data_cfg(tmp_path / "latin"), BYTES, 8, 2, split="validation"), 2)

    (tmp_path / "latin" / "c.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="mixes file types"):
        PackedBatches(data_cfg(tmp_path / "latin" / "*"), BYTES, 8, 2)

    with pytest.raises(DataError, match="could not be streamed from the Hugging Face Hub"):
        PackedBatches(data_cfg("no-such-org/no-such-dataset"), BYTES, 8, 2)
    with pytest.raises(DataError, match="data.eval_dataset is null"):
        eval_batches(data_cfg(tmp_path / "one.jsonl", eval_dataset=None), BYTES, 8, 2, 1)
    with pytest.raises(DataError, match="fewer than one batch"):
        eval_batches(data_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2, 1)
    for kwargs in (dict(seq_len=0), dict(batch_size=-1), dict(rank=2, world_size=2)):
        with pytest.raises(DataError, match="must be"):
            PackedBatches(data_cfg(tmp_path / "one.jsonl"), BYTES, **{"seq_len": 8, "batch_size": 2, **kwargs})
    it = PackedBatches(data_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2)
    with pytest.raises(DataError, match="resume with the same settings"):
        PackedBatches(data_cfg(tmp_path / "one.jsonl"), BYTES, 16, 2).load_state_dict(it.state_dict())


def test_check_vocab():
    check_vocab(BYTES, 257)
    with pytest.raises(DataError, match=r"raise model.vocab_size to >= 257"):
        check_vocab(BYTES, 256)
