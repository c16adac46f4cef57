"""Train (once) and cache the embedded SentencePiece BPE tokenizer on the embedded corpus' train split."""
import hashlib
import io
import json
import os
import random
from pathlib import Path

import sentencepiece as spm

from data.cache import atomic_directory, cache_key
from data.config import DataConfig
from data.corpus import build_embedded_corpus
from data.tokenizer import SPM_FILE
from data.errors import DataError

TRAINER_VERSION = 1
MAX_SENTENCES = 200_000  # train on at most this many lines: keeps training to seconds
# Code needs whitespace and newlines kept exactly, and any byte must encode: identity normalisation,
# no dummy prefix, whitespace-only pieces, "\n" as one piece, byte fallback. Digits split for arithmetic.
TRAINER_OPTIONS = dict(
    model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=True, user_defined_symbols=["\n"],
    character_coverage=0.9999, max_sentence_length=8192, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
)


def embedded_tokenizer_path(cfg: DataConfig) -> Path:
    """Path of the cached .model for `cfg`, training it first if no cache entry exists."""
    train_files = build_embedded_corpus(cfg.cache_dir, cfg.corpus_code_mb, cfg.corpus_prose_mb,
                                        cfg.corpus_math_mb)["train"]
    key = cache_key(version=TRAINER_VERSION, vocab_size=cfg.tokenizer_vocab_size, options=TRAINER_OPTIONS,
                    corpus=_digest(train_files))
    final = Path(cfg.cache_dir) / "tokenizers" / f"spm-bpe{cfg.tokenizer_vocab_size}-{key}"
    if not (final / SPM_FILE).is_file():
        with atomic_directory(final) as tmp:
            (tmp / SPM_FILE).write_bytes(_train(train_files, cfg.tokenizer_vocab_size))
    return final / SPM_FILE


def _digest(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _lines(paths) -> list:
    """Non-empty lines of the documents (SentencePiece trains on lines; newline is a symbol of its own), at most
    MAX_SENTENCES of them, sampled with a fixed seed: SentencePiece's own sampling differs between processes."""
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for record in f:
                lines.extend(line for line in json.loads(record)["text"].split("\n") if line.strip())
    if len(lines) > MAX_SENTENCES:
        keep = sorted(random.Random(0).sample(range(len(lines)), MAX_SENTENCES))
        lines = [lines[i] for i in keep]
    return lines


def _train(paths, vocab_size: int) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines(paths)), model_writer=model, vocab_size=vocab_size,
                                       num_threads=min(4, os.cpu_count() or 1), **TRAINER_OPTIONS)
    except RuntimeError as err:
        raise DataError(
            f"data.tokenizer_vocab_size={vocab_size} could not be trained on the embedded corpus ({err}); "
            "lower it or raise data.corpus_*_mb"
        ) from err
    return model.getvalue()
