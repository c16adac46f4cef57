"""Bad input never surfaces as a raw exception: config overrides and data files found by hypothesis, plus the
cases that once escaped (malformed JSON lines)."""
import json
import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import DataConfig, PackedBatches
from data.errors import DataError
from trainer.config import ConfigError, load_config, valid_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_helpers import BYTES  # noqa: E402

KEYS = valid_keys()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["a", "name"]), scalars,
                                                                           max_size=2))
keys = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_lowercase + "._[]0", min_size=1, max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_override_loads_or_says_what_is_wrong(pairs):
    overrides = [f"{key}={json.dumps(value)}" for key, value in pairs]
    try:
        load_config("configs/default.yaml", overrides)
    except ConfigError as err:
        assert str(err)  # a message, not an empty exception


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)), min_size=1, max_size=6))
def test_any_jsonl_file_streams_or_says_what_is_wrong(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        batches = PackedBatches(DataConfig(dataset=str(path), eval_dataset=None), BYTES, seq_len=3, batch_size=1)
        next(batches)
    except DataError as err:
        assert str(path) in str(err) or "data.dataset" in str(err)


def test_a_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:3: Expecting value.*fix or remove the malformed record"):
        next(PackedBatches(DataConfig(dataset=str(path), eval_dataset=None), BYTES, seq_len=64, batch_size=1))
