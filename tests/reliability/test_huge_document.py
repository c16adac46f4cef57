"""A single 100 MB document streams: it is tokenized in pieces of at most 1 MB of text (bounded memory per
call), and the ids are those of the whole document."""
import numpy as np

from data import DataConfig, PackedBatches
from data.documents import PIECE_CHARS
from data.tokenizer import Tokenizer


class SpyBytes(Tokenizer):
    """UTF-8 bytes as ids (EOS = 256); records the length of every text it is asked to encode."""
    name, vocab_size, eos_id, bos_id = "bytes", 257, 256, None

    def __init__(self):
        self.calls = []

    def encode(self, text):
        self.calls.append(len(text))
        return np.frombuffer(text.encode(), dtype=np.uint8)

    def decode(self, ids):
        raise NotImplementedError

    def save(self, directory):
        raise NotImplementedError


def test_a_100_mb_document_is_tokenized_in_pieces(tmp_path):
    rng = np.random.default_rng(0)
    words = rng.choice(np.array(list("abcdefgh ")), size=100 * 2**20 - 2**20 // 3)  # one long line, spaces in it
    text = "".join(words.tolist()) + "\n" + "tail line\n"
    (tmp_path / "huge.txt").write_text(text)
    tokenizer = SpyBytes()
    cfg = DataConfig(dataset=str(tmp_path / "huge.txt"), eval_dataset=None)
    batches = PackedBatches(cfg, tokenizer, seq_len=4095, batch_size=4)
    first = [next(batches) for _ in range(3)]
    assert max(tokenizer.calls) <= PIECE_CHARS and len(tokenizer.calls) >= len(text) // PIECE_CHARS
    got = np.concatenate([b.flatten().numpy() for b in first])
    expected = np.frombuffer(text[:len(got)].encode(), dtype=np.uint8)
    assert np.array_equal(got, expected)
