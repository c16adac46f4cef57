"""One small tokenizer interface over SentencePiece models and Hugging Face tokenizers."""
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import sentencepiece as spm

from data.config import DataConfig
from data.errors import DataError

SPM_FILE = "tokenizer.model"
_HF_FILES = ("tokenizer.json", "tokenizer_config.json")


class Tokenizer(ABC):
    """What the data pipeline needs: ids without added specials, a unique EOS id, and pickling (for
    DataLoader workers)."""

    name: str
    vocab_size: int
    eos_id: int
    bos_id: Optional[int]

    @abstractmethod
    def encode(self, text: str) -> list:
        """Token ids of `text`, with no BOS/EOS added."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Text of a sequence of ids."""

    @abstractmethod
    def save(self, directory) -> str:
        """Write files `load_tokenizer` can reload from `directory`; return the path to pass it."""


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; pickles as its serialized proto, so workers rebuild it cheaply.

    With the embedded model's settings (identity normalisation, byte fallback) `decode(encode(s)) == s`
    except for text containing U+2581, SentencePiece's own space marker.
    """

    def __init__(self, model_proto: bytes, name: str):
        self._proto = model_proto
        self.name = name
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        if self._sp.eos_id() < 0:
            raise DataError(f"SentencePiece model {name} has no EOS piece; documents need one between them")
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None

    @classmethod
    def from_file(cls, path) -> "SentencePieceTokenizer":
        return cls(Path(path).read_bytes(), name=str(path))

    def encode(self, text: str) -> list:
        return self._sp.encode(text)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save(self, directory) -> str:
        path = Path(directory) / SPM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SPM_FILE}.tmp-{os.getpid()}")
        tmp.write_bytes(self._proto)
        os.replace(tmp, path)
        return str(path)

    def __getstate__(self):
        return {"proto": self._proto, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["proto"], state["name"])


class HFTokenizer(Tokenizer):
    """A `transformers` tokenizer; encode adds no special tokens, and EOS must exist."""

    def __init__(self, tokenizer, name: str):
        if tokenizer.eos_token_id is None:
            raise DataError(
                f"tokenizer {name!r} has no EOS token; documents need one between them "
                "(set eos_token in its tokenizer_config.json)"
            )
        self._tok = tokenizer
        self.name = name
        self.vocab_size = len(tokenizer)  # includes added tokens, unlike tokenizer.vocab_size
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id

    def encode(self, text: str) -> list:
        # verbose=False: documents longer than model_max_length are expected here, packing splits them.
        return self._tok.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, directory) -> str:
        self._tok.save_pretrained(str(directory))
        return str(directory)


PROBE_TEXT = "def f(x):\n    return x ** 2  # Grüße, 3.14159 + 271828 = ?\n\tThe quick brown fox."


def tokenizer_fingerprint(tokenizer: Tokenizer) -> dict:
    """What tells tokenizers apart: name, vocabulary size, EOS and the ids of a probe text (code, digits,
    non-ASCII, tabs), so the same model saved at another path still matches."""
    return {"tokenizer": tokenizer.name, "vocab_size": int(tokenizer.vocab_size), "eos_id": int(tokenizer.eos_id),
            "tokenizer_probe": [int(i) for i in tokenizer.encode(PROBE_TEXT)]}


def load_tokenizer(cfg: DataConfig) -> Tokenizer:
    """"embedded" (trained on first use, cached), a SentencePiece .model file, a directory holding
    either kind, or a Hugging Face Hub tokenizer name."""
    spec = cfg.tokenizer
    if spec == "embedded":
        from data.embedded_tokenizer import embedded_tokenizer_path

        path = embedded_tokenizer_path(cfg)
        return SentencePieceTokenizer(path.read_bytes(), name=f"embedded:{path.parent.name}")
    path = Path(spec).expanduser()
    if spec.endswith(".model"):
        if not path.is_file():
            raise DataError(f"data.tokenizer={spec!r}: no such SentencePiece model file")
        return SentencePieceTokenizer.from_file(path)
    if path.is_dir() and not any((path / f).is_file() for f in _HF_FILES):
        if (path / SPM_FILE).is_file():
            return SentencePieceTokenizer.from_file(path / SPM_FILE)
        raise DataError(
            f"data.tokenizer={spec!r} is a directory without {SPM_FILE}, tokenizer.json or tokenizer_config.json"
        )
    return _load_hf(spec, is_local=path.is_dir())


def _load_hf(spec: str, is_local: bool) -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        if is_local:
            raise DataError(f"data.tokenizer={spec!r}: could not load the tokenizer in this directory: {err}") from err
        raise DataError(
            f"data.tokenizer={spec!r} is not a local path and could not be loaded from the Hugging Face Hub "
            f"(offline, or no such tokenizer): {err}. Pass a local directory (e.g. one written by "
            "save_pretrained) or a SentencePiece .model file instead."
        ) from err
    return HFTokenizer(tok, name=spec)
