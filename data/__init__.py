"""Pretraining data: the embedded corpus, tokenizers, and packed resumable batch streams."""
from data.config import DataConfig
from data.corpus import build_embedded_corpus
from data.stream import PackedBatches, check_vocab, eval_batches
from data.tokenizer import Tokenizer, load_tokenizer
from data.errors import DataError
from data.unigram import unigram_loss

__all__ = ["DataConfig", "DataError", "Tokenizer", "build_embedded_corpus", "check_vocab", "eval_batches", "load_tokenizer",
           "PackedBatches", "unigram_loss"]
