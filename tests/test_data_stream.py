"""Streaming, packing and exact resume of PackedBatches; eval batches, the unigram baseline, clear errors.

Most tests use a byte-level tokenizer (ids = UTF-8 bytes, EOS = 256) so the expected token stream can be
written down independently of the code under test.
"""
import dataclasses
import json
import math
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data import DataConfig, PackedBatches, check_vocab, eval_batches, load_tokenizer, unigram_loss
from data.errors import DataError
from data.tokenizer import Tokenizer

EOS = 256


class ByteTokenizer(Tokenizer):
    name, vocab_size, eos_id, bos_id = "bytes", 257, EOS, None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i != EOS).decode()

    def save(self, directory):
        raise NotImplementedError("not needed by these tests")


BYTES = ByteTokenizer()


def _docs(n, seed=0, prefix="doc"):
    """Distinct documents of varied lengths (3 to 60 bytes), some non-ASCII."""
    rng = random.Random(seed)
    return [f"{prefix}{i}:" + "".join(rng.choice("abcdé xyz\n") for _ in range(rng.randint(0, 50)))
            for i in range(n)]


def _expected(docs):
    return [t for d in docs if d for t in list(d.encode()) + [EOS]]


def _write(path, fmt, docs, field="text"):
    """Write documents as one file of the given format (txt: one file per document, path is a directory)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({field: d, "n": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps([{field: d} for d in docs]), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.table({field: docs}), path, row_group_size=7)
    else:
        path.mkdir()
        for i, d in enumerate(docs):
            (path / f"{i:04d}.txt").write_text(d, encoding="utf-8")


def _cfg(dataset, **kw):
    return DataConfig(dataset=str(dataset), eval_dataset=kw.pop("eval_dataset", str(dataset)), **kw)


def _flat(batches):
    return [t for b in batches for t in b.reshape(-1).tolist()]


def _take(it, n):
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_local_formats_stream_in_order(tmp_path, fmt):
    docs = _docs(30, seed=1)
    for part in range(2):
        suffix = "" if fmt == "txt" else f".{fmt}"
        _write(tmp_path / f"part{part}{suffix}", fmt, docs[part * 15:(part + 1) * 15])
    # Validation reads files in sorted order, with no shard shuffling.
    expected = _expected(docs)
    batches = _take(PackedBatches(_cfg(tmp_path), BYTES, seq_len=9, batch_size=4, split="validation"),
                    len(expected) // 40)
    assert _flat(batches) == expected[:len(batches) * 40]


def test_packing_keeps_every_token_in_order_across_epochs(tmp_path):
    docs = _docs(40) + ["", "x" * 500]  # an empty document (skipped) and one longer than a batch
    _write(tmp_path / "d.jsonl", "jsonl", docs)
    it = PackedBatches(_cfg(tmp_path / "d.jsonl"), BYTES, seq_len=15, batch_size=3)
    stream = _expected(docs)
    n = (5 * len(stream)) // 48 // 2  # two and a half epochs
    batches = _take(it, n)
    assert all(b.shape == (3, 16) and b.dtype == torch.int64 for b in batches)
    assert _flat(batches) == (stream * 3)[:n * 48]  # one file: the same order every epoch
    assert it.epoch == 2


def test_train_files_are_reordered_per_epoch_deterministically(tmp_path):
    files = [_docs(3, seed=i, prefix=f"f{i}-") for i in range(8)]
    for i, docs in enumerate(files):
        _write(tmp_path / f"s{i}.jsonl", "jsonl", docs)
    per_file = [_expected(docs) for docs in files]
    epoch_len = sum(map(len, per_file))

    def epoch_orders(seed):
        flat = _flat(_take(PackedBatches(_cfg(tmp_path), BYTES, 1, 1, seed=seed), 3 * epoch_len // 2))
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
    files = [_docs(12, seed=i, prefix=f"{i}-") for i in range(3)]
    for i, docs in enumerate(files):
        _write(tmp_path / (f"p{i}" if fmt == "txt" else f"p{i}.{fmt}"), fmt, docs)
    n = 5 * sum(len(_expected(docs)) for docs in files) // 24 // 2  # 2.5 epochs of 2 x 12-token rows
    cfg = _cfg(tmp_path)
    ref_it = PackedBatches(cfg, BYTES, seq_len=11, batch_size=2, seed=3)
    ref, states, epochs = [], [json.loads(json.dumps(ref_it.state_dict()))], []
    for _ in range(n):
        ref.append(next(ref_it))
        states.append(json.loads(json.dumps(ref_it.state_dict())))  # states[k]: after k batches
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
        _write(tmp_path / f"p{i}.jsonl", "jsonl", _docs(10, seed=i, prefix=f"{i}-"))
    cfg = _cfg(tmp_path, num_workers=2)
    it = PackedBatches(cfg, BYTES, seq_len=7, batch_size=2)
    ref, states = [], []
    for _ in range(40):
        ref.append(next(it))
        states.append(json.loads(json.dumps(it.state_dict())))
    for k in (2, 5, 30):  # 5: the next batch comes from the second worker
        resumed = PackedBatches(cfg, BYTES, seq_len=7, batch_size=2)
        resumed.load_state_dict(states[k])
        for j in range(k + 1, min(k + 7, 40)):
            assert torch.equal(next(resumed), ref[j]), (k, j)
    # Batches alternate between the two workers, whose readers hold disjoint halves of the four files
    # (40 batches are less than an epoch of either reader, so no file can come round twice).
    files_seen = [{doc.split(b"-")[0] for doc in _complete_docs(_flat(ref[r::2]))} for r in (0, 1)]
    assert files_seen[0] and files_seen[1] and not files_seen[0] & files_seen[1]
    with pytest.raises(DataError, match="resume with the same settings"):
        PackedBatches(dataclasses.replace(cfg, num_workers=0), BYTES, seq_len=7, batch_size=2).load_state_dict(
            states[3])


def _complete_docs(tokens):
    """The EOS-terminated documents in a token list, as bytes."""
    docs, current = [], []
    for t in tokens:
        if t == EOS:
            docs.append(bytes(current))
            current = []
        else:
            current.append(t)
    return docs


def _first_epoch_docs(it):
    """Documents a (batch 1, seq_len 1) iterator yields before its epoch count moves on; all documents have
    >= 3 bytes, so the <= 2 tokens it reads past the epoch end never form a document."""
    tokens = []
    while it.epoch == 0:
        tokens += next(it).reshape(-1).tolist()
    return _complete_docs(tokens)


@pytest.mark.parametrize("num_files, world_size", [(4, 2), (6, 3), (3, 2), (4, 3)])  # shards, then examples
def test_rank_partitions_are_disjoint_and_complete(tmp_path, num_files, world_size):
    all_docs = []
    for i in range(num_files):
        docs = _docs(5, seed=i, prefix=f"{i}-")
        _write(tmp_path / f"p{i}.jsonl", "jsonl", docs)
        all_docs += [d.encode() for d in docs]
    per_rank = [_first_epoch_docs(PackedBatches(_cfg(tmp_path), BYTES, 1, 1, seed=5, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert all(per_rank)
    assert Counter(d for docs in per_rank for d in docs) == Counter(all_docs)


def test_eval_batches_fixed_and_from_the_validation_data(tmp_path):
    train, valid = _docs(20, seed=1), _docs(25, seed=2, prefix="v")
    _write(tmp_path / "t.jsonl", "jsonl", train)
    _write(tmp_path / "v.jsonl", "jsonl", valid)
    cfg = _cfg(tmp_path / "t.jsonl", eval_dataset=str(tmp_path / "v.jsonl"))
    a = eval_batches(cfg, BYTES, seq_len=9, batch_size=2, max_batches=4)
    assert len(a) == 4 and all(torch.equal(x, y) for x, y in zip(a, eval_batches(cfg, BYTES, 9, 2, 4)))
    assert _flat(a) == _expected(valid)[:80]
    every = eval_batches(cfg, BYTES, seq_len=9, batch_size=2, max_batches=10_000)  # one pass, no wrap-around
    assert len(every) == len(_expected(valid)) // 20


def test_unigram_loss_matches_direct_count(tmp_path):
    train, valid = _docs(50, seed=1), _docs(20, seed=2)
    _write(tmp_path / "t.jsonl", "jsonl", train)
    _write(tmp_path / "v.jsonl", "jsonl", valid)
    cfg = _cfg(tmp_path / "t.jsonl", eval_dataset=str(tmp_path / "v.jsonl"))
    counts, n = Counter(_expected(train)), len(_expected(train))
    want = -sum(math.log((counts[t] + 1) / (n + 257)) for t in _expected(valid)) / len(_expected(valid))
    assert unigram_loss(cfg, BYTES) == pytest.approx(want, rel=1e-12)  # float64 sums of the same terms
    capped = Counter(_expected(train)[:100])
    want_capped = -sum(math.log((capped[t] + 1) / (100 + 257)) for t in _expected(valid)[:100]) / 100
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
        PackedBatches(_cfg(tmp_path / "nothing" / "*.jsonl"), BYTES, 8, 2)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"no files match \(found only: notes.csv\)"):
        PackedBatches(_cfg(tmp_path), BYTES, 8, 2)

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="every matching file is empty"):
        PackedBatches(_cfg(tmp_path / "empty.jsonl"), BYTES, 8, 2)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jsonl").write_text("\n")  # blank files are skipped, wherever they fall
    _write(tmp_path / "mixed" / "b.jsonl", "jsonl", ["kept"])
    assert _flat([next(PackedBatches(_cfg(tmp_path / "mixed"), BYTES, 4, 1))]) == _expected(["kept"])
    _write(tmp_path / "blank.jsonl", "jsonl", ["", ""])
    with pytest.raises(DataError, match="no non-empty documents"):
        PackedBatches(_cfg(tmp_path / "blank.jsonl"), BYTES, 8, 2)
    _write(tmp_path / "one.jsonl", "jsonl", ["only one"])
    with pytest.raises(DataError, match="reader 1 of 2"):
        PackedBatches(_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2, rank=1, world_size=2)

    _write(tmp_path / "content.jsonl", "jsonl", ["some text"], field="content")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['content', 'n'\]\).*data.text_field"):
        PackedBatches(_cfg(tmp_path / "content.jsonl"), BYTES, 8, 2)

    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "latin" / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"b\.txt is not valid UTF-8"):
        _take(PackedBatches(_cfg(tmp_path / "latin"), BYTES, 8, 2, split="validation"), 2)

    (tmp_path / "latin" / "c.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="mixes file types"):
        PackedBatches(_cfg(tmp_path / "latin" / "*"), BYTES, 8, 2)

    with pytest.raises(DataError, match="could not be streamed from the Hugging Face Hub"):
        PackedBatches(_cfg("no-such-org/no-such-dataset"), BYTES, 8, 2)
    with pytest.raises(DataError, match="data.eval_dataset is null"):
        eval_batches(_cfg(tmp_path / "one.jsonl", eval_dataset=None), BYTES, 8, 2, 1)
    with pytest.raises(DataError, match="fewer than one batch"):
        eval_batches(_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2, 1)
    for kwargs in (dict(seq_len=0), dict(batch_size=-1), dict(rank=2, world_size=2)):
        with pytest.raises(DataError, match="must be"):
            PackedBatches(_cfg(tmp_path / "one.jsonl"), BYTES, **{"seq_len": 8, "batch_size": 2, **kwargs})
    it = PackedBatches(_cfg(tmp_path / "one.jsonl"), BYTES, 8, 2)
    with pytest.raises(DataError, match="resume with the same settings"):
        PackedBatches(_cfg(tmp_path / "one.jsonl"), BYTES, 16, 2).load_state_dict(it.state_dict())


def test_check_vocab():
    check_vocab(BYTES, 257)
    with pytest.raises(DataError, match=r"raise model.vocab_size to >= 257"):
        check_vocab(BYTES, 256)
