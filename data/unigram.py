"""The unigram baseline: the loss a model that ignores context would get, which an LM must beat."""
import numpy as np

from data.config import DataConfig
from data.errors import DataError
from data.stream import read_tokens


def unigram_loss(cfg: DataConfig, tokenizer, max_tokens: int = 1_000_000) -> float:
    """Cross-entropy (nats/token) on up to max_tokens validation tokens of token frequencies counted on up to
    max_tokens training tokens, with add-one (Laplace) smoothing; EOS after each document counts as a token."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise DataError(f"max_tokens={max_tokens!r} must be a positive integer")
    train, valid = (read_tokens(cfg, tokenizer, split, max_tokens) for split in ("train", "validation"))
    vocab = tokenizer.vocab_size
    if max(train.max(), valid.max()) >= vocab:
        raise DataError(f"tokenizer {tokenizer.name!r} emitted an id >= its vocab_size={vocab}")
    counts = np.bincount(train, minlength=vocab)
    log_probs = np.log(counts + 1.0) - np.log(len(train) + vocab)
    return float(-log_probs[valid].mean())
