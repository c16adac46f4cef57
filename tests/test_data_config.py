"""DataConfig defaults are valid and every bad field is named in the error."""
import dataclasses

import pytest

from data import DataConfig


def test_defaults_validate():
    DataConfig().validate()
    DataConfig(eval_dataset=None, dataset_config="en", num_workers=2, corpus_math_mb=0).validate()


@pytest.mark.parametrize("field, value", [
    ("dataset", ""), ("dataset", None), ("split", " "), ("text_field", 3), ("eval_split", ""),
    ("tokenizer", ""), ("cache_dir", ""), ("dataset_config", ""), ("eval_dataset", 5),
    ("tokenizer_vocab_size", 100), ("tokenizer_vocab_size", 4096.0), ("num_workers", -1),
    ("num_workers", 1.5), ("corpus_code_mb", -1.0), ("corpus_prose_mb", "1"), ("corpus_math_mb", True),
    ("corpus_math_mb", float("nan")),
])
def test_bad_field_is_named(field, value):
    cfg = dataclasses.replace(DataConfig(), **{field: value})
    with pytest.raises(ValueError, match=rf"data\.{field}="):
        cfg.validate()


def test_all_corpus_parts_zero():
    with pytest.raises(ValueError, match="corpus_code_mb"):
        DataConfig(corpus_code_mb=0, corpus_prose_mb=0, corpus_math_mb=0).validate()
