"""Configuration of the pretraining data: where documents come from and how they are tokenized."""
import math
from dataclasses import dataclass
from typing import Optional

# Byte fallback takes 256 ids, the specials 4 more, and the corpus' distinct characters need room too.
MIN_EMBEDDED_VOCAB = 512
EMBEDDED_PARTS = ("code", "prose", "math")  # "embedded:code" etc. select one part of the embedded corpus


def _check_embedded_part(key: str, spec) -> None:
    if isinstance(spec, str) and spec.startswith("embedded:") and spec[len("embedded:"):] not in EMBEDDED_PARTS:
        raise ValueError(f"{key}={spec!r} names no part of the embedded corpus; choose one of "
                         f"{', '.join('embedded:' + p for p in EMBEDDED_PARTS)} or 'embedded' for all")


@dataclass
class MixtureSource:
    """One training dataset of a weighted mixture; `dataset` takes the same forms as `data.dataset`
    (plus "embedded:code", "embedded:prose", "embedded:math"). Each document is drawn from this source
    with probability weight / sum of weights."""

    name: str = ""  # names the source in logs (tokens per source) and in checkpoints
    dataset: str = ""
    weight: float = 1.0
    text_field: str = "text"
    dataset_config: Optional[str] = None
    split: str = "train"  # used for Hub datasets

    def validate(self, key: str = "data.mixture[?]") -> None:
        """Raise ValueError naming the first bad `key.*` field (DataConfig passes e.g. "data.mixture[1]")."""
        for field in ("name", "dataset", "text_field", "split"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{key}.{field}={value!r} must be a non-empty string")
        if self.dataset_config is not None and (not isinstance(self.dataset_config, str)
                                                or not self.dataset_config.strip()):
            raise ValueError(f"{key}.dataset_config={self.dataset_config!r} must be a non-empty string or null")
        _check_embedded_part(f"{key}.dataset", self.dataset)
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
            raise ValueError(f"{key}.weight={weight!r} must be a finite number > 0 (a source's share of the "
                             "documents is its weight over the sum of weights)")


@dataclass
class DataConfig:
    """Data settings; `dataset`/`eval_dataset` are "embedded", local files (file, directory or glob of
    .json/.jsonl/.parquet/.txt), a directory written by `python -m data.pretokenize`, or a Hugging Face
    Hub dataset name (streamed). `mixture`, when set, replaces `dataset` for training."""

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
    shuffle_buffer: int = 0  # documents in each rank's seeded shuffle buffer (0: off)
    mixture: Optional[list[MixtureSource]] = None  # weighted training datasets instead of `dataset`
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
        _check_embedded_part("data.dataset", self.dataset)
        _check_embedded_part("data.eval_dataset", self.eval_dataset)
        if not isinstance(self.tokenizer_vocab_size, int) or self.tokenizer_vocab_size < MIN_EMBEDDED_VOCAB:
            raise ValueError(
                f"data.tokenizer_vocab_size={self.tokenizer_vocab_size!r} must be an integer >= {MIN_EMBEDDED_VOCAB} "
                "(256 byte-fallback ids, the special tokens and the corpus' characters must fit)"
            )
        for key in ("num_workers", "shuffle_buffer"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"data.{key}={value!r} must be an integer >= 0")
        sizes = {key: getattr(self, key) for key in ("corpus_code_mb", "corpus_prose_mb", "corpus_math_mb")}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"data.{key}={value!r} must be a number >= 0 (megabytes of text)")
        if sum(sizes.values()) <= 0:
            raise ValueError(
                "data.corpus_code_mb, data.corpus_prose_mb and data.corpus_math_mb are all 0: "
                "the embedded corpus needs at least one part with a positive size"
            )
        if self.mixture is not None:
            self._validate_mixture()

    def _validate_mixture(self) -> None:
        if not isinstance(self.mixture, (list, tuple)) or not self.mixture:
            raise ValueError(f"data.mixture={self.mixture!r} must be a non-empty list of sources "
                             "(name, dataset, weight), or null to train on data.dataset")
        names = set()
        for i, source in enumerate(self.mixture):
            if not isinstance(source, MixtureSource):
                raise ValueError(f"data.mixture[{i}]={source!r} must be a MixtureSource "
                                 "(a mapping with name, dataset, weight)")
            source.validate(f"data.mixture[{i}]")
            if source.name in names:
                raise ValueError(f"data.mixture[{i}].name={source.name!r} is used twice; source names must be unique")
            names.add(source.name)
        defaults = DataConfig.__dataclass_fields__
        for key in ("dataset", "split"):
            if getattr(self, key) != defaults[key].default:
                raise ValueError(
                    f"data.{key}={getattr(self, key)!r} and data.mixture are both set, but the mixture replaces "
                    f"data.dataset and data.split for training; leave data.{key} at its default "
                    f"({defaults[key].default!r}) or set data.mixture=null"
                )
