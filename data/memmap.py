"""Pre-tokenized datasets: documents' token ids in uint16/uint32 memory-mapped shards with an index.

A directory holds `pretokenized.json` (format, dtype, vocabulary size, EOS id and a tokenizer fingerprint;
per shard its files and sizes) and per shard `<name>.bin` (the documents' ids back to back, no EOS) and
`<name>.idx` (uint64 document start offsets into the .bin, plus its length at the end). Readers append EOS.
"""
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from data.errors import DataError
from data.tokenizer import tokenizer_fingerprint

INDEX_FILE = "pretokenized.json"
FORMAT_NAME = "lrnn-pretokenized"
FORMAT_VERSION = 1
# Encoded at build time and again at training time: a different tokenizer gives different ids.


def token_dtype(vocab_size: int) -> str:
    """The smallest dtype that holds every id below vocab_size."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_pretokenized(spec: str) -> bool:
    return (Path(spec).expanduser() / INDEX_FILE).is_file()


class ShardWriter:
    """Appends documents to shards `<prefix>-NNNNN.bin/.idx` in `directory`, starting a new shard once one
    holds at least `shard_tokens` tokens (documents are never split)."""

    def __init__(self, directory, prefix: str, vocab_size: int, shard_tokens: int):
        self._dir, self._prefix, self._vocab = Path(directory), prefix, vocab_size
        self._dtype, self._limit = np.dtype(token_dtype(vocab_size)), shard_tokens
        self.shards = []
        self._file = None

    def add(self, ids) -> None:
        ids = np.asarray(ids)
        if len(ids) == 0:
            return
        if ids.min() < 0 or ids.max() >= self._vocab:
            raise DataError(f"the tokenizer emitted id {int(ids.max())} outside [0, vocab_size={self._vocab})")
        if self._file is None:
            self._open()
        self._file.write(ids.astype(self._dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(ids))
        if self._offsets[-1] >= self._limit:
            self._close()

    def finish(self) -> list:
        """Close the last shard; return the index entries of every shard written."""
        if self._file is not None:
            self._close()
        return self.shards

    def _open(self) -> None:
        self._name = f"{self._prefix}-{len(self.shards):05d}"
        self._file = open(self._dir / f"{self._name}.bin", "wb")
        self._offsets = [0]

    def _close(self) -> None:
        self._file.close()
        self._file = None
        np.asarray(self._offsets, dtype=np.uint64).tofile(self._dir / f"{self._name}.idx")
        self.shards.append({"tokens": f"{self._name}.bin", "offsets": f"{self._name}.idx",
                            "num_tokens": self._offsets[-1], "num_documents": len(self._offsets) - 1})


def write_index(directory, shards: list, tokenizer, source_label: str) -> dict:
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dtype": token_dtype(tokenizer.vocab_size),
             **tokenizer_fingerprint(tokenizer), "source": source_label,
             "num_documents": sum(s["num_documents"] for s in shards),
             "num_tokens": sum(s["num_tokens"] for s in shards), "shards": shards}
    (Path(directory) / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return index


@dataclass(frozen=True)
class PretokenizedSource:
    """A checked pre-tokenized directory; picklable (readers map the shards themselves)."""

    label: str
    path: str
    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer: str
    tokenizer_probe: tuple
    shards: tuple  # (tokens file, offsets file, num_documents) per shard
    shuffle_shards: bool = False

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one the shards were built with."""
        got = tokenizer_fingerprint(tokenizer)
        diffs = [f"{key} {getattr(self, key)} vs {got[key]}" for key in ("vocab_size", "eos_id")
                 if got[key] != getattr(self, key)]
        if tuple(got["tokenizer_probe"]) != self.tokenizer_probe:
            diffs.append("different ids for the same text")
        if diffs:
            raise DataError(
                f"{self.label} was tokenized with {self.tokenizer!r} but data.tokenizer is {tokenizer.name!r} "
                f"({'; '.join(diffs)}); train with the tokenizer it was built with, or rebuild it with "
                "`python -m data.pretokenize --tokenizer ...`"
            )

    def reader(self, tokenizer, seed: int, node: int, num_nodes: int, single_epoch: bool = False):
        self.check_tokenizer(tokenizer)
        return PretokenizedDocuments(self, seed, node, num_nodes, single_epoch)


def open_pretokenized(spec: str, label: str, shuffle_shards: bool = False) -> PretokenizedSource:
    """Read and check a directory's index and shard sizes (a truncated or swapped file is a DataError)."""
    root = Path(spec).expanduser()
    try:
        index = json.loads((root / INDEX_FILE).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{label}: cannot read {root / INDEX_FILE} ({err}); rebuild it with "
                        "`python -m data.pretokenize`") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME or index.get("version") != FORMAT_VERSION:
        raise DataError(f"{label}: {root / INDEX_FILE} is not a version-{FORMAT_VERSION} {FORMAT_NAME} index; "
                        "rebuild it with `python -m data.pretokenize`")
    keys = ("dtype", "vocab_size", "eos_id", "tokenizer", "tokenizer_probe", "shards")
    missing = [k for k in keys if k not in index]
    if missing or index["dtype"] != token_dtype(index["vocab_size"]):
        raise DataError(f"{label}: {root / INDEX_FILE} is corrupt (missing {missing} or a dtype that does not fit "
                        "its vocab_size); rebuild it with `python -m data.pretokenize`")
    itemsize = np.dtype(index["dtype"]).itemsize
    shards = []
    for shard in index["shards"]:
        if not isinstance(shard, dict) or not {"tokens", "offsets", "num_tokens", "num_documents"} <= set(shard):
            raise DataError(f"{label}: {root / INDEX_FILE} has a corrupt shard entry {shard!r}; rebuild it")
        n_tok, n_doc = shard["num_tokens"], shard["num_documents"]
        for name, want in ((shard["tokens"], n_tok * itemsize), (shard["offsets"], (n_doc + 1) * 8)):
            path = root / name
            if not path.is_file():
                raise DataError(f"{label}: shard file {path} is missing; the directory is incomplete, rebuild it")
            if path.stat().st_size != want:
                raise DataError(f"{label}: shard file {path} has {path.stat().st_size} bytes but the index says "
                                f"{want}; it is truncated or corrupt, rebuild the directory")
        ends = np.memmap(root / shard["offsets"], dtype=np.uint64, mode="r")[[0, -1]]
        if int(ends[0]) != 0 or int(ends[1]) != n_tok:
            raise DataError(f"{label}: {root / shard['offsets']} does not span its {n_tok} tokens; it is corrupt, "
                            "rebuild the directory")
        shards.append((shard["tokens"], shard["offsets"], n_doc))
    if not sum(s[2] for s in shards):
        raise DataError(f"{label}: the pre-tokenized dataset has no documents")
    return PretokenizedSource(label, str(root), index["dtype"], index["vocab_size"], index["eos_id"],
                              index["tokenizer"], tuple(index["tokenizer_probe"]), tuple(shards), shuffle_shards)


class PretokenizedDocuments:
    """Documents of reader `node` of `num_nodes`: each epoch visits the shards in an order fixed by
    (seed, epoch) (training) or as listed, and the reader takes every num_nodes-th document of that
    sequence, so readers' parts are disjoint and together complete. The state is (epoch, position)."""

    def __init__(self, source: PretokenizedSource, seed: int, node: int, num_nodes: int, single_epoch: bool = False):
        self._source, self._seed, self._node, self._num_nodes = source, seed, node, num_nodes
        self._single_epoch = single_epoch
        self._total = sum(s[2] for s in source.shards)
        if node >= self._total:
            raise DataError(f"{source.label}: reader {node} of {num_nodes} (ranks x workers) got no documents; "
                            f"the dataset has only {self._total}")
        self.epoch, self._position, self._done = 0, 0, False
        self._maps = {}
        self._order_epoch = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._position, self._done = state["epoch"], state["position"], False

    def next(self) -> Optional[np.ndarray]:
        """The next document's ids and EOS; None only when a single-epoch reader has run out."""
        while not self._done:
            g = self._position * self._num_nodes + self._node  # index in this epoch's document sequence
            if g >= self._total:
                if self._single_epoch:
                    self._done = True
                    break
                self.epoch, self._position = self.epoch + 1, 0
                continue
            self._position += 1
            order, ends = self._order()
            k = int(np.searchsorted(ends, g, side="right"))
            local = g - (int(ends[k - 1]) if k else 0)
            tokens, offsets = self._shard(order[k])
            start, stop = int(offsets[local]), int(offsets[local + 1])
            if stop > start:
                doc = np.empty(stop - start + 1, dtype=np.int32)
                doc[:-1] = tokens[start:stop]
                doc[-1] = self._source.eos_id
                return doc
        return None

    def _order(self):
        """This epoch's shard order and the cumulative document counts along it."""
        if self._order_epoch != self.epoch:
            order = list(range(len(self._source.shards)))
            if self._source.shuffle_shards:
                random.Random(f"{self._seed}-{self.epoch}").shuffle(order)
            self._order_cache = order, np.cumsum([self._source.shards[i][2] for i in order])
            self._order_epoch = self.epoch
        return self._order_cache

    def _shard(self, i: int):
        if i not in self._maps:
            root, (tokens, offsets, _) = Path(self._source.path), self._source.shards[i]
            self._maps[i] = (np.memmap(root / tokens, dtype=self._source.dtype, mode="r"),
                             np.memmap(root / offsets, dtype=np.uint64, mode="r"))
        return self._maps[i]
