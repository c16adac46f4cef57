"""One reader's tokenized documents of a text source, streamed with `datasets` and tokenized on the fly."""
from typing import Optional

import numpy as np
from pyarrow import ArrowException

from data.errors import DataError

# Documents longer than this many characters are tokenized in pieces that end at a line break (or a space), so
# a single huge document (a 100 MB log, a dump) never builds one giant token list. Tokenizers that always split
# at line breaks (the embedded one: "\n" is its own piece) give identical ids; others may differ only at the
# few piece boundaries of such documents.
PIECE_CHARS = 1 << 20


def encode_document(tokenizer, text: str) -> np.ndarray:
    """A document's token ids as int32, tokenized in pieces of at most PIECE_CHARS characters."""
    if len(text) <= PIECE_CHARS:
        return np.asarray(tokenizer.encode(text), dtype=np.int32)
    pieces, start = [], 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):  # end after the window's last line break, else its last space, else cut it there
            cut = text.rfind("\n", start, end)
            if cut < 0:
                cut = text.rfind(" ", start, end)
            if cut >= 0:
                end = cut + 1
        pieces.append(np.asarray(tokenizer.encode(text[start:end]), dtype=np.int32))
        start = end
    return np.concatenate(pieces)


class TextDocuments:
    """Documents of reader `node` of `num_nodes` as int32 ids followed by EOS, epoch after epoch (or one
    epoch if `single_epoch`). The state is the epoch and `datasets`' own state after the last document."""

    def __init__(self, source, tokenizer, seed: int, node: int, num_nodes: int, single_epoch: bool = False):
        self._source, self._tokenizer, self._seed = source, tokenizer, seed
        self._node, self._num_nodes, self._single_epoch = node, num_nodes, single_epoch
        self.epoch = 0
        self._position = None  # `datasets` state after the last document; None = the epoch's start
        self._ds = self._docs = None
        self._done = False  # a single-epoch reader past its end

    def state_dict(self) -> dict:
        position = self._ds.state_dict() if self._docs is not None else self._position
        return {"epoch": self.epoch, "position": position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._position = state["epoch"], state["position"]
        self._ds = self._docs = None
        self._done = False

    def next(self) -> Optional[np.ndarray]:
        """The next document's ids and EOS; None only when a single-epoch reader has run out."""
        while not self._done:
            if self._docs is None:
                self._from_start, self._found = self._position is None, 0
                self._docs = self._epoch_documents()
            ids = next(self._docs, None)
            if ids is None:
                if self._from_start and self._found == 0:
                    raise DataError(self._empty_message())
                self._ds = self._docs = self._position = None
                if self._single_epoch:
                    self._done = True
                    break
                self.epoch += 1
                continue
            if len(ids):  # an empty document adds nothing, not even EOS
                self._found += 1
                return np.append(np.asarray(ids, dtype=np.int32), np.int32(self._tokenizer.eos_id))
        return None

    def _epoch_documents(self):
        """Yield the token ids of each record of the rest of the epoch ([] for records that are not documents);
        while suspended after a record, `self._ds.state_dict()` is the state just after it."""
        self._ds = ds = self._source.open(self.epoch, self._seed, self._node, self._num_nodes)
        if self._position is not None:
            ds.load_state_dict(self._position)
        field, keep = self._source.text_field, self._source.keep
        try:
            for batch in ds.iter(batch_size=1):  # .iter: no automatic re-split inside DataLoader workers
                if field not in batch:
                    raise DataError(
                        f"{self._source.label}: no column {field!r} (columns: {sorted(batch)}); "
                        "set data.text_field (or the mixture entry's text_field) to the column holding the text"
                    )
                text = batch[field][0]
                if text is not None and not isinstance(text, str):
                    raise DataError(f"{self._source.label}: column {field!r} holds {type(text).__name__}, not text")
                if keep is not None and batch.get(keep[0], [None])[0] != keep[1]:
                    text = None
                yield encode_document(self._tokenizer, text) if text else []
        except UnicodeDecodeError as err:
            raise self._source.utf8_error(err) from err
        except DataError:
            raise
        except (ValueError, OSError, ArrowException) as err:  # a malformed JSON line or a corrupt parquet file
            raise self._source.read_error(err) from err

    def _empty_message(self) -> str:
        what = "non-empty documents" + (f" with {self._source.keep[0]}={self._source.keep[1]!r}"
                                        if self._source.keep else f" in column {self._source.text_field!r}")
        if self._num_nodes == 1:
            return f"{self._source.label}: the dataset has no {what}"
        return (f"{self._source.label}: reader {self._node} of {self._num_nodes} (ranks x workers) got no "
                f"{what}; the dataset is empty or has fewer documents than readers")
