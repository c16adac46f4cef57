"""Pretraining data: the embedded corpus, tokenizers, packed resumable batch streams, state-tracking tasks.

Heavy modules (datasets, sentencepiece) load on first use, so importing the config costs nothing.
"""
import importlib

from data.config import DataConfig, MixtureSource
from data.errors import DataError

_LAZY = {
    "build_embedded_corpus": "data.corpus",
    "PackedBatches": "data.stream",
    "check_vocab": "data.stream",
    "eval_batches": "data.stream",
    "read_tokens": "data.stream",
    "Tokenizer": "data.tokenizer",
    "load_tokenizer": "data.tokenizer",
    "unigram_loss": "data.unigram",
}

__all__ = ["DataConfig", "DataError", "MixtureSource", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
