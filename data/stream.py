"""Tokenized, packed, resumable streams of training batches.

Documents are streamed with `datasets`, tokenized on the fly, each followed by EOS, and cut into
contiguous rows of seq_len + 1 tokens (documents cross row and batch boundaries; no padding). The
state is tiny: per reader, the epoch, the dataset's state just before the current document, and how
many of that document's tokens were already used; restoring it replays the same batches exactly.
"""
import numpy as np
import torch

from data.config import DataConfig
from data.sources import Source, resolve_source
from data.errors import DataError

STATE_VERSION = 1


def _fresh_state() -> dict:
    return {"epoch": 0, "doc_state": None, "offset": 0}


class _TokenStream:
    """One reader's tokens (node `node` of `num_nodes`), epoch after epoch, or one epoch if `single_epoch`."""

    def __init__(self, source: Source, tokenizer, seed: int, node: int, num_nodes: int, state=None,
                 single_epoch: bool = False):
        self._source, self._tokenizer, self._seed = source, tokenizer, seed
        self._node, self._num_nodes, self._single_epoch = node, num_nodes, single_epoch
        state = state or _fresh_state()
        self.epoch = state["epoch"]
        self._doc_state = state["doc_state"]  # dataset state before the current document; None = epoch start
        self._skip = state["offset"]  # tokens of the next document read that were already used
        self._docs = None
        self._tokens = None  # current document's ids followed by EOS, int64
        self._pos = 0

    def state_dict(self) -> dict:
        offset = self._pos if self._tokens is not None else self._skip
        return {"epoch": self.epoch, "doc_state": self._doc_state, "offset": offset}

    def read(self, n: int) -> np.ndarray:
        """The next n tokens; fewer only for a single-epoch stream whose epoch ran out."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            if self._tokens is None or self._pos == len(self._tokens):
                if not self._next_document():
                    return out[:filled]
            k = min(n - filled, len(self._tokens) - self._pos)
            out[filled:filled + k] = self._tokens[self._pos:self._pos + k]
            self._pos += k
            filled += k
        return out

    def _next_document(self) -> bool:
        while True:
            if self._docs is None:
                self._from_epoch_start = self._doc_state is None and self._skip == 0
                self._docs, self._found = self._epoch_documents(), 0
            item = next(self._docs, None)
            if item is None:
                if self._from_epoch_start and self._found == 0:
                    raise DataError(self._empty_message())
                if self._single_epoch:
                    return False
                self.epoch += 1
                self._doc_state, self._skip, self._docs, self._tokens = None, 0, None, None
                continue
            before, ids = item
            if len(ids) == 0:
                continue  # an empty document adds nothing, not even EOS
            self._found += 1
            self._doc_state = before
            self._tokens = np.append(np.asarray(ids, dtype=np.int64), self._tokenizer.eos_id)
            self._pos = min(self._skip, len(self._tokens))
            self._skip = 0
            return True

    def _epoch_documents(self):
        """Yield (dataset state before the document, its token ids) for the rest of the current epoch."""
        ds = self._source.open(self.epoch, self._seed, self._node, self._num_nodes)
        if self._doc_state is not None:
            ds.load_state_dict(self._doc_state)
        before = self._doc_state
        field = self._source.text_field
        try:
            for batch in ds.iter(batch_size=1):  # .iter: no automatic re-split inside DataLoader workers
                if field not in batch:
                    raise DataError(
                        f"{self._source.label}: no column {field!r} (columns: {sorted(batch)}); "
                        "set data.text_field to the column holding the text"
                    )
                text = batch[field][0]
                if text is not None and not isinstance(text, str):
                    raise DataError(f"{self._source.label}: column {field!r} holds {type(text).__name__}, not text")
                yield before, self._tokenizer.encode(text) if text else []
                before = ds.state_dict()
        except UnicodeDecodeError as err:
            raise self._source.utf8_error(err) from err

    def _empty_message(self) -> str:
        if self._num_nodes == 1:
            return f"{self._source.label}: the dataset has no non-empty documents in column {self._source.text_field!r}"
        return (f"{self._source.label}: reader {self._node} of {self._num_nodes} (ranks x workers) got no "
                "non-empty documents; the dataset is empty or has fewer documents than readers")


class _ReaderBatches(torch.utils.data.IterableDataset):
    """DataLoader side of PackedBatches: worker j runs reader (j + start) % num_readers and tags each
    batch with that reader and its state after the batch, so the consumer knows exactly what it used."""

    def __init__(self, source, tokenizer, seed, rank, num_readers, world_size, block, shape, states, start):
        super().__init__()
        self.source, self.tokenizer, self.seed, self.rank = source, tokenizer, seed, rank
        self.num_readers, self.world_size, self.block, self.shape = num_readers, world_size, block, shape
        self.states, self.start = states, start

    def __iter__(self):
        reader = (torch.utils.data.get_worker_info().id + self.start) % self.num_readers
        stream = _TokenStream(self.source, self.tokenizer, self.seed, node=self.rank * self.num_readers + reader,
                              num_nodes=self.world_size * self.num_readers, state=self.states[reader])
        while True:
            batch = torch.from_numpy(stream.read(self.block)).view(self.shape)
            yield batch, stream.state_dict(), reader


def _no_collate(item):
    return item


class PackedBatches:
    """An endless iterator of LongTensor batches [batch_size, seq_len + 1] (inputs [:, :-1], targets [:, 1:]).

    Ranks read disjoint parts (`split_dataset_by_node`); give every rank the same seed, which fixes the
    per-epoch file order they split. With data.num_workers = W > 0, W DataLoader workers
    each run their own reader and batches come round-robin from them, so the order differs from W = 0;
    resuming needs the same W. `epoch` counts completed passes (the slowest reader's, with workers).
    """

    def __init__(self, cfg: DataConfig, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 split: str = "train", rank: int = 0, world_size: int = 1):
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise DataError(f"{name}={value!r} must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank={rank!r} must be an integer in [0, world_size={world_size})")
        self._source = resolve_source(cfg, split)
        self._tokenizer, self._seed, self._rank, self._world_size = tokenizer, seed, rank, world_size
        self._seq_len, self._batch_size = seq_len, batch_size
        self._workers = cfg.num_workers
        self._num_readers = max(1, self._workers)
        self._states = [_fresh_state() for _ in range(self._num_readers)]
        self._next_reader = 0
        self._stream = None  # in-process reader (num_workers == 0)
        self._loader = None  # DataLoader iterator (num_workers > 0)
        # Read one document now so a bad path, column or encoding fails here, not mid-training.
        self._new_stream(0).read(1)

    @property
    def epoch(self) -> int:
        if self._stream is not None:
            return self._stream.epoch
        return min(state["epoch"] for state in self._states)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        shape = (self._batch_size, self._seq_len + 1)
        if self._workers == 0:
            if self._stream is None:
                self._stream = self._new_stream(0, self._states[0])
            return torch.from_numpy(self._stream.read(shape[0] * shape[1])).view(shape)  # [B, T + 1]
        if self._loader is None:
            dataset = _ReaderBatches(self._source, self._tokenizer, self._seed, self._rank, self._num_readers,
                                     self._world_size, shape[0] * shape[1], shape, list(self._states),
                                     self._next_reader)
            self._loader = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self._workers,
                                                            collate_fn=_no_collate))
        batch, state, reader = next(self._loader)
        self._states[reader] = state
        self._next_reader = (reader + 1) % self._num_readers
        return batch

    def state_dict(self) -> dict:
        """A small JSON-serialisable dict; `load_state_dict` of it replays the following batches exactly."""
        if self._stream is not None:
            self._states[0] = self._stream.state_dict()
        return {"version": STATE_VERSION, **self._layout(), "next_reader": self._next_reader,
                "readers": [dict(state) for state in self._states]}

    def load_state_dict(self, state: dict) -> None:
        layout = {key: state.get(key) for key in self._layout()}
        if state.get("version") != STATE_VERSION or layout != self._layout():
            raise DataError(
                f"data-loader state was saved with {layout} (version {state.get('version')}) but this loader has "
                f"{self._layout()} (version {STATE_VERSION}); resume with the same settings"
            )
        self._states = [dict(s) for s in state["readers"]]
        self._next_reader = state["next_reader"]
        self._stream, self._loader = None, None  # drop anything read ahead

    def _layout(self) -> dict:
        return {"seq_len": self._seq_len, "batch_size": self._batch_size, "rank": self._rank,
                "world_size": self._world_size, "num_workers": self._workers}

    def _new_stream(self, reader: int, state=None) -> _TokenStream:
        return _TokenStream(self._source, self._tokenizer, self._seed, node=self._rank * self._num_readers + reader,
                            num_nodes=self._world_size * self._num_readers, state=state)


def eval_batches(cfg: DataConfig, tokenizer, seq_len: int, batch_size: int, max_batches: int) -> list:
    """The first max_batches full batches [batch_size, seq_len + 1] of one pass over the validation data,
    in file order: the same list on every call and every rank."""
    if not isinstance(max_batches, int) or max_batches < 1:
        raise DataError(f"max_batches={max_batches!r} must be a positive integer")
    stream = _TokenStream(resolve_source(cfg, "validation"), tokenizer, seed=0, node=0, num_nodes=1,
                          single_epoch=True)
    block, batches, total = batch_size * (seq_len + 1), [], 0
    while len(batches) < max_batches:
        tokens = stream.read(block)
        total += len(tokens)
        if len(tokens) < block:
            break
        batches.append(torch.from_numpy(tokens).view(batch_size, seq_len + 1))
    if not batches:
        raise DataError(
            f"the validation data ({cfg.eval_dataset!r}) has {total} tokens, fewer than one batch of "
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
