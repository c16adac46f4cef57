"""Tokenized, packed, resumable streams of training batches.

Each rank's documents come from `num_readers` readers (one per DataLoader worker, or one in process), each
reading a disjoint part of every source and mixing its sources by weight. Readers send documents in chunks
taken round-robin; the rank then optionally passes them through a shuffle buffer and packs them, each
followed by EOS, into contiguous rows of seq_len + 1 tokens (documents cross row and batch boundaries; no
padding). Everything after the readers runs in this process, so the state is exact: per reader, its state
after its last consumed chunk and how many documents of the current chunk were used; the shuffle buffer's
documents; and the unused rest of the current document. Restoring it replays the same batches exactly.
"""
import copy
from collections import deque

import numpy as np
import torch

from data.config import DataConfig
from data.errors import DataError
from data.mixture import MixedDocuments
from data.shuffle import ShuffleBuffer
from data.sources import resolve_sources

STATE_VERSION = 2
DOCS_PER_CHUNK = 16  # documents a DataLoader worker sends at once (resuming mid-chunk re-reads at most this many)


def open_reader(sources: list, tokenizer, seed: int, node: int, num_nodes: int,
                single_epoch: bool = False) -> MixedDocuments:
    """Reader `node` of `num_nodes` over NamedSources (data.sources.resolve_sources): documents and their source."""
    readers = [s.source.reader(tokenizer, seed, node, num_nodes, single_epoch) for s in sources]
    return MixedDocuments(readers, [s.weight for s in sources], seed, node)


def _chunks(reader: MixedDocuments, state, skip: int, size: int):
    """Yield (documents, reader state after them) in chunks of `size`; a reader resumed `skip` documents into
    a chunk re-reads those and sends the rest of that chunk first, so chunks stay aligned."""
    if state is not None:
        reader.load_state_dict(state)
    for _ in range(skip):
        reader.next()
    n = size - skip
    while True:
        docs = [reader.next() for _ in range(n)]
        yield docs, reader.state_dict()
        n = size


class _ReaderChunks(torch.utils.data.IterableDataset):
    """DataLoader side of the feed: worker j runs reader (j + start) % num_readers, so chunks arrive in
    reader order starting from `start`."""

    def __init__(self, sources, tokenizer, seed, rank, world_size, num_readers, states, start, skip):
        super().__init__()
        self.sources, self.tokenizer, self.seed, self.rank, self.world_size = sources, tokenizer, seed, rank, world_size
        self.num_readers, self.states, self.start, self.skip = num_readers, states, start, skip

    def __iter__(self):
        reader = (torch.utils.data.get_worker_info().id + self.start) % self.num_readers
        docs = open_reader(self.sources, self.tokenizer, self.seed, self.rank * self.num_readers + reader,
                           self.world_size * self.num_readers)
        skip = self.skip if reader == self.start else 0
        for chunk, state in _chunks(docs, self.states[reader], skip, DOCS_PER_CHUNK):
            yield reader, chunk, state


def _no_collate(item):
    return item


class _Feed:
    """One rank's documents: chunks from its readers round-robin, in process (num_workers = 0, chunks of one
    document) or from DataLoader workers (which tokenize on the fly)."""

    def __init__(self, sources, tokenizer, seed: int, rank: int, world_size: int, workers: int):
        self._args = sources, tokenizer, seed, rank, world_size
        self._workers, self._num_readers = workers, max(1, workers)
        self.load_state_dict({"readers": [None] * self._num_readers, "current": 0, "skip": 0})

    @property
    def epoch(self) -> int:
        """Completed passes of the slowest reader's least-read source, as far as documents were taken."""
        return min(min(s["epoch"] for s in state["sources"]) if state else 0 for state in self._states)

    def state_dict(self) -> dict:
        # A copy: `datasets` may update the dicts it was resumed from while it reads on.
        return copy.deepcopy({"readers": self._states, "current": self._current, "skip": self._skip})

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self._states, self._current, self._skip = state["readers"], state["current"], state["skip"]
        self._chunks, self._pending, self._chunk_state = None, deque(), None

    def next(self) -> tuple:
        """(document ids with EOS, source index)."""
        if not self._pending:
            if self._chunks is None:
                self._chunks = self._open()
            reader, chunk, self._chunk_state = next(self._chunks)
            assert reader == self._current, (reader, self._current)  # the DataLoader keeps worker order
            self._pending.extend(chunk)
        doc = self._pending.popleft()
        self._skip += 1
        if not self._pending:  # chunk used up: the reader's state moves past it, the next reader is due
            self._states[self._current] = self._chunk_state
            self._current, self._skip = (self._current + 1) % self._num_readers, 0
        return doc

    def _open(self):
        sources, tokenizer, seed, rank, world_size = self._args
        if self._workers == 0:
            docs = open_reader(sources, tokenizer, seed, rank, world_size)
            return ((0, chunk, state) for chunk, state in _chunks(docs, self._states[0], self._skip, 1))
        dataset = _ReaderChunks(sources, tokenizer, seed, rank, world_size, self._num_readers, list(self._states),
                                self._current, self._skip)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self._workers,
                                                collate_fn=_no_collate))


class PackedBatches:
    """An endless iterator of LongTensor batches [batch_size, seq_len + 1] (inputs [:, :-1], targets [:, 1:]).

    Ranks and readers read disjoint parts of each source (`split_dataset_by_node`, or every n-th document of
    a pre-tokenized one); give every rank the same seed, which fixes the per-epoch shard order they split.
    With data.num_workers = W > 0, W DataLoader workers each run their own reader, so the order differs
    from W = 0; resuming needs the same W, shuffle buffer and source names. `epoch` counts completed passes
    of the slowest reader's least-read source over the documents taken so far (with a shuffle buffer, that
    includes the ones it holds).
    """

    def __init__(self, cfg: DataConfig, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 split: str = "train", rank: int = 0, world_size: int = 1):
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise DataError(f"{name}={value!r} must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r} must be an integer in [0, world_size={world_size})")
        sources = resolve_sources(cfg, split)
        self._names = [s.name for s in sources]
        self._seq_len, self._batch_size, self._rank, self._world_size = seq_len, batch_size, rank, world_size
        self._workers = cfg.num_workers
        self._buffer_size = cfg.shuffle_buffer if split == "train" else 0
        # Read one document of each source now so a bad path, column, encoding or tokenizer fails here.
        readers = max(1, self._workers)
        for s in sources:
            s.source.reader(tokenizer, seed, rank * readers, world_size * readers).next()
        self._feed = _Feed(sources, tokenizer, seed, rank, world_size, self._workers)
        self._buffer = ShuffleBuffer(self._buffer_size, seed, rank) if self._buffer_size else None
        self._doc, self._pos, self._doc_source = np.empty(0, np.int32), 0, 0
        self._tokens = [0] * len(sources)

    @property
    def epoch(self) -> int:
        return self._feed.epoch

    def tokens_per_source(self) -> dict:
        """Tokens (EOS included) of each source put into batches so far, by source name."""
        return dict(zip(self._names, self._tokens))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        n = self._batch_size * (self._seq_len + 1)
        out, filled = np.empty(n, dtype=np.int64), 0
        while filled < n:
            if self._pos == len(self._doc):
                self._doc, self._doc_source = (self._buffer.next(self._feed.next) if self._buffer
                                               else self._feed.next())
                self._pos = 0
            k = min(n - filled, len(self._doc) - self._pos)
            out[filled:filled + k] = self._doc[self._pos:self._pos + k]
            self._pos += k
            self._tokens[self._doc_source] += k
            filled += k
        return torch.from_numpy(out).view(self._batch_size, self._seq_len + 1)  # [B, T + 1]

    def state_dict(self) -> dict:
        """Plain values and int32 tensors (the shuffle buffer, the current document's rest), for torch.save;
        `load_state_dict` of it replays the following batches exactly."""
        return {"version": STATE_VERSION, **self._layout(), "feed": self._feed.state_dict(),
                "buffer": self._buffer.state_dict() if self._buffer else None,
                "document": torch.from_numpy(self._doc[self._pos:].copy()), "document_source": self._doc_source,
                "tokens_per_source": list(self._tokens)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise DataError(f"data-loader state has version {version!r} but this loader writes version "
                            f"{STATE_VERSION}; it cannot be resumed exactly (start a new run or use the code "
                            "that wrote it)")
        layout = {key: state.get(key) for key in self._layout()}
        if layout != self._layout():
            raise DataError(f"data-loader state was saved with {layout} but this loader has {self._layout()}; "
                            "resume with the same settings")
        self._feed.load_state_dict(state["feed"])
        if self._buffer:
            self._buffer.load_state_dict(state["buffer"])
        self._doc, self._pos = state["document"].numpy(), 0
        self._doc_source, self._tokens = state["document_source"], list(state["tokens_per_source"])

    def _layout(self) -> dict:
        return {"seq_len": self._seq_len, "batch_size": self._batch_size, "rank": self._rank,
                "world_size": self._world_size, "num_workers": self._workers, "shuffle_buffer": self._buffer_size,
                "sources": list(self._names)}


def read_tokens(cfg: DataConfig, tokenizer, split: str, max_tokens: int) -> np.ndarray:
    """Up to max_tokens int64 tokens of one pass over a split (a mixture's sources interleaved by weight),
    in file order for validation and epoch 0's order for training."""
    reader = open_reader(resolve_sources(cfg, split), tokenizer, seed=0, node=0, num_nodes=1, single_epoch=True)
    docs, total = [], 0
    while total < max_tokens and (item := reader.next()) is not None:
        docs.append(item[0])
        total += len(item[0])
    return np.concatenate(docs).astype(np.int64)[:max_tokens] if docs else np.empty(0, np.int64)


def eval_batches(cfg: DataConfig, tokenizer, seq_len: int, batch_size: int, max_batches: int) -> list:
    """The first max_batches full batches [batch_size, seq_len + 1] of one pass over the validation data,
    in file order: the same list on every call and every rank."""
    if not isinstance(max_batches, int) or max_batches < 1:
        raise DataError(f"max_batches={max_batches!r} must be a positive integer")
    block = batch_size * (seq_len + 1)
    tokens = read_tokens(cfg, tokenizer, "validation", max_batches * block)
    batches = [torch.from_numpy(tokens[i:i + block]).view(batch_size, seq_len + 1)
               for i in range(0, len(tokens) - block + 1, block)]
    if not batches:
        raise DataError(
            f"the validation data ({cfg.eval_dataset!r}) has {len(tokens)} tokens, fewer than one batch of "
            f"{batch_size} x {seq_len + 1}; lower the eval batch size or sequence length, or use more data"
        )
    return batches


def check_vocab(tokenizer, model_vocab_size: int) -> None:
    """Raise ValueError if the tokenizer can emit ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but model.vocab_size={model_vocab_size}; "
            f"raise model.vocab_size to >= {tokenizer.vocab_size}"
        )
