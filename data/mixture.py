"""One reader's documents drawn from several sources by weight, deterministically for a seed."""
from typing import Optional

import numpy as np

_MIXTURE_STREAM = 1  # separates this RNG's seed from the shuffle buffer's


class MixedDocuments:
    """Reader `node`'s documents from `readers` (one per source), each document's source drawn by an RNG
    seeded with (seed, node). Weights are shares of tokens: source k is drawn with probability proportional
    to weight_k / (mean length of the k-documents this reader has taken so far), so sources of long
    documents are not over-represented. RNG state and counts are part of this reader's state. Single-epoch
    readers drop a source when it runs out and stop when all have."""

    def __init__(self, readers: list, weights: list, seed: int, node: int):
        self._readers = readers
        self._weights = np.asarray(weights, dtype=np.float64)
        self._active = [True] * len(readers)
        self._docs, self._tokens = [0] * len(readers), [0] * len(readers)
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, node, _MIXTURE_STREAM])))

    @property
    def epochs(self) -> list:
        return [reader.epoch for reader in self._readers]

    def state_dict(self) -> dict:
        return {"sources": [r.state_dict() for r in self._readers], "rng": self._rng.bit_generator.state,
                "active": list(self._active), "docs": list(self._docs), "tokens": list(self._tokens)}

    def load_state_dict(self, state: dict) -> None:
        for reader, saved in zip(self._readers, state["sources"]):
            reader.load_state_dict(saved)
        self._rng.bit_generator.state = state["rng"]
        self._active, self._docs, self._tokens = list(state["active"]), list(state["docs"]), list(state["tokens"])

    def next(self) -> Optional[tuple]:
        """(document ids with EOS, source index), or None once every single-epoch source has run out."""
        while any(self._active):
            k = self._pick()
            doc = self._readers[k].next()
            if doc is not None:
                self._docs[k] += 1
                self._tokens[k] += len(doc)
                return doc, k
            self._active[k] = False
        return None

    def _pick(self) -> int:
        if len(self._readers) == 1:
            return 0  # no draw: a single dataset's stream does not depend on the seed
        docs, tokens = np.asarray(self._docs, np.float64), np.asarray(self._tokens, np.float64)
        # A source not yet read is assumed to have the mean length of those that were (or 1 at the start).
        overall = tokens.sum() / docs.sum() if docs.sum() else 1.0
        lengths = np.where(docs > 0, tokens / np.maximum(docs, 1), overall)
        cumulative = np.cumsum(self._weights / lengths * self._active)
        return int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
