"""Tokenizers: the embedded SentencePiece BPE (round trip, caching, determinism), .model files, and Hugging
Face tokenizers from a local directory."""
import dataclasses
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data import DataConfig, build_embedded_corpus, load_tokenizer
from data import embedded_tokenizer
from data.errors import DataError
from data.tokenizer import HFTokenizer, SentencePieceTokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = dict(corpus_code_mb=0.1, corpus_prose_mb=0.1, corpus_math_mb=0.1, tokenizer_vocab_size=1024)
SAMPLES = [
    "def f(x):\n\tif x  >  1:\n        return x ** 2  # square\n\n\n",
    "  leading and trailing spaces  ",
    "Unicode: héllo wörld, Ελληνικά, 日本語, emoji 😀🚀, combining e\u0301",
    "control \x00\x01\x7f bytes, CRLF\r\nline",
    "digits 1234567890 and 3.14159e-10",
    "</s> <s> <unk> look like specials but are text",
    "".join(chr(c) for c in range(32, 127)),
]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    return DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), **TINY)


@pytest.fixture(scope="module")
def spm_tok(tiny_cfg):
    start = time.perf_counter()
    tok = load_tokenizer(tiny_cfg)
    print(f"tiny embedded tokenizer trained in {time.perf_counter() - start:.2f} s (corpus included)")
    return tok


def _corpus_texts(cfg, split):
    paths = build_embedded_corpus(cfg.cache_dir, cfg.corpus_code_mb, cfg.corpus_prose_mb, cfg.corpus_math_mb)
    return [json.loads(line)["text"] for path in paths[split] for line in open(path, encoding="utf-8")]


def test_round_trip_and_no_specials(spm_tok, tiny_cfg):
    assert isinstance(spm_tok, SentencePieceTokenizer) and spm_tok.vocab_size == 1024
    specials = {spm_tok.eos_id, spm_tok.bos_id, 0}  # 0 = unk: byte fallback must make it unreachable
    assert len(specials) == 3
    assert spm_tok.encode("") == []
    for text in SAMPLES + _corpus_texts(tiny_cfg, "validation"):
        ids = spm_tok.encode(text)
        assert spm_tok.decode(ids) == text
        assert all(0 <= i < spm_tok.vocab_size for i in ids) and not specials.intersection(ids)


def test_compresses_the_corpus(spm_tok, tiny_cfg):
    # BPE must actually merge: well under one token per byte on held-out text (bytes alone would give 1.0).
    texts = _corpus_texts(tiny_cfg, "validation")
    tokens = sum(len(spm_tok.encode(t)) for t in texts)
    assert tokens / sum(len(t.encode()) for t in texts) < 0.6


def test_cached_and_not_retrained(spm_tok, tiny_cfg, monkeypatch):
    monkeypatch.setattr(embedded_tokenizer, "_train", lambda *a: pytest.fail("retrained a cached tokenizer"))
    again = load_tokenizer(tiny_cfg)
    assert again.name == spm_tok.name and again.encode(SAMPLES[0]) == spm_tok.encode(SAMPLES[0])


def test_other_vocab_size_is_another_cache_entry(spm_tok, tiny_cfg):
    other = load_tokenizer(dataclasses.replace(tiny_cfg, tokenizer_vocab_size=768))
    assert other.vocab_size == 768 and other.name != spm_tok.name


def test_training_is_deterministic_across_processes(spm_tok, tiny_cfg, tmp_path, monkeypatch):
    # Force line sampling (the corpus has more lines than this) so the fixed-seed sample is exercised too.
    code = (
        "import sys; from data import DataConfig, load_tokenizer; from data import embedded_tokenizer as e\n"
        "e.MAX_SENTENCES = 2000\n"
        f"t = load_tokenizer(DataConfig(cache_dir=sys.argv[1], **{TINY!r}))\n"
        "sys.stdout.buffer.write(t._proto)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path / f"c{i}")], cwd=REPO, check=True,
                           capture_output=True).stdout for i in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 1000
    monkeypatch.setattr(embedded_tokenizer, "MAX_SENTENCES", 2000)
    in_process = embedded_tokenizer._train(
        build_embedded_corpus(tmp_path / "c0", 0.1, 0.1, 0.1)["train"], TINY["tokenizer_vocab_size"])
    assert in_process == runs[0]


def test_pickle_save_and_reload(spm_tok, tmp_path):
    clone = pickle.loads(pickle.dumps(spm_tok))
    for reloaded in (clone, load_tokenizer(DataConfig(tokenizer=spm_tok.save(tmp_path / "a"))),
                     load_tokenizer(DataConfig(tokenizer=str(tmp_path / "a")))):
        assert reloaded.vocab_size == spm_tok.vocab_size and reloaded.eos_id == spm_tok.eos_id
        assert [reloaded.encode(t) for t in SAMPLES] == [spm_tok.encode(t) for t in SAMPLES]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small byte-level BPE built with `tokenizers`, saved as transformers does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(SAMPLES * 20, trainer)
    path = tmp_path_factory.mktemp("hf")
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>").save_pretrained(str(path))
    return path, raw


def test_hf_tokenizer_from_local_directory(hf_dir, tmp_path):
    path, raw = hf_dir
    tok = load_tokenizer(DataConfig(tokenizer=str(path)))
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_id == raw.token_to_id("<|endoftext|>") and tok.vocab_size == raw.get_vocab_size()
    long_text = SAMPLES[0] * 2000  # beyond any model_max_length: must not be truncated
    for text in SAMPLES + [long_text]:
        assert tok.encode(text) == raw.encode(text).ids  # no specials added
        assert tok.decode(tok.encode(text)) == text
    for clone in (pickle.loads(pickle.dumps(tok)), load_tokenizer(DataConfig(tokenizer=tok.save(tmp_path / "s")))):
        assert [clone.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]


def test_hf_tokenizer_without_eos(hf_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=hf_dir[1]).save_pretrained(str(tmp_path))
    with pytest.raises(DataError, match="no EOS token"):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path)))


def test_unreachable_hub_name():
    with pytest.raises(DataError, match="Pass a local directory"):
        load_tokenizer(DataConfig(tokenizer="no-such-org/no-such-tokenizer"))


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="no such SentencePiece model file"):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path / "missing.model")))
    with pytest.raises(DataError, match="directory without tokenizer.model"):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path)))


def test_default_embedded_tokenizer_trains_in_seconds(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path))
    build_embedded_corpus(cfg.cache_dir, cfg.corpus_code_mb, cfg.corpus_prose_mb, cfg.corpus_math_mb)
    start = time.perf_counter()
    tok = load_tokenizer(cfg)
    seconds = time.perf_counter() - start
    text = "\n".join(_corpus_texts(cfg, "validation"))
    print(f"default embedded tokenizer: trained in {seconds:.2f} s; "
          f"{len(text.encode()) / len(tok.encode(text)):.2f} bytes/token on validation")
    assert tok.vocab_size == cfg.tokenizer_vocab_size and tok.decode(tok.encode(text)) == text
