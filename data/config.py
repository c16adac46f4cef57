"""Configuration of the pretraining data: where documents come from and how they are tokenized."""
from dataclasses import dataclass
from typing import Optional

# Byte fallback takes 256 ids, the specials 4 more, and the corpus' distinct characters need room too.
MIN_EMBEDDED_VOCAB = 512


@dataclass
class DataConfig:
    """Data settings; `dataset`/`eval_dataset` are "embedded", local files (file, directory or glob of
    .json/.jsonl/.parquet/.txt) or a Hugging Face Hub dataset name (streamed)."""

    dataset: str = "embedded"
    dataset_config: Optional[str] = None
    split: str = "train"  # used for Hub datasets; local files are the split themselves
    text_field: str = "text"
    eval_dataset: Optional[str] = "embedded"  # "embedded" = the embedded corpus' validation split; null = none
    eval_split: str = "validation"  # used for Hub datasets
    tokenizer: str = "embedded"  # "embedded", a SentencePiece .model, or a Hugging Face tokenizer dir/name
    tokenizer_vocab_size: int = 4096  # for the embedded tokenizer only
    cache_dir: str = ".cache"
    num_workers: int = 0
    corpus_code_mb: float = 4.0
    corpus_prose_mb: float = 1.5
    corpus_math_mb: float = 1.5

    def validate(self) -> None:
        """Raise ValueError naming the first bad `data.*` key."""
        for key in ("dataset", "split", "text_field", "eval_split", "tokenizer", "cache_dir"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"data.{key}={value!r} must be a non-empty string")
        for key in ("dataset_config", "eval_dataset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"data.{key}={value!r} must be a non-empty string or null")
        if not isinstance(self.tokenizer_vocab_size, int) or self.tokenizer_vocab_size < MIN_EMBEDDED_VOCAB:
            raise ValueError(
                f"data.tokenizer_vocab_size={self.tokenizer_vocab_size!r} must be an integer >= {MIN_EMBEDDED_VOCAB} "
                "(256 byte-fallback ids, the special tokens and the corpus' characters must fit)"
            )
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers!r} must be an integer >= 0")
        sizes = {key: getattr(self, key) for key in ("corpus_code_mb", "corpus_prose_mb", "corpus_math_mb")}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"data.{key}={value!r} must be a number >= 0 (megabytes of text)")
        if sum(sizes.values()) <= 0:
            raise ValueError(
                "data.corpus_code_mb, data.corpus_prose_mb and data.corpus_math_mb are all 0: "
                "the embedded corpus needs at least one part with a positive size"
            )
