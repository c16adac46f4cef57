"""A seeded document-level shuffle buffer whose contents are saved, so a resume loses and repeats nothing."""
import numpy as np
import torch

_BUFFER_STREAM = 2  # separates this RNG's seed from the mixture's


class ShuffleBuffer:
    """Holds `size` documents; each request releases a uniformly drawn one and puts the next upstream
    document in its slot (as `datasets`' buffer does, but the buffer is part of the state)."""

    def __init__(self, size: int, seed: int, rank: int):
        self.size = size
        self._docs = []  # (int32 ids with EOS, source index)
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank, _BUFFER_STREAM])))

    def next(self, pull) -> tuple:
        """The next (document, source) in shuffled order; `pull()` gives the next upstream one."""
        while len(self._docs) < self.size:
            self._docs.append(pull())
        i = int(self._rng.integers(self.size))
        out, self._docs[i] = self._docs[i], pull()
        return out

    def state_dict(self) -> dict:
        """The held documents as one int32 tensor plus lengths and sources, and the RNG state."""
        lengths = [len(doc) for doc, _ in self._docs]
        tokens = np.concatenate([doc for doc, _ in self._docs]) if self._docs else np.empty(0, np.int32)
        return {"tokens": torch.from_numpy(tokens), "lengths": torch.tensor(lengths, dtype=torch.int64),
                "sources": torch.tensor([k for _, k in self._docs], dtype=torch.int64),
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        ends = np.cumsum(state["lengths"].numpy())
        docs = np.split(state["tokens"].numpy(), ends[:-1]) if len(ends) else []
        self._docs = list(zip(docs, state["sources"].tolist()))
        self._rng.bit_generator.state = state["rng"]
