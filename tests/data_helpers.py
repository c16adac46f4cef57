"""Documents, a byte-level tokenizer and small utilities shared by the data-pipeline tests.

The byte tokenizer (ids = UTF-8 bytes, EOS = 256) lets a test write the expected token stream down
independently of the code under test, and recover documents (and the ids written into their text) from
batches by splitting at EOS.
"""
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data import DataConfig
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


def make_docs(n, seed=0, prefix="doc"):
    """Distinct documents of varied lengths (3 to 60 bytes), some non-ASCII; document i starts with f"{prefix}{i}:"."""
    rng = random.Random(seed)
    return [f"{prefix}{i}:" + "".join(rng.choice("abcdé xyz\n") for _ in range(rng.randint(0, 50)))
            for i in range(n)]


def token_stream(docs):
    """The byte tokens of documents, each followed by EOS (empty documents add nothing)."""
    return [t for d in docs if d for t in list(d.encode()) + [EOS]]


def write_docs(path, fmt, docs, field="text"):
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


def data_cfg(dataset, **kw):
    return DataConfig(dataset=str(dataset), eval_dataset=kw.pop("eval_dataset", str(dataset)), **kw)


def flatten(batches):
    return [t for b in batches for t in b.reshape(-1).tolist()]


def take(it, n):
    return [next(it) for _ in range(n)]


def complete_docs(tokens):
    """The EOS-terminated documents in a token list, as bytes (a trailing partial document is dropped)."""
    docs, current = [], []
    for t in tokens:
        if t == EOS:
            docs.append(bytes(current))
            current = []
        else:
            current.append(t)
    return docs


def saved(state):
    """A loader state after the trip a checkpoint gives it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
