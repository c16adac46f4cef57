"""Every rank and every DataLoader worker within it reads a disjoint part of each dataset, and together they
read all of it: text files (whole shards or example striding) and pre-tokenized shards alike.

Documents carry their id in their text ("{file}-{i}:..."), so the parts are read off the batches themselves.
"""
from collections import Counter

import pytest
import torch
from data_helpers import BYTES, EOS, complete_docs, data_cfg, flatten, make_docs, take, write_docs

from data import PackedBatches
from data.pretokenize import pretokenize
from data.stream import DOCS_PER_CHUNK


def _write_files(root, num_files, docs_per_file):
    ids = []
    for f in range(num_files):
        docs = make_docs(docs_per_file, seed=f, prefix=f"{f}-")
        write_docs(root / f"p{f}.jsonl", "jsonl", docs)
        ids += [d.split(":")[0].encode() for d in docs]
    return ids


def _reader_sequences(it, workers, num_docs):
    """Split a rank's stream into its readers' document-id sequences: readers send DOCS_PER_CHUNK documents
    in turn (one reader in process when workers = 0)."""
    tokens = []
    while len(docs := complete_docs(tokens)) < num_docs:
        tokens += flatten(take(it, 8))
    ids = [d.split(b":")[0] for d in docs[:num_docs]]
    readers = max(1, workers)
    chunks = [ids[i:i + DOCS_PER_CHUNK] for i in range(0, len(ids), DOCS_PER_CHUNK)]
    return [[d for c in chunks[r::readers] for d in c] for r in range(readers)]


def _assert_partition(sequences, all_ids):
    """Each reader's sequence repeats one epoch of its part; the parts are disjoint and cover all_ids."""
    parts = []
    for seq in sequences:
        part = set(seq)
        assert len(seq) >= 2 * len(part)  # at least two epochs seen, so the part is complete
        first = seq[:len(part)]
        assert len(set(first)) == len(first)  # an epoch visits each of its documents once
        parts.append(part)
    assert Counter(d for part in parts for d in part) == Counter(all_ids)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("num_files, world_size, workers", [
    (4, 2, 2),  # 4 readers, one whole file each
    (3, 2, 2),  # files do not divide: readers take every 4th document
    (1, 1, 3),
    (6, 3, 0),
])
def test_ranks_and_workers_partition_text_files(tmp_path, num_files, world_size, workers):
    all_ids = _write_files(tmp_path, num_files, 12)
    # Validation order keeps each reader's part the same every epoch, so its sequence shows the part whole.
    cfg = data_cfg(tmp_path, num_workers=workers)
    sequences = []
    for rank in range(world_size):
        it = PackedBatches(cfg, BYTES, 15, 2, split="validation", rank=rank, world_size=world_size)
        part_docs = 2 * len(all_ids) // (world_size * max(1, workers))  # ~2 epochs of each reader
        sequences += _reader_sequences(it, workers, part_docs + 2 * DOCS_PER_CHUNK * max(1, workers))
    _assert_partition(sequences, all_ids)


@pytest.mark.parametrize("world_size, workers", [(2, 2), (3, 0)])
def test_ranks_and_workers_partition_pretokenized_shards(tmp_path, world_size, workers):
    (tmp_path / "text").mkdir()
    all_ids = _write_files(tmp_path / "text", 3, 11)
    pretokenize(str(tmp_path / "text"), BYTES, tmp_path / "pt", shard_tokens=150, progress=False)
    cfg = data_cfg(tmp_path / "pt", num_workers=workers)
    sequences = []
    for rank in range(world_size):
        it = PackedBatches(cfg, BYTES, 15, 2, split="validation", rank=rank, world_size=world_size)
        readers = world_size * max(1, workers)
        sequences += _reader_sequences(it, workers, 2 * len(all_ids) // world_size + 2 * DOCS_PER_CHUNK * readers)
    _assert_partition(sequences, all_ids)


def _ids_by_epoch(it, epochs):
    """Document ids of each epoch, in a (batch 1, seq_len 1) stream: a document belongs to the epoch the
    loader reports right after the batch holding its first token (with no workers that is exact)."""
    tokens, token_epochs = [], []
    while it.epoch < epochs:
        batch = next(it).reshape(-1).tolist()
        tokens += batch
        token_epochs += [it.epoch] * len(batch)
    out, start = [[] for _ in range(epochs)], 0
    for i, t in enumerate(tokens):
        if t == EOS:
            if token_epochs[start] < epochs:
                out[token_epochs[start]].append(bytes(tokens[start:i]).split(b":")[0])
            start = i + 1
    return out


@pytest.mark.parametrize("pretokenized", [False, True])
def test_training_epochs_partition_with_reshuffled_shards(tmp_path, pretokenized):
    """In training the shard order changes every epoch; each epoch is still split disjointly and completely."""
    (tmp_path / "text").mkdir()
    all_ids = _write_files(tmp_path / "text", 5, 5)  # odd counts: a new file order moves the striding
    data = tmp_path / "text"
    if pretokenized:
        pretokenize(str(data), BYTES, tmp_path / "pt", shard_tokens=100, progress=False)
        data = tmp_path / "pt"
    per_rank = [_ids_by_epoch(PackedBatches(data_cfg(data), BYTES, 1, 1, seed=7, rank=r, world_size=2), 2)
                for r in range(2)]
    for epoch in range(2):
        assert Counter(d for rank in per_rank for d in rank[epoch]) == Counter(all_ids)
    assert set(per_rank[0][0]) != set(per_rank[0][1])  # the parts themselves changed with the shard order


def test_one_worker_reads_as_in_process(tmp_path):
    _write_files(tmp_path, 3, 10)
    batches = [take(PackedBatches(data_cfg(tmp_path, num_workers=w), BYTES, 7, 2, seed=1), 30) for w in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*batches))
