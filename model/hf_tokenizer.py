"""Write a checkpoint's tokenizer as Hugging Face tokenizer files: SentencePiece models are converted, Hugging
Face tokenizers copied as they are."""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

SPM_FILE = "tokenizer.model"
# Written by from_pretrained into the config it saves; they describe where it was loaded from, not the tokenizer.
_LOAD_KEYS = ("is_local", "local_files_only")


class TokenizerExportError(ValueError):
    """The tokenizer cannot be exported; the message says why and what to do."""


def export_tokenizer(src: Path, out: Path) -> dict:
    """Write the tokenizer in directory `src` (a checkpoint's tokenizer/) into `out`; return its special token ids
    {"bos_token_id", "eos_token_id", "pad_token_id"} (None where it has none; pad falls back to EOS)."""
    if (src / SPM_FILE).is_file() and not (src / "tokenizer.json").is_file():
        return _convert_sentencepiece(src / SPM_FILE, out)
    for path in sorted(src.iterdir()):
        if path.is_file():
            shutil.copyfile(path, out / path.name)
    from transformers import AutoTokenizer

    return _special_ids(AutoTokenizer.from_pretrained(str(out)))


def _special_ids(tok) -> dict:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad}


def _convert_sentencepiece(model_file: Path, out: Path) -> dict:
    """A tokenizers-backed transformers tokenizer with the SentencePiece model's ids on any text: spellings of special
    pieces ("<s>") are text, as SentencePiece reads them; pad = EOS; padding on the left, as decoder-only generation
    needs.

    `LlamaTokenizer(vocab_file=...)` ignores the file in transformers 5; `TokenizersBackend.from_pretrained` reads
    the .model through sentencepiece's protobuf classes, which need a protobuf at least as new as they were built with.
    """
    try:  # what transformers reads the .model with; fails here, not in a confusing fallback, if protobuf is too old
        importlib.import_module("sentencepiece.sentencepiece_model_pb2")
    except Exception as err:  # protobuf raises its own VersionError; a missing module raises ImportError
        raise TokenizerExportError(f"cannot read SentencePiece model protos ({err}); install a newer protobuf: "
                                   "pip install 'protobuf>=7.36'") from None
    from transformers import TokenizersBackend

    tok = TokenizersBackend.from_pretrained(str(model_file.parent), padding_side="left",
                                            split_special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(str(out))
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    for key in _LOAD_KEYS:
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return _special_ids(tok)
